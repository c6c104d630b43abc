"""Inference on files: checkpoint validation, predictions, reconstruction, outputs, CLI."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_tiny_checkpoint

from dysonian_pl import infer
from dysonian_pl.params import SimulationConfig
from dysonian_pl.predictor import CHECKPOINT_FORMAT, Predictor
from dysonian_pl.preprocess import normalise
from dysonian_pl.simulate import field_axis, simulate

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_spectra"
STRONG1 = REAL / "easyspin-eprfiles" / "strong1.dta"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SVG = "{http://www.w3.org/2000/svg}"


def _real(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real spectra not available ({path})")
    return path


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    sim = SimulationConfig(
        B0=(3320.0, 3480.0), dB=(3.0, 50.0), p=(0.2, 2.0), window=(3300.0, 3500.0), n_points=512
    )
    return train_tiny_checkpoint(sim, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="session")
def rel_model(rel_ckpt) -> Predictor:
    return infer.load_model(rel_ckpt)


@pytest.fixture(scope="session")
def model(ckpt) -> Predictor:
    return infer.load_model(ckpt)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def _no_tmp_left(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".tmp" in p.name]


# --------------------------------------------------------------------------- #
# checkpoints
# --------------------------------------------------------------------------- #
def test_load_model_eval_cpu_and_cached(ckpt, model):
    assert isinstance(model, Predictor)
    assert not model.training
    assert next(model.parameters()).device.type == "cpu"
    assert model.sim.n_points == 512 and model.sim.window == (3300.0, 3500.0)
    assert model.checkpoint_meta["format"] == CHECKPOINT_FORMAT
    assert infer.load_model(ckpt) is model


def test_missing_checkpoint(tmp_path):
    with pytest.raises(infer.CheckpointError, match="not found"):
        infer.load_model(tmp_path / "nope.ckpt")


def test_random_bytes_checkpoint(tmp_path, capsys):
    bad = tmp_path / "random.ckpt"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(infer.CheckpointError, match="not a PyTorch checkpoint file"):
        infer.load_model(bad)
    code = infer.main([str(_real(STRONG1)), "--ckpt", str(bad), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: checkpoint random.ckpt: not a PyTorch")


def test_torch_file_without_section(tmp_path, capsys):
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {}}, other)
    with pytest.raises(infer.CheckpointError, match="not a dysonian_pl checkpoint"):
        infer.load_model(other)
    assert infer.main(["x.dta", "--ckpt", str(other)]) == 2
    assert "not a dysonian_pl checkpoint" in capsys.readouterr().err


def test_newer_format_refused(ckpt, tmp_path):
    d = torch.load(ckpt, map_location="cpu", weights_only=True)
    d["dysonian_pl"]["format"] = CHECKPOINT_FORMAT + 1
    newer = tmp_path / "newer.ckpt"
    torch.save(d, newer)
    with pytest.raises(infer.CheckpointError, match="newer than this dysonian_pl"):
        infer.load_model(newer)


def test_non_plain_objects_need_trust(ckpt, tmp_path):
    d = torch.load(ckpt, map_location="cpu", weights_only=True)
    d["extra"] = argparse.Namespace(note="an arbitrary object")
    odd = tmp_path / "odd.ckpt"
    torch.save(d, odd)
    with pytest.raises(infer.CheckpointError, match="non-plain Python objects"):
        infer.load_model(odd)
    assert isinstance(infer.load_model(odd, trust=True), Predictor)


def test_no_checkpoint_given(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(infer, "_pretrained_dir", lambda: tmp_path)  # no shipped model
    assert infer.default_checkpoint() is None
    assert infer.default_checkpoint("sphere") is None
    assert infer.main(["a.dta"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint given: pass --ckpt" in err
    assert "dysonian_pl/pretrained/universal-plate.ckpt is not installed" in err
    assert infer.main(["a.dta", "--geometry", "sphere"]) == 2
    assert "universal-sphere.ckpt is not installed" in capsys.readouterr().err
    with pytest.raises(ValueError, match="geometry: must be one of"):
        infer.default_checkpoint("cube")


def test_default_checkpoint_is_used_without_ckpt(rel_ckpt, tmp_path, monkeypatch, capsys):
    shipped = tmp_path / "pretrained"
    shipped.mkdir()
    shutil.copy(rel_ckpt, shipped / "universal-plate.ckpt")
    monkeypatch.setattr(infer, "_pretrained_dir", lambda: shipped)
    assert infer.default_checkpoint() == str(shipped / "universal-plate.ckpt")
    assert infer.default_checkpoint("sphere") is None
    spectrum = _write_sim_file(tmp_path / "s.csv", infer.load_model(rel_ckpt), 0, 3300.0, 3500.0)
    out = tmp_path / "out"
    assert infer.main([str(spectrum), "--out", str(out), "--no-plots"]) == 0
    captured = capsys.readouterr()
    assert " ± " in captured.out
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["model"]["checkpoint"].endswith("universal-plate.ckpt")
    assert doc["model"]["engine"] == "torch"  # no .npz beside it
    # with its numpy export beside it: that, with the same numbers to float32 rounding (on
    # the whole sweep: this barely trained model reads absurdly narrow lines, and zooming
    # 10^4-fold onto them amplifies any rounding difference)
    from dysonian_pl.npnet import TOLERANCE, export_npz

    monkeypatch.setattr(infer, "ZOOM_ROUNDS", 0)
    export_npz(shipped / "universal-plate.ckpt", shipped / "universal-plate.npz")
    assert (
        infer.main([str(spectrum), "--out", str(out), "--no-plots", "--ckpt", str(rel_ckpt)]) == 0
    )
    doc = json.loads((out / "predictions.json").read_text())
    assert infer.main([str(spectrum), "--out", str(tmp_path / "np"), "--no-plots"]) == 0
    doc_np = json.loads((tmp_path / "np" / "predictions.json").read_text())
    assert doc_np["model"]["engine"] == "numpy"
    assert doc_np["model"]["checkpoint"].endswith("universal-plate.npz")
    assert doc_np["model"]["exported_from"] == "universal-plate.ckpt"
    row, row_np = doc["rows"][0], doc_np["rows"][0]
    span = {"B0": 160.0, "dB": 98.0, "p": 3.95}  # the trained ranges on this 200 G sweep
    for k, s in span.items():
        assert abs(row_np[k] - row[k]) < TOLERANCE * s, k
        assert row_np[f"{k}_sigma"] == pytest.approx(row[f"{k}_sigma"], rel=TOLERANCE)
    capsys.readouterr()
    # --ckpt with a --geometry that is not the checkpoint's
    assert infer.main([str(spectrum), "--ckpt", str(rel_ckpt), "--geometry", "sphere"]) == 2
    assert "--geometry sphere: the checkpoint rel.ckpt is a plate model" in capsys.readouterr().err


# --------------------------------------------------------------------------- #
# predictions
# --------------------------------------------------------------------------- #
def test_predict_arrays_shape_batches_and_check(model):
    x, _ = simulate(model.sim, 3, np.arange(5))
    a = infer.predict_arrays(model, x.numpy())
    before = torch.get_num_threads()
    b = infer.predict_arrays(model, x.numpy(), batch=2, threads=1)
    assert torch.get_num_threads() == before
    assert a.shape == (5, 3) and a.dtype == np.float64 and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-5)
    with pytest.raises(ValueError, match=r"expected shape \(N, 512\)"):
        infer.predict_arrays(model, np.zeros((2, 100), np.float32))
    # no uncertainty head: NaN sigmas
    v, s = infer.predict_arrays(model, x.numpy(), return_sigma=True)
    np.testing.assert_allclose(v, a, rtol=1e-6)
    assert s.shape == (5, 3) and np.isnan(s).all()


def test_simulated_text_file_matches_predict_arrays(model, tmp_path):
    x, _ = simulate(model.sim, 11, np.arange(3))
    axis = field_axis(model.sim)
    files = []
    for i in range(3):
        f = tmp_path / f"sim{i}.csv"
        with open(f, "w") as fh:
            fh.write("field (G),intensity\n")
            fh.writelines(
                f"{float(b)!r},{float(v)!r}\n" for b, v in zip(axis, x[i].numpy(), strict=True)
            )
        files.append(f)
    rows = infer.infer_files(files, model, tmp_path / "out", plots=False, quiet=True)
    # read (this small test model's reconstruction may be "unreliable": not the point here)
    assert all(r["status"] != "error" for r in rows), [r.get("error") for r in rows]
    got = np.array([[r["B0"], r["dB"], r["p"]] for r in rows])
    want = infer.predict_arrays(model, normalise(x).numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert all(r["coverage"] == 1.0 for r in rows)
    # a full-coverage simulated line is reconstructed with a positive amplitude
    # in file units (the file holds a peak-to-peak-1 spectrum)
    assert all(np.isfinite(r["amplitude"]) for r in rows)


def test_reconstruction_recovers_amplitude_and_baseline(model):
    """With the true parameters, the linear fit returns the file's amplitude and baseline."""
    from dysonian_pl.preprocess import prepare_real

    axis = field_axis(model.sim)
    params = np.array([3400.0, 20.0, 0.8])
    line = infer.model_line(model, axis, params)
    data = 250.0 * line + 7.0 + 0.05 * (axis - 3400.0)
    prep = prepare_real(axis, -data, axis)  # negated in the file: polarity flips it back
    assert prep.flipped
    fit = infer._reconstruct(model, axis, prep, params, np.ones_like(axis, bool))
    assert fit.amplitude == pytest.approx(250.0, rel=1e-5)
    assert fit.offset == pytest.approx(-7.0, rel=1e-5)
    assert fit.slope == pytest.approx(-0.05, rel=1e-5)
    assert fit.rms < 1e-5


