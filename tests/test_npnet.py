"""The numpy twin of the fast network (`npnet`): same values and sigmas as the torch
`Predictor` to float32 rounding, file errors, and `scripts/export_pretrained.py`."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import perturb_batch_norm

from dysonian_pl import infer, npnet
from dysonian_pl.model import fuse_for_inference
from dysonian_pl.params import SimulationConfig
from dysonian_pl.predictor import Predictor
from dysonian_pl.simulate import simulate

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "export_pretrained.py"


def _random_predictor(sim: SimulationConfig, seed: int, **kwargs) -> Predictor:
    """A fast-network Predictor with random weights and batch-norm statistics far from
    the defaults, so that folding them into the convolutions matters."""
    torch.manual_seed(seed)
    model = Predictor(sim=sim, **kwargs)
    perturb_batch_norm(model.net)
    with torch.no_grad():
        model.sigma_scale.copy_(torch.tensor([1.3, 0.7, 2.1], dtype=torch.float64))
    model.eval().requires_grad_(False)
    model.checkpoint_meta = {"format": 1, "target_names": list(sim.target_names)}
    return model


def _to_npz(model: Predictor, path: Path) -> npnet.NumpyPredictor:
    path.write_bytes(npnet.npz_bytes(model, source_sha256="0" * 64, source_name="x.ckpt"))
    return npnet.load_npz(path)


@pytest.mark.parametrize(
    ("n_points", "width", "depth", "uncertainty", "integral", "dispersion", "detrend"),
    [
        (130, 8, 2, False, False, False, -1),  # not whole folds: padded to 144 points
        (250, 12, 1, True, False, False, -1),  # padded to 256; stage widths 12, 24, 32, 48
        (512, 8, 2, True, False, False, -1),
        (4096, 24, 1, True, False, False, -1),  # the shipped models' shape
        (130, 8, 1, True, True, False, -1),  # running-integral input channel, padded
        (4096, 24, 1, False, True, False, -1),
        (130, 8, 1, True, True, True, -1),  # dispersion channel too, padded (odd FFT length)
        (4096, 24, 1, False, True, True, -1),
        (250, 8, 1, False, False, True, -1),  # dispersion without the integral
        (4096, 24, 1, False, True, True, 2),  # the default fit's network: baseline projected out
        (130, 8, 1, True, True, True, 2),
        (250, 8, 1, False, False, False, 1),
    ],
)
def test_numpy_matches_torch(
    n_points, width, depth, uncertainty, integral, dispersion, detrend, tmp_path: Path
) -> None:
    sim = SimulationConfig(
        B0=(3320.0, 3480.0), dB=(3.0, 50.0), p=(0.2, 2.0), window=(3300.0, 3500.0),
        n_points=n_points,
    )  # fmt: skip
    torch_model = _random_predictor(
        sim, n_points, width=width, depth=depth, uncertainty=uncertainty, integral=integral,
        dispersion=dispersion, detrend=detrend,
    )  # fmt: skip
    np_model = _to_npz(torch_model, tmp_path / "m.npz")
    assert np_model.uncertainty == uncertainty and np_model.sim == sim
    assert np_model.integral == integral and np_model.dispersion == dispersion
    assert np_model.detrend == detrend
    assert np_model.names == ("B0", "dB", "p")
    x = simulate(sim, 1, 10**9 + np.arange(24))[0]
    # the raw network outputs: the fused torch network against the numpy one
    with torch.no_grad():
        raw_torch = fuse_for_inference(torch_model.net)(x).numpy()
    raw_np = np_model.forward(x.numpy())
    assert raw_np.dtype == np.float32 and raw_np.shape == raw_torch.shape
    np.testing.assert_allclose(raw_np, raw_torch, rtol=0, atol=2e-5 * np.abs(raw_torch).max())
    # physical values and calibrated sigmas, through infer.predict_arrays
    t_val, t_sig = infer.predict_arrays(torch_model, x.numpy(), return_sigma=True)
    n_val, n_sig = infer.predict_arrays(np_model, x.numpy(), return_sigma=True, batch=7)
    span = np.array([160.0, 47.0, 1.8])
    assert np.max(np.abs(n_val - t_val) / span) < npnet.TOLERANCE
    if uncertainty:
        assert np.isfinite(n_sig).all()
        np.testing.assert_allclose(n_sig, t_sig, rtol=npnet.TOLERANCE)
    else:
        assert np.isnan(n_sig).all() and np.isnan(t_sig).all()
    d_val, d_sig = npnet.compare(torch_model, np_model, x.numpy())
    assert d_val < npnet.TOLERANCE and d_sig < npnet.TOLERANCE
    # one spectrum alone gives the numbers it gives in a batch
    one = infer.predict_arrays(np_model, x[3].numpy())
    diff = np.abs(one[0] - n_val[3])
    assert np.all(diff <= 1e-6 * np.abs(n_val[3]) + 1e-6 * span), (one[0], n_val[3])


@pytest.mark.parametrize("length", [40, 100, 127, 129])
def test_short_inputs_are_padded_as_torch_pads_them(length: int, tmp_path: Path) -> None:
    """Below 8 folds (128 points) and between whole folds the stem pads with edge values;
    the network itself reads any length (the model's n_points is checked before)."""
    torch_model = _random_predictor(SimulationConfig(n_points=128), 5, width=8, uncertainty=True)
    np_model = _to_npz(torch_model, tmp_path / "m.npz")
    rng = np.random.default_rng(length)
    x = np.cumsum(rng.normal(size=(6, length)), axis=1).astype(np.float32)
    x /= np.ptp(x, axis=1, keepdims=True)
    with torch.no_grad():
        want = fuse_for_inference(torch_model.net)(torch.from_numpy(x)).numpy()
    got = np_model.forward(x)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())
    folded = npnet.folded_input(x)
    assert folded.shape == (6, max(-(-length // 16), 8), 48)
    # the position channel is padded with its end value (1), the spectrum with its last point
    pos = folded[0, :, 32:].ravel()
    assert np.all(pos[length - 1 :] == 1.0) and pos[0] == -1.0
    ptp = folded[:, :, 16:32].reshape(6, -1)
    assert np.all(ptp[:, length - 1 :] == ptp[:, length - 1 : length])


def test_numpy_model_checks_its_input(tmp_path: Path) -> None:
    sim = SimulationConfig(n_points=256)
    np_model = _to_npz(_random_predictor(sim, 0, width=8), tmp_path / "m.npz")
    with pytest.raises(ValueError, match=r"expected shape \(N, 256\)"):
        np_model.predict_physical(np.zeros((2, 200), np.float32))
    with pytest.raises(ValueError, match=r"expected shape \(N, 256\)"):
        infer.predict_arrays(np_model, np.zeros((2, 200), np.float32))
    assert not np_model.training and np_model.eval() is np_model
    with pytest.raises(RuntimeError, match="prediction only"):
        np_model.train()


def test_only_the_fast_network_exports() -> None:
    model = Predictor(sim=SimulationConfig(n_points=256), arch="prior")
    with pytest.raises(ValueError, match="architecture 'prior': only 'fast' exports"):
        npnet.npz_bytes(model, source_sha256="0" * 64, source_name="p.ckpt")


def test_bad_npz_files_are_clear_checkpoint_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    _to_npz(_random_predictor(SimulationConfig(n_points=128), 0, width=8), good)
    with pytest.raises(infer.CheckpointError, match=r"model .*nope.npz: not found"):
        infer.load_model(tmp_path / "nope.npz")
    bad = tmp_path / "random.npz"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(infer.CheckpointError, match="model random.npz: not a readable .npz"):
        infer.load_model(bad)
    other = tmp_path / "other.npz"
    np.savez(other, w=np.zeros(3))
    with pytest.raises(infer.CheckpointError, match="model other.npz: no 'meta' entry"):
        infer.load_model(other)
    # a newer format, and a file missing a weight
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    newer = tmp_path / "newer.npz"
    np.savez(newer, **{**arrays, "meta": np.array(json.dumps({**meta, "npz_format": 99}))})
    with pytest.raises(infer.CheckpointError, match="npz format 99 is newer than this"):
        infer.load_model(newer)
    partial = tmp_path / "partial.npz"
    np.savez(partial, **{k: v for k, v in arrays.items() if k != "trunk.w"})
    with pytest.raises(infer.CheckpointError, match="partial.npz: cannot rebuild the network"):
        infer.load_model(partial)
    assert zipfile.is_zipfile(good)
    code = infer.main(["x.dta", "--ckpt", str(bad)])
    assert code == 2


# --------------------------------------------------------------------------- #
# scripts/export_pretrained.py
# --------------------------------------------------------------------------- #
def _script():
    spec = importlib.util.spec_from_file_location("export_pretrained", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_writes_ckpt_and_matching_npz(rel_ckpt: Path, tmp_path: Path, capsys) -> None:
    script = _script()
    dst = tmp_path / "pretrained" / "model.ckpt"
    assert script.main([str(rel_ckpt), str(dst), "--note", "test export"]) == 0
    npz = dst.with_suffix(".npz")
    assert dst.is_file() and npz.is_file()
    assert not [p.name for p in dst.parent.iterdir() if ".tmp" in p.name]
    np_model = infer.load_model(npz)
    assert isinstance(np_model, npnet.NumpyPredictor)
    assert np_model.source_sha256 == npnet.sha256_of(dst)
    assert np_model.checkpoint_meta["source_checkpoint"] == "model.ckpt"
    assert np_model.checkpoint_meta["note"] == "test export"
    torch_model = infer.load_model(dst)
    x = simulate(torch_model.sim, 2, 10**9 + np.arange(64))[0].numpy()
    d_val, d_sig = npnet.compare(torch_model, np_model, x)
    assert d_val < npnet.TOLERANCE and d_sig < npnet.TOLERANCE
    np.testing.assert_array_equal(np_model.sigma_scale, torch_model.sigma_scale.numpy())
    out = capsys.readouterr().out
    assert "predictions identical" in out and "numpy vs torch on 64 spectra" in out

    # --npz-only rewrites the .npz from the .ckpt as it is
    npz.unlink()
    assert script.main(["--npz-only", str(dst)]) == 0
    assert infer.load_model(npz).source_sha256 == npnet.sha256_of(dst)


def test_export_refuses_to_write_when_numpy_and_torch_disagree(
    rel_ckpt: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    script = _script()
    monkeypatch.setattr(npnet, "TOLERANCE", -1.0)  # no difference is small enough
    dst = tmp_path / "model.ckpt"
    assert script.main([str(rel_ckpt), str(dst)]) == 1
    assert "does not predict what model.ckpt predicts" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither file, no temporary left
    assert script.main(["--npz-only", str(rel_ckpt)]) == 1
    assert not rel_ckpt.with_suffix(".npz").exists()
