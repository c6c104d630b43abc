"""The shipped window-agnostic models: present, small, calibrated-looking, used by `infer`
with no checkpoint, and read narrow lines on a window zoomed around them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dysonian_pl import infer
from dysonian_pl.infer import ZOOM_BELOW, ZOOM_TARGET, zoom_window
from dysonian_pl.lineshapes import dysonian

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_spectra"


@pytest.mark.parametrize("geometry", ["plate", "sphere"])
def test_shipped_model_is_present_small_and_window_agnostic(geometry: str) -> None:
    path = infer.default_checkpoint(geometry)
    assert path is not None and path.endswith(f"universal-{geometry}.ckpt")
    assert Path(path).stat().st_size < 2_000_000  # weights only: no optimizer state
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert "optimizer_states" not in ckpt and "callbacks" not in ckpt
    model = infer.load_model(path)
    assert model.sim.relative_window and model.sim.geometry == geometry and model.uncertainty
    # calibration factors were fitted on validation spectra (not the initial ones)
    assert not torch.allclose(model.sigma_scale, torch.ones(3, dtype=torch.float64))


def test_zoom_window_rules() -> None:
    sweep = (3000.0, 3200.0)
    # a 2 G line in a 200 G sweep: the next window is 20 G wide, centred on B0
    assert zoom_window(3100.0, 2.0, sweep, sweep) == pytest.approx((3090.0, 3110.0))
    # near an edge the window slides inside the sweep instead of leaving it
    assert zoom_window(3001.0, 2.0, sweep, sweep) == pytest.approx((3000.0, 3020.0))
    # not narrow enough, unusable predictions, or no real gain: no zoom
    assert zoom_window(3100.0, ZOOM_BELOW * 200.0, sweep, sweep) is None
    assert zoom_window(3100.0, float("nan"), sweep, sweep) is None
    assert zoom_window(3300.0, 2.0, sweep, sweep) is None
    assert zoom_window(3100.0, 2.0, sweep, (3090.0, 3120.0)) is None  # 20 G is not 1.5x less
    assert ZOOM_BELOW < ZOOM_TARGET


def _write_text_spectrum(path: Path, field: np.ndarray, signal: np.ndarray) -> Path:
    rows = "\n".join(f"{b:.4f},{s:.8e}" for b, s in zip(field, signal, strict=True))
    path.write_text("Field [G],Intensity\n" + rows + "\n")
    return path


def test_infer_without_checkpoint_zooms_on_a_narrow_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    field = np.linspace(3300.0, 3500.0, 2048)
    truth = (3412.3, 1.2, 0.6)  # dB = 0.6 % of the sweep: narrower than trained (1-50 %)
    line = dysonian(field, *truth, "plate")
    line = line / np.ptp(line) + rng.normal(0.0, 1e-3, field.size)
    f = _write_text_spectrum(tmp_path / "narrow.csv", field, 250.0 * line + 3.0)
    rows = infer.infer_files([f], infer.default_checkpoint(), tmp_path / "out", plots=False)
    (row,) = rows
    assert row["status"] == "ok", row
    assert row["zoom"] >= 4.0 and row["window_hi"] - row["window_lo"] <= 50.0
    assert abs(row["B0"] - truth[0]) < 0.1  # G
    assert abs(row["dB"] - truth[1]) < 0.1  # G
    assert abs(row["p"] - truth[2]) < 0.25
    assert all(np.isfinite(row[k]) and row[k] > 0 for k in ("B0_sigma", "dB_sigma", "p_sigma"))
    assert row["rms_residual"] < 0.05 and "rms residual" not in row["warnings"]


def test_infer_says_when_a_spectrum_is_not_one_line(tmp_path: Path) -> None:
    field = np.linspace(3300.0, 3500.0, 2048)
    three = sum(dysonian(field, b, 4.0, 0.3, "plate") for b in (3350.0, 3400.0, 3450.0))
    f = _write_text_spectrum(tmp_path / "triplet.csv", field, three)
    (row,) = infer.infer_files([f], infer.default_checkpoint(), tmp_path / "out", plots=False)
    assert row["status"] == "ok"
    assert row["rms_residual"] > infer.RMS_WARN
    assert "not one line of this model's kind" in row["warnings"]


@pytest.mark.skipif(not REAL.is_dir(), reason="shared/data/real_spectra not beside the repo")
def test_infer_with_no_checkpoint_on_every_real_file(tmp_path: Path, capsys) -> None:
    files = sorted(
        p
        for p in REAL.rglob("*")
        if p.suffix.lower() in {".dsc", ".par"} and "provenance" not in p.name.lower()
    )
    assert len(files) >= 10
    rc = infer.main([*map(str, files), "--out", str(tmp_path), "--no-plots"])
    assert rc == 0
    doc = json.loads((tmp_path / "predictions.json").read_text())
    rows = doc["rows"]
    assert len(rows) == len(files) and all(r["status"] == "ok" for r in rows)
    for r in rows:
        for k in ("B0", "dB", "p", "B0_sigma", "dB_sigma", "p_sigma"):
            assert np.isfinite(r[k]), (r["file"], k)
        assert r["sweep_lo"] <= r["B0"] <= r["sweep_hi"], r["file"]
    with open(tmp_path / "predictions.csv", newline="") as fh:
        lines = [ln for ln in fh if not ln.startswith("#")]
    header = next(csv.reader(lines))
    assert {"B0_sigma", "zoom", "window_lo", "window_hi"} <= set(header)
    # the same line recorded by two spectrometer formats gives the same answer
    by = {r["file"]: r for r in rows}
    for a, b in (("strong1.dsc", "strong1esp.par"), ("esp.par", "win.par")):
        for k in ("B0", "dB", "p"):
            assert by[a][k] == pytest.approx(by[b][k], rel=1e-3, abs=1e-3), (a, b, k)


def test_sets_evaluation_zooms_like_infer_and_it_helps_on_narrow_lines() -> None:
    from dysonian_pl.evaluate import evaluate_set
    from dysonian_pl.params import PRESETS

    model = infer.load_model(infer.default_checkpoint())
    cfg = PRESETS["set-4"].replace(dB=(3.0, 6.0))  # 1.5-3 % of the 200 G window
    zoomed = evaluate_set(model, cfg, 200, 7)
    whole = evaluate_set(model, cfg, 200, 7, zoom=False)
    assert zoomed["zoomed_fraction"] == 1.0 and whole["zoomed_fraction"] == 0.0
    assert zoomed["mae"][0] < whole["mae"][0]  # B0
    assert zoomed["mae"][1] < whole["mae"][1]  # dB