# --------------------------------------------------------------------------- #
# files, outputs, warnings
# --------------------------------------------------------------------------- #
def test_strong1_outputs_and_coverage_warning(model, tmp_path):
    out = tmp_path / "out"
    rows = infer.infer_files([_real(STRONG1)], model, out, quiet=True)
    assert len(rows) == 1 and rows[0]["status"] != "error"
    table = _read_csv(out / "predictions.csv")
    assert [r["file"] for r in table] == ["strong1.dta"]
    for name in ("B0", "dB", "p", "amplitude", "baseline_offset", "baseline_slope"):
        assert np.isfinite(float(table[0][name]))
    assert "covers only 25.0 % of the model's window" in table[0]["warnings"]
    assert "amplitude:" in (out / "predictions.csv").read_text().split("\nfile,")[0]
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["model"]["window_g"] == [3300.0, 3500.0]
    assert doc["model"]["checkpoint"].endswith("tiny.ckpt")
    assert doc["model"]["checkpoint_format"] == CHECKPOINT_FORMAT
    assert doc["rows"][0]["B0"] == pytest.approx(float(table[0]["B0"]))
    assert rows[0]["plot"] == table[0]["plot"] == "strong1.svg"
    _check_svg(out / "strong1.svg", "strong1.dta", rows[0])
    _no_tmp_left(out)
    # --plot-format png: matplotlib's PNG instead
    rows = infer.infer_files([_real(STRONG1)], model, out, quiet=True, plot_format="png")
    png = out / "strong1.png"
    assert rows[0]["plot"] == "strong1.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1024
    with pytest.raises(ValueError, match="plot_format: must be one of svg, png"):
        infer.infer_files([_real(STRONG1)], model, out, quiet=True, plot_format="pdf")


