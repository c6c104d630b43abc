"""The Lightning-free prediction path: `Predictor` predicts exactly what `DysonianRegressor`
predicts, and the tools (`infer`, `lsq`, `sets`, `compare`) never import Lightning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import perturb_batch_norm

from dysonian_pl import infer
from dysonian_pl.module import DysonianRegressor
from dysonian_pl.params import SimulationConfig
from dysonian_pl.predictor import Predictor
from dysonian_pl.simulate import field_axis, simulate

#: Packages the prediction path must not import (Lightning's own and its logger/metrics).
TRAINING_ONLY = (
    "lightning",
    "lightning_fabric",
    "pytorch_lightning",
    "torchmetrics",
    "tensorboard",
)


#: the repository root on the subprocesses' path: they import this checkout's dysonian_pl
_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")])
    ),
}


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=_ENV, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def _regressor(path: Path) -> DysonianRegressor:
    return DysonianRegressor.load_from_checkpoint(
        path, map_location="cpu", weights_only=True
    ).eval()


def _spectra(sim: SimulationConfig, n: int = 40) -> torch.Tensor:
    return simulate(sim, 3, 10**9 + np.arange(n))[0]


# --------------------------------------------------------------------------- #
# same numbers as the training module
# --------------------------------------------------------------------------- #
def test_predictor_matches_regressor_bit_for_bit(rel_ckpt: Path, tmp_path: Path) -> None:
    """Uncertainty head, calibrated sigmas, folded batch norm: identical tensors."""
    ckpt = torch.load(rel_ckpt, map_location="cpu", weights_only=True)
    # calibration factors as a long validation would leave them (the tiny run has too
    # few validation spectra to calibrate)
    ckpt["state_dict"]["sigma_scale"] = torch.tensor([1.3, 0.7, 2.1], dtype=torch.float64)
    path = tmp_path / "calibrated.ckpt"
    torch.save(ckpt, path)
    reg, pred = _regressor(path), infer.load_model(path)
    assert isinstance(pred, Predictor) and not isinstance(pred, DysonianRegressor)
    assert pred.uncertainty and reg.uncertainty
    assert torch.equal(pred.sigma_scale, ckpt["state_dict"]["sigma_scale"])
    assert dict(pred.hparams) == dict(reg.hparams)
    assert pred.hparams.width == reg.hparams.width == 8
    assert pred.names == reg.names and pred.sim == reg.sim
    assert torch.equal(pred.scaler.lo, reg.scaler.lo)
    assert torch.equal(pred.scaler.span, reg.scaler.span)
    state, ref = pred.state_dict(), reg.state_dict()
    assert list(state) == list(ref)
    assert all(torch.equal(state[k], ref[k]) for k in ref)

    x = _spectra(reg.sim)
    assert torch.equal(pred.predict_physical(x), reg.predict_physical(x))
    (v1, s1), (v2, s2) = pred.predict_with_sigma(x), reg.predict_with_sigma(x)
    assert v1.dtype == s1.dtype == torch.float64
    assert torch.equal(v1, v2) and torch.equal(s1, s2) and torch.isfinite(s1).all()
    a_val, a_sig = infer.predict_arrays(pred, x.numpy(), return_sigma=True)
    b_val, b_sig = infer.predict_arrays(reg, x.numpy(), return_sigma=True)
    np.testing.assert_array_equal(a_val, b_val)
    np.testing.assert_array_equal(a_sig, b_sig)
    # the training-mode network is the unfolded one, in both
    pred.train()
    assert pred.training and pred.prediction_network() is pred.net
    pred.eval()
    assert pred.prediction_network() is not pred.net
    assert torch.equal(pred.predict_physical(x), reg.predict_physical(x))
    assert pred.device == torch.device("cpu") and pred.to("cpu") is pred


def test_predictor_matches_regressor_without_uncertainty(tmp_path: Path) -> None:
    """Three outputs: NaN sigmas; batch-norm statistics that make the folding matter."""
    sim = SimulationConfig(
        B0=(3320.0, 3480.0), dB=(3.0, 50.0), p=(0.2, 2.0), window=(3300.0, 3500.0), n_points=256
    )
    torch.manual_seed(0)
    reg = DysonianRegressor(sim=sim, width=8)
    perturb_batch_norm(reg.net)
    ckpt = {"hyper_parameters": dict(reg.hparams), "state_dict": reg.state_dict()}
    reg.on_save_checkpoint(ckpt)
    path = tmp_path / "plain.ckpt"
    torch.save(ckpt, path)
    reg.eval()
    pred = infer.load_model(path)
    assert not pred.uncertainty
    assert pred.checkpoint_meta["path"] == str(path.resolve())
    assert pred.checkpoint_meta["target_names"] == ["B0", "dB", "p"]
    x = _spectra(sim)
    assert torch.equal(pred.predict_physical(x), reg.predict_physical(x))
    (v1, s1), (v2, _) = pred.predict_with_sigma(x), reg.predict_with_sigma(x)
    assert torch.equal(v1, v2) and torch.isnan(s1).all()
    # Predictor.from_checkpoint alone (no file): the same
    alone = Predictor.from_checkpoint(ckpt)
    assert not alone.training and not any(p.requires_grad for p in alone.parameters())
    assert torch.equal(alone.predict_physical(x), v2)


def test_checkpoint_without_sigma_scale_loads_with_factors_one(rel_ckpt: Path) -> None:
    ckpt = torch.load(rel_ckpt, map_location="cpu", weights_only=True)
    del ckpt["state_dict"]["sigma_scale"]
    pred = Predictor.from_checkpoint(ckpt)
    assert torch.equal(pred.sigma_scale, torch.ones(3, dtype=torch.float64))


def test_compare_ckpt_uses_the_safe_lightning_free_loader(rel_ckpt: Path) -> None:
    from dysonian_pl.compare import _load_model

    model, predictor = _load_model(str(rel_ckpt))
    assert model is infer.load_model(rel_ckpt)
    x = _spectra(model.sim, 5)
    expected = _regressor(rel_ckpt).predict_physical(x).numpy()
    np.testing.assert_array_equal(predictor(x.numpy()), expected)


# --------------------------------------------------------------------------- #
# start-up: no Lightning in the tools
# --------------------------------------------------------------------------- #
def test_tool_modules_import_without_lightning(tmp_path: Path) -> None:
    code = (
        "import sys, dysonian_pl.infer, dysonian_pl.evaluate, dysonian_pl.compare, "
        "dysonian_pl.fitting, dysonian_pl.cli, dysonian_pl.atomic, dysonian_pl.predictor\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {(*TRAINING_ONLY, 'matplotlib')!r})\n"
        "assert not bad, bad\n"
        "assert 'lightning' not in sys.modules and 'torchmetrics' not in sys.modules\n"
    )
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_lsq_starts_without_torch(tmp_path: Path) -> None:
    """`python -m dysonian_pl lsq` needs neither torch nor Lightning (-X importtime lists all)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dysonian_pl", "lsq", "--help"],
        cwd=tmp_path, env=_ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "least-squares" in proc.stdout
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "dysonian_pl" in imported
    assert not imported & {"torch", "matplotlib", *TRAINING_ONLY}, sorted(imported)


