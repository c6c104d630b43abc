"""Checkpoints are self-contained, load with weights_only=True, and predict the same in a new process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_N_POINTS

from dysonian_pl.module import CHECKPOINT_FORMAT, DysonianRegressor
from dysonian_pl.params import SimulationConfig
from dysonian_pl.simulate import simulate

PLAIN = (str, int, float, bool, type(None))


def assert_plain(obj, where: str = "") -> None:
    """Only plain Python containers and scalars (what weights_only=True must accept)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str), (where, k)
            assert_plain(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            assert_plain(v, f"{where}[{i}]")
    else:
        assert isinstance(obj, PLAIN), (where, type(obj))


def test_best_and_last_side_by_side(tiny_run) -> None:
    names = sorted(p.name for p in tiny_run.ckpt_dir.iterdir())
    assert "last.ckpt" in names
    best = [n for n in names if n.startswith("best-")]
    assert len(best) == 1 and best[0].endswith(".ckpt")
    assert tiny_run.best.name == best[0]
    # not a leftover temporary of an atomic write
    assert all(n.endswith(".ckpt") for n in names), names


@pytest.mark.parametrize("which", ["best", "last"])
def test_checkpoint_loads_weights_only_and_is_self_contained(tiny_run, which: str) -> None:
    ckpt = torch.load(getattr(tiny_run, which), map_location="cpu", weights_only=True)
    meta = ckpt["dysonian_pl"]
    assert_plain(meta, "dysonian_pl")
    assert_plain(ckpt["hyper_parameters"], "hyper_parameters")
    assert meta["format"] == CHECKPOINT_FORMAT
    assert meta["field_axis"] == [3256.0, 3455.9, TINY_N_POINTS]
    assert meta["geometry"] == "plate"
    assert meta["target_names"] == ["B0", "dB", "p"]
    assert meta["ranges"] == {"B0": [3300.0, 3400.0], "dB": [3.0, 100.0], "p": [0.2, 2.0]}
    sim = SimulationConfig.from_dict(meta["sim"])
    assert sim == tiny_run.cli.model.sim
    assert ckpt["hyper_parameters"]["width"] == 8
    assert ckpt["epoch"] in (0, 1)
    if which == "last":
        assert ckpt["epoch"] == 1 and ckpt["global_step"] == 8  # 2 epochs of 4 batches


RELOAD = """
import sys
import numpy as np
import torch
torch.set_num_threads(1)
from dysonian_pl.module import DysonianRegressor
ckpt, x_path, out_path = sys.argv[1:]
model = DysonianRegressor.load_from_checkpoint(ckpt, map_location="cpu").eval()
x = torch.from_numpy(np.load(x_path))
with torch.no_grad():
    z = model(x)
np.save(out_path + "-scaled.npy", z.numpy())
np.save(out_path + "-physical.npy", model.predict_physical(x).numpy())
print(model.sim.n_points, model.sim.geometry, ",".join(model.names))
"""


def test_reload_in_a_new_process_predicts_the_same(tiny_run, tmp_path: Path) -> None:
    sim = tiny_run.cli.model.sim
    x, _ = simulate(sim, 1234, np.arange(10))
    np.save(tmp_path / "x.npy", x.numpy())
    proc = subprocess.run(
        [sys.executable, "-c", RELOAD, str(tiny_run.best), str(tmp_path / "x.npy"),
         str(tmp_path / "out")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-3:] == [str(TINY_N_POINTS), "plate", "B0,dB,p"]
    # in process: the fit's model, which after_fit left holding the best weights
    model = tiny_run.cli.model.eval()
    with torch.no_grad():
        z = model(x).numpy()
    phys = model.predict_physical(x).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out-scaled.npy"), z, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        np.load(tmp_path / "out-physical.npy"), phys, rtol=1e-7, atol=1e-6 * 100
    )
    # and a reload here agrees too
    here = DysonianRegressor.load_from_checkpoint(tiny_run.best, map_location="cpu").eval()
    with torch.no_grad():
        np.testing.assert_allclose(here(x).numpy(), z, rtol=0, atol=1e-6)
    assert here.sim == sim