def _check_svg(path: Path, file_name: str, row: dict) -> None:
    """The overlay SVG parses as XML and shows the data, the fit, the residual, field ticks
    in gauss over the window read, grey where the sweep does not reach, and the title."""
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg" and root.get("width") == "700"
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    title = next(t for t in texts if t.startswith(file_name + ":"))
    assert f"B0 = {infer.format_pm(row['B0'], row.get('B0_sigma'))} G" in title
    assert "p = " in title and "dB = " in title
    assert {"field (G)", "normalised signal", "residual", "reconstructed"} <= set(texts)
    ticks = [float(t.replace("\u2212", "-")) for t in texts if t.replace(".", "").isdigit()]
    assert any(row["window_lo"] <= t <= row["window_hi"] for t in ticks), texts
    paths = [el.get("d") for el in root.iter(f"{SVG}path")]
    assert len(paths) == 3  # measured, reconstructed, residual
    assert all(len(d.split()) > 100 for d in paths)  # every point of the window read
    grey = [r for r in root.iter(f"{SVG}rect") if r.get("fill") == "#e6e6e6"]
    assert bool(grey) == (row["coverage"] < 1)


def test_missing_file_error_row_exit_1_no_plots(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "missing.dta"
    code = infer.main([str(missing), str(_real(STRONG1)), "--ckpt", str(ckpt), "--out", str(out), "--no-plots"])  # fmt: skip
    assert code == 1
    captured = capsys.readouterr()
    assert "| file |" in captured.out and "| missing.dta |" in captured.out
    assert "error: missing.dta: file not found" in captured.err
    assert "Traceback" not in captured.err
    table = _read_csv(out / "predictions.csv")
    assert [r["status"] != "error" for r in table] == [False, True]
    assert "file not found" in table[0]["error"]
    assert not list(out.glob("*.png")) and not list(out.glob("*.svg"))
    _no_tmp_left(out)


def test_all_ok_exit_0_and_glob_reads_pairs_once(ckpt, tmp_path, capsys):
    src = _real(REAL / "easyspin-eprfiles")
    work = tmp_path / "in"
    work.mkdir()
    for name in ("strong1.dsc", "strong1.dta", "strong1esp.par", "strong1esp.spc"):
        shutil.copy(src / name, work / name)
    (work / "notes.md").write_text("not a spectrum\n")
    found = infer.expand_inputs([str(work / "*")])
    assert [Path(p).name for _, p in found] == ["strong1.dsc", "strong1esp.par"]
    # an explicit data file and its descriptor from a glob are one spectrum
    assert len(infer.expand_inputs([str(work / "strong1.dta"), str(work / "strong1.*")])) == 1
    assert infer.expand_inputs([str(work / "*.xyz")]) == [(str(work / "*.xyz"), None)]
    # a folder: every spectrum in it and its sub-folders, pairs once
    (work / "deeper").mkdir()
    shutil.copy(src / "strong1.dsc", work / "deeper" / "again.dsc")
    shutil.copy(src / "strong1.dta", work / "deeper" / "again.dta")
    found = infer.expand_inputs([str(work)])
    assert [Path(p).name for _, p in found] == ["again.dsc", "strong1.dsc", "strong1esp.par"]
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    assert infer.expand_inputs([str(empty)]) == [(str(empty), None)]
    code = infer.main([str(empty), "--ckpt", str(ckpt), "--out", str(tmp_path / "o2")])
    assert code == 1
    table = _read_csv(tmp_path / "o2" / "predictions.csv")
    assert "no spectrum file in this folder or its sub-folders" in table[0]["error"]
    shutil.rmtree(work / "deeper")
    out = tmp_path / "out"
    code = infer.main([str(work / "*"), "--ckpt", str(ckpt), "--out", str(out), "--no-plots"])
    assert code == 0
    table = _read_csv(out / "predictions.csv")
    # the same numbers from the BES3T and the ESP copy of one measurement
    assert float(table[0]["p"]) == pytest.approx(float(table[1]["p"]), rel=1e-5)
    capsys.readouterr()


def test_unique_plot_names(model, tmp_path):
    assert infer._plot_names(["a", "a", "A", "strong1", "strong1esp", "a"], "png") == [
        "a.png",
        "a-2.png",
        "A-3.png",
        "strong1.png",
        "strong1esp.png",
        "a-4.png",
    ]
    src = _real(REAL / "easyspin-eprfiles")
    files = []
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        for ext in (".dsc", ".dta"):
            shutil.copy(src / f"strong1{ext}", tmp_path / folder / f"a{ext}")
        files.append(tmp_path / folder / "a.dsc")
    out = tmp_path / "out"
    rows = infer.infer_files(files, model, out, quiet=True)
    assert [r["plot"] for r in rows] == ["a.svg", "a-2.svg"]
    assert (out / "a.svg").stat().st_size > 1024 and (out / "a-2.svg").stat().st_size > 1024


def test_progress_bar_only_when_asked(model, tmp_path, capsys):
    files = [_real(STRONG1), REAL / "easyspin-eprfiles" / "strong1esp.spc"]
    infer.infer_files(files, model, tmp_path / "a", plots=False, quiet=True)
    assert capsys.readouterr().err == ""  # not a TTY: silent
    infer.infer_files(files, model, tmp_path / "b", plots=False, quiet=True, progress=True)
    assert "2/2" in capsys.readouterr().err


def test_warnings_edges_and_flip(model):
    axis = field_axis(model.sim)
    prep = type("P", (), {"warnings": ["f.dta: partial"], "flipped": True})()
    warns = infer._warnings_for(
        model, np.array([3305.0, 20.0, 0.21]), prep, axis, "f.dta", (3300.0, 3310.0)
    )
    text = "; ".join(warns)
    assert warns[0] == "partial"
    assert "line lies at/outside the window" in text
    assert "p = 0.21 is at the edge of the training range [0.2, 2]: treat with caution" in text
    assert "B0 = 3305 G is outside the training range [3320, 3480]" in text
    assert "polarity flipped" in text
    prep.flipped = False
    quiet = infer._warnings_for(model, np.array([3400.0, 20.0, 1.0]), prep, axis, "f.dta")
    assert quiet == ["partial"]


def test_atomic_write_failure_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "predictions.csv"
    target.write_text("old\n")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        infer._atomic_write(target, b"new\n")
    assert target.read_text() == "old\n"
    _no_tmp_left(tmp_path)


def test_polish_columns(model, tmp_path):
    pytest.importorskip(
        "dysonian_pl.fitting", reason="dysonian_pl.fitting (least squares) is not written yet"
    )
    rows = infer.infer_files(
        [_real(STRONG1)], model, tmp_path, plots=False, polish=True, quiet=True
    )
    row = rows[0]
    for key in ("lsq_B0", "lsq_dB", "lsq_p", "lsq_B0_stderr", "lsq_success"):
        assert key in row
    table = _read_csv(tmp_path / "predictions.csv")
    assert "lsq_p_stderr" in table[0]


def test_polish_plumbing_with_a_stub_fitter(model, tmp_path, monkeypatch):
    """The polish columns and warnings, independent of the real fitter."""
    import sys
    import types

    calls = {}

    def fit_best_of(field_g, intensity, starts, *, geometry):
        calls.update(n=len(field_g), geometry=geometry, starts=starts)
        return types.SimpleNamespace(
            params={"B0": 3400.5, "dB": 1.2, "p": 0.3},
            stderr={"B0": 0.01, "dB": 0.02, "p": 0.03},
            success=True,
        )

    stub = types.ModuleType("dysonian_pl.fitting")
    stub.fit_best_of = fit_best_of
    monkeypatch.setitem(sys.modules, "dysonian_pl.fitting", stub)
    rows = infer.infer_files(
        [_real(STRONG1)], model, tmp_path, plots=False, polish=True, quiet=True
    )
    assert calls["n"] == 1024 and calls["geometry"] == "plate"
    # two starts: the CNN's answer and the data's extrema
    assert calls["starts"] == [
        {"B0": rows[0]["B0"], "dB": rows[0]["dB"], "p": rows[0]["p"]},
        "data",
    ]
    assert rows[0]["lsq_p"] == 0.3 and rows[0]["lsq_p_stderr"] == 0.03
    assert rows[0]["lsq_success"] is True
    assert _read_csv(tmp_path / "predictions.csv")[0]["lsq_success"] == "True"

    monkeypatch.setitem(sys.modules, "dysonian_pl.fitting", None)  # import fails
    rows = infer.infer_files(
        [_real(STRONG1)], model, tmp_path, plots=False, polish=True, quiet=True
    )
    assert "polish skipped: dysonian_pl.fitting is not available" in rows[0]["warnings"]
    assert rows[0]["status"] != "error" and np.isnan(rows[0]["lsq_p"])


# --------------------------------------------------------------------------- #
# window-agnostic models and uncertainty
# --------------------------------------------------------------------------- #
def _write_sim_file(path: Path, model, index: int, lo: float, hi: float) -> Path:
    """A simulated spectrum of `model`'s nominal window, written as recorded over lo-hi G."""
    x, _ = simulate(model.sim, 5, np.array([index]))
    w0, w1 = model.sim.window
    field_g = lo + (field_axis(model.sim) - w0) * (hi - lo) / (w1 - w0)
    with open(path, "w") as fh:
        fh.write("field (G),intensity\n")
        fh.writelines(
            f"{float(b)!r},{float(v)!r}\n" for b, v in zip(field_g, x[0].numpy(), strict=True)
        )
    return path


def test_to_physical_identity_for_fixed_window(model):
    v, s = np.array([3400.0, 20.0, 1.0]), np.array([0.1, 0.2, 0.3])
    v2, s2 = infer.to_physical(model, v, s, (3000.0, 4000.0))
    np.testing.assert_array_equal(v2, v)
    np.testing.assert_array_equal(s2, s)


def test_relative_window_maps_sweep_and_sigma(rel_model, tmp_path, monkeypatch):
    from dysonian_pl.preprocess import prepare_real
    from dysonian_pl.readers import read_spectrum

    # the mapping of the whole sweep (the zoom on narrow lines: tests/test_pretrained.py)
    monkeypatch.setattr(infer, "ZOOM_ROUNDS", 0)

    sweeps = [(3300.0, 3500.0), (9000.0, 9400.0)]
    files = [
        _write_sim_file(tmp_path / f"s{i}.csv", rel_model, 3, *sw) for i, sw in enumerate(sweeps)
    ]
    out = tmp_path / "out"
    rows = infer.infer_files(files, rel_model, out, plots=True, quiet=True)
    assert [r["status"] != "error" for r in rows] == [True, True], [r.get("error") for r in rows]
    w0, w1 = rel_model.sim.window
    rel = []
    for row, f, (lo, hi) in zip(rows, files, sweeps, strict=True):
        assert (row["sweep_lo"], row["sweep_hi"]) == pytest.approx((lo, hi))
        assert row["coverage"] == 1.0
        spec = read_spectrum(f)
        prep = prepare_real(spec.field, spec.intensity, np.linspace(lo, hi, 256))
        (nb0, ndb, npp), (sb0, sdb, sp) = (
            a[0] for a in infer.predict_arrays(rel_model, prep.spectrum, return_sigma=True)
        )
        k = (hi - lo) / (w1 - w0)
        # float32 rounding of the network's output: the file path reads the spectra as a
        # batch, this one alone (oneDNN may pick another kernel); dB comes out through exp
        # of a log over 10-500 (x3.9), so 1e-6 was within one rounding of failing
        tol = 2e-5
        assert row["B0"] == pytest.approx(lo + (nb0 - w0) * k, rel=tol)
        assert row["dB"] == pytest.approx(ndb * k, rel=tol)
        assert row["p"] == pytest.approx(npp, rel=tol)
        assert row["B0_sigma"] == pytest.approx(sb0 * k, rel=tol)
        assert row["dB_sigma"] == pytest.approx(sdb * k, rel=tol)
        assert row["p_sigma"] == pytest.approx(sp, rel=tol)
        assert all(row[f"{n}_sigma"] > 0 for n in ("B0", "dB", "p"))
        rel.append([(row["B0"] - lo) / (hi - lo), row["dB"] / (hi - lo), row["p"]])
    # the same line relative to its sweep: the same relative prediction
    np.testing.assert_allclose(rel[0], rel[1], rtol=1e-5)
    # and the network saw what training sees (the simulated, normalised spectrum)
    x, _ = simulate(rel_model.sim, 5, np.array([3]))
    want = infer.predict_arrays(rel_model, normalise(x).numpy())[0]
    np.testing.assert_allclose(
        rel[0], [(want[0] - w0) / (w1 - w0), want[1] / (w1 - w0), want[2]], rtol=1e-4
    )
    table = _read_csv(out / "predictions.csv")
    for name in ("B0_sigma", "dB_sigma", "p_sigma"):
        assert all(float(r[name]) > 0 for r in table)
    header = (out / "predictions.csv").read_text().split("\nfile,")[0]
    assert "each file's own sweep" in header and "p_sigma:" in header
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["model"]["relative_window"] is True and doc["model"]["window_g"] is None
    assert doc["model"]["training_ranges_fraction_of_sweep"]["dB"] == [0.01, 0.5]
    assert doc["rows"][0]["p_sigma"] > 0 and "B0_sigma" in doc["units"]
    md = infer.markdown_table(rows, rel_model.names)
    assert md.count(" ± ") == 6
    _check_svg(out / "s1.svg", "s1.csv", rows[1])


def test_relative_window_warnings_and_p_sigma(rel_model):
    axis = np.linspace(3300.0, 3500.0, 256)
    prep = type("P", (), {"warnings": [], "flipped": False})()
    params = np.array([3310.0, 96.0, 1.0])  # centre at 5 %, width 48 % of the sweep
    warns = infer._warnings_for(
        rel_model, params, prep, axis, "f", (3300.0, 3500.0), sigmas=np.array([1.0, 1.0, 0.8])
    )
    text = "; ".join(warns)
    assert "line centre is at 5 % of the sweep: the model was trained for 10-90 %" in text
    assert "line width is 48 % of the sweep, at the edge of the 1-50 %" in text
    # p = 1 +- 0.8: no twin, p + 2 sigma = 2.6 stops short of the fold at 2.654
    assert "p is poorly determined by the line shape here (p = 1 ± 0.8)" in text
    assert "give the same line shape" not in text
    assert "training range [100, 900]" not in text  # nominal ranges are not shown as G
    ok = infer._warnings_for(
        rel_model, np.array([3400.0, 20.0, 1.0]), prep, axis, "f", (3300.0, 3500.0),
        sigmas=np.array([0.1, 0.1, 0.1]),
    )  # fmt: skip
    assert ok == []
    narrow = infer._warnings_for(rel_model, np.array([3400.0, 1.0, 1.0]), prep, axis, "f")
    assert "line width is 0.5 % of the sweep" in "; ".join(narrow)
    assert "record a narrower sweep around the line" in "; ".join(narrow)


def test_svg_ticks_are_round_numbers():
    from dysonian_pl.svgplot import nice_ticks

    assert nice_ticks(3375.0, 3425.0) == ([3380.0, 3390.0, 3400.0, 3410.0, 3420.0], 0)
    ticks, decimals = nice_ticks(-0.05, 0.035, 4)
    assert ticks == pytest.approx([-0.05, -0.025, 0.0, 0.025]) and decimals == 3
    ticks, decimals = nice_ticks(9000.02, 9000.5)
    assert ticks == pytest.approx([9000.1, 9000.2, 9000.3, 9000.4, 9000.5]) and decimals == 1
    assert nice_ticks(1.0, 1.0) == ([], 0)


def test_p_twin_warnings_follow_the_fold(rel_model):
    """p's identifiability warning: whenever another p gives the same shape (both named,
    with sigmas), and, without a twin, when p +- 2 sigma reaches the fold of A/D (plate
    2.6544) or sigma is large (above 0.15 of the training span)."""
    from types import SimpleNamespace

    from dysonian_pl.lineshapes import p_fold, p_twin

    assert p_fold("plate") == pytest.approx(2.6544, abs=1e-4)
    assert rel_model.sim.ranges()["p"] == (0.05, 4.0)  # a model trained across the fold

    def warn(p, s_p, model=rel_model):
        return infer._p_twin_warning(model, p, s_p)

    twin = float(p_twin(2.0, "plate"))
    assert twin == pytest.approx(3.3519, abs=1e-3)
    s_twin = infer.twin_sigma(rel_model, 2.0, 0.4, twin)
    # across the fold: the pair, and where p +- 2 sigma lies against the fold
    assert warn(2.0, 0.4) == (
        f"p = 2 ± 0.4 and p = 3.35 ± {s_twin:.2g} give the same line shape (plate): the shape "
        "alone cannot tell them apart (p ± 2 sigma = 1.2 to 2.8, the fold where A/D is "
        "smallest is at p = 2.654)"
    )
    assert warn(3.0, 0.7).startswith("p = 3 ± 0.7 and p = 2.31 ± ")
    # a twin with a small sigma still gets the warning: the shape cannot choose
    assert warn(3.3, 0.1).startswith("p = 3.3 ± 0.1 and p = 2.04 ± ")
    # a model trained below the fold (the shipped ones) says which side it answers on
    thin = SimpleNamespace(
        names=("B0", "dB", "p"),
        sim=SimpleNamespace(geometry="plate", ranges=lambda: {"p": (0.05, 2.65)}),
    )
    s_twin = infer.twin_sigma(thin, 2.0, 0.03, twin)
    assert 0.03 < s_twin < 0.1
    assert warn(2.0, 0.03, thin) == (
        f"p = 2 ± 0.03 and p = 3.35 ± {s_twin:.2g} give the same line shape (plate): the "
        "shape alone cannot tell them apart (this model was trained on p 0.05-2.65, below "
        "the fold at p = 2.654, and answers on that side: take p = 3.35 if the sample can "
        "be thicker than that)"
    )
    # no twin (p below 1.55), but the interval reaches the fold
    assert warn(1.2, 0.8) == (
        "p = 1.2 ± 0.8: p ± 2 sigma (-0.4 to 2.8) reaches the fold at p = 2.654 (plate) "
        "beyond which lines repeat the "
        "shapes of smaller p: the shape alone cannot tell them apart"
    )
    assert warn(0.5, 0.05) is None and warn(0.5, float("nan")) is None
    assert warn(0.5, 0.05, thin) is None
    assert np.isnan(infer.twin_of(rel_model, 0.5))
    assert infer.twin_of(rel_model, 2.0) == pytest.approx(twin)
    assert np.isnan(infer.twin_of(rel_model, -0.1))  # an unphysical prediction: no twin


def test_format_pm():
    assert infer.format_pm(3399.5234, 0.03) == "3399.52 ± 0.03"
    assert infer.format_pm(1.2345, 0.15) == "1.23 ± 0.15"
    assert infer.format_pm(3399.5, float("nan")) == "3400"
    assert infer.format_pm(42.0, None) == "42"


@pytest.mark.parametrize(
    "name",
    ["20201216_120054089_goniometersweep-testdata_F_gon_10dg.xml", "x" * 150 + ".DSC"],
)
def test_png_overlay_title_stays_inside_the_figure(monkeypatch, name):
    # a long file name: the title wraps, and no line runs off the figure's edge (at a
    # wrap width of 95 characters this one lost dB's last digits)
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    seen = {}
    save = Figure.savefig

    def spy(self, *args, **kwargs):
        seen["fig"] = self
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    axis = np.linspace(3350.0, 3400.0, 256)
    line = np.gradient(np.exp(-(((axis - 3375.0) / 3.0) ** 2)))
    title = f"{name}:  B0 = 3383.44 ± 0.09 G,  dB = 1.635 ± 0.018 G,  p = 0.8 ± 0.2"
    png = infer._overlay_png(axis, line, line, np.ones(256, bool), title)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    fig = seen["fig"]
    title_text = fig._suptitle
    box = title_text.get_window_extent(fig.canvas.get_renderer())
    assert 0.0 <= box.x0 and box.x1 <= fig.bbox.x1, (box, fig.bbox)
    assert box.y1 <= fig.bbox.y1 and box.y0 >= fig.axes[0].get_window_extent().y1
    lines = title_text.get_text().split("\n")
    assert any("dB = 1.635 ± 0.018 G" in line for line in lines), lines  # not broken
    assert any("B0 = 3383.44 ± 0.09 G" in line for line in lines), lines


def test_slices_all_reads_every_slice_of_a_2d_file(rel_model, tmp_path):
    # a BDPA field sweep repeated 10 times (cwepr's test file): --slices all gives one row
    # and one plot per slice, the default only the first (slice 0), a 1D file no slice
    bdpa = Path(__file__).resolve().parent / "data" / "external" / "cwepr-0.5.1"
    files = [str(bdpa / "BDPA-2DFieldDelay.DSC"), str(bdpa / "test-magnettech.xml")]
    rows = infer.infer_files(files, rel_model, tmp_path / "all", slices="all", quiet=True)
    assert len(rows) == 11
    assert [r["slice"] for r in rows[:10]] == list(range(10)) and rows[10].get("slice") is None
    assert rows[3]["file"] == "BDPA-2DFieldDelay.DSC [slice 3]"
    assert rows[3]["reader_notes"] == "slice 3 of 10 (Time = 98.86 s)"  # from the .YGF
    assert [r["plot"] for r in rows[:2]] == [
        "BDPA-2DFieldDelay-slice0.svg",
        "BDPA-2DFieldDelay-slice1.svg",
    ]
    assert all((tmp_path / "all" / r["plot"]).is_file() for r in rows)
    table = _read_csv(tmp_path / "all" / "predictions.csv")
    assert [t["slice"] for t in table] == [str(k) for k in range(10)] + [""]
    # the same spectrum read alone or as one of ten: the same numbers, to float32 rounding
    # of a batch of 11 against 1 carried through the zoomed readings (up to 1e-5 of dB or
    # p with a tiny test model, depending on which tests trained it first), far closer
    # than two slices of the file are to each other
    first = infer.infer_files(files[:1], rel_model, tmp_path / "first", quiet=True)
    assert len(first) == 1 and first[0]["slice"] == 0
    assert (
        first[0]["file"] == "BDPA-2DFieldDelay.DSC" and first[0]["plot"] == "BDPA-2DFieldDelay.svg"
    )
    tolerance = {"B0": {"abs": 2e-4}, "dB": {"rel": 1e-4}, "p": {"rel": 1e-4, "abs": 1e-5}}
    for name, tol in tolerance.items():
        assert first[0][name] == pytest.approx(rows[0][name], **tol)
        # the test can tell: some slice of the ten is read apart from the first
        assert any(r[name] != pytest.approx(rows[0][name], **tol) for r in rows[1:10])
    with pytest.raises(ValueError, match="slices: must be one of first, all"):
        infer.infer_files(files, rel_model, tmp_path / "x", slices="some")


def test_a_line_recorded_with_few_points_across_it_is_warned_of(tmp_path):
    """The shipped models were trained and calibrated on lines at least 41 recorded
    points wide (4096 points, dB from 1 % of the sweep): a line 12 points wide gets a
    warning that names both numbers, one 60 points wide none."""
    from dysonian_pl.lineshapes import dysonian

    model = infer.load_pretrained("plate")
    assert infer._sampling_warning(model, np.array([3500.0, 1.0, 0.8]), 4096, (3400.0, 3600.0))
    rows = {}
    for name, n in (("coarse", 241), ("fine", 1201)):
        field = np.linspace(3480.0, 3520.0, n)  # 0.167 and 0.0333 G per point
        f = tmp_path / f"{name}.csv"
        line = dysonian(field, 3500.0, 2.0, 0.8, "plate")
        f.write_text(
            "Field [G],Intensity\n"
            + "\n".join(f"{b:.5f},{s:.8e}" for b, s in zip(field, line, strict=True))
        )
        (rows[name],) = infer.infer_files([f], model, tmp_path / name, plots=False)
    coarse = rows["coarse"]["warnings"]
    assert coarse.count("recorded points wide") == 1
    assert "the line is 12" in coarse and "the 41 or more" in coarse
    assert rows["coarse"]["dB"] == pytest.approx(2.0, rel=0.05)
    assert "recorded points wide" not in rows["fine"]["warnings"]
    assert rows["fine"]["dB"] == pytest.approx(2.0, rel=0.02)