def test_tools_dispatch_without_lightning(rel_ckpt: Path, tmp_path: Path) -> None:
    """`python -m dysonian_pl infer|lsq|sets|compare` end to end in one interpreter: no
    Lightning, torchmetrics or TensorBoard; matplotlib only once a PNG is asked for."""
    sim = infer.load_model(rel_ckpt).sim
    spectrum = tmp_path / "line.csv"
    lo, hi = 3300.0, 3500.0
    w0, w1 = sim.window
    field_g = lo + (field_axis(sim) - w0) * (hi - lo) / (w1 - w0)
    x = _spectra(sim, 1)[0].numpy()
    spectrum.write_text(
        "field (G),intensity\n"
        + "".join(f"{float(b)!r},{float(v)!r}\n" for b, v in zip(field_g, x, strict=True))
    )
    ckpt, out = str(rel_ckpt), str(tmp_path)
    code = f"""
import runpy, sys

def run(*args):
    sys.argv = ["dysonian_pl", *args]
    try:
        runpy.run_module("dysonian_pl", run_name="__main__")
    except SystemExit as e:
        return e.code
    raise AssertionError("__main__ did not exit")

def loaded(*names):
    return sorted(m for m in sys.modules if m.split(".")[0] in names)

heavy = {TRAINING_ONLY!r}
assert run("infer", {str(spectrum)!r}, "--ckpt", {ckpt!r}, "--no-plots", "--out", {out + "/a"!r}) == 0
assert not loaded("matplotlib", *heavy), loaded("matplotlib", *heavy)
assert run("infer", {str(spectrum)!r}, "--ckpt", {ckpt!r}, "--out", {out + "/b"!r}) == 0
assert not loaded("matplotlib", *heavy), loaded("matplotlib", *heavy)  # the SVG overlay
assert run("infer", {str(spectrum)!r}, "--ckpt", {ckpt!r}, "--plot-format", "png", "--out", {out + "/p"!r}) == 0
assert loaded("matplotlib") and not loaded(*heavy), loaded(*heavy)
assert run("lsq", {str(spectrum)!r}) == 0
assert run("sets", "--ckpt", {ckpt!r}, "--sets", "set-4", "--n", "8", "--out", {out + "/s"!r}) == 0
assert run("compare", "--ckpt", {ckpt!r}, "--n", "1", "--json", {out + "/c.json"!r}) == 0
assert not loaded(*heavy), loaded(*heavy)
"""
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert (tmp_path / "a" / "predictions.csv").is_file()
    assert not list((tmp_path / "a").glob("*.png"))
    assert (tmp_path / "b" / "line.svg").is_file() and not list((tmp_path / "b").glob("*.png"))
    assert (tmp_path / "p" / "line.png").is_file()
    assert (tmp_path / "s" / "sets.json").is_file()
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["ckpt"] == ckpt and data["conditions"]


