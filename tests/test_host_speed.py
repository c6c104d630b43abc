"""`scripts/host_speed.py`: the host calibration quoted beside wall-clock results."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "host_speed.py"


def _script():
    spec = importlib.util.spec_from_file_location("host_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_host_speed_reports_both_networks_and_their_ratio() -> None:
    out = _script().main(rounds=1, seconds=0.01)
    prior, default = out["prior_samples_per_s"], out["default_samples_per_s"]
    assert prior > 0 and default > 0
    # the default network is tens of times cheaper per sample (7.5 M against 454 M
    # multiply-adds); a loose floor that any host keeps, with one timed step each
    assert default > 5 * prior
    assert out["ratio"] == round(round(default, 1) / round(prior, 1), 1)
    assert out["batch"] == 32 and out["torch_threads"] >= 1
    json.dumps(out)  # one JSON line


def test_host_speed_refuses_arguments() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--fast"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "python scripts/host_speed.py" in done.stderr