def test_atomic_reexports_checkpoint_io_lazily() -> None:
    import dysonian_pl.atomic as atomic
    from dysonian_pl.checkpoint_io import AtomicCheckpointIO

    assert atomic.AtomicCheckpointIO is AtomicCheckpointIO
    with pytest.raises(AttributeError):
        atomic.nothing_here  # noqa: B018


def test_predict_arrays_reuses_the_fused_network(rel_ckpt: Path) -> None:
    """`predict_arrays` calls eval() every time; only a real train/eval switch or a
    weight change may rebuild the batch-norm-folded copy (it costs ~7 forward passes)."""
    model = infer.load_model(rel_ckpt)
    x = simulate(model.sim, 0, 10**9 + np.arange(4))[0].numpy()
    first = infer.predict_arrays(model, x)
    fused = model._fused[0]
    np.testing.assert_array_equal(infer.predict_arrays(model, x), first)
    assert model._fused[0] is fused
    model.eval()
    infer.predict_arrays(model, x)
    assert model._fused[0] is fused
    model.train()
    model.eval()
    infer.predict_arrays(model, x)
    assert model._fused[0] is not fused  # rebuilt after a real switch
    np.testing.assert_array_equal(infer.predict_arrays(model, x), first)


def test_integral_models_round_trip_and_older_checkpoints_still_load(tmp_path: Path) -> None:
    """`integral`, `dispersion` and `detrend` travel in hyper_parameters; a checkpoint
    written before the options existed (no such keys) loads as the three-channel network
    it is."""
    sim = SimulationConfig(n_points=256)
    torch.manual_seed(0)
    reg = DysonianRegressor(sim=sim, width=8, integral=True, dispersion=True, detrend=2).eval()
    assert reg.hparams["integral"] is True and reg.net.integral
    assert reg.hparams["dispersion"] is True and reg.net.dispersion
    assert reg.hparams["detrend"] == 2 == reg.net.detrend
    ckpt = {"hyper_parameters": dict(reg.hparams), "state_dict": reg.state_dict()}
    reg.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "integral.ckpt")
    pred = infer.load_model(tmp_path / "integral.ckpt")
    x = _spectra(sim)
    assert pred.net.integral and pred.net.dispersion and pred.net.detrend == 2
    assert torch.equal(pred.predict_physical(x), reg.predict_physical(x))
    old = DysonianRegressor(sim=sim, width=8).eval()
    ckpt = {"hyper_parameters": dict(old.hparams), "state_dict": old.state_dict()}
    old.on_save_checkpoint(ckpt)
    for key in ("integral", "dispersion", "detrend"):
        del ckpt["hyper_parameters"][key]
    torch.save(ckpt, tmp_path / "old.ckpt")
    pred = infer.load_model(tmp_path / "old.ckpt")
    assert not pred.net.integral and not pred.net.dispersion and pred.net.detrend == -1
    assert torch.equal(pred.predict_physical(x), old.predict_physical(x))
