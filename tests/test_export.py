"""`python -m dysonian_pl export`: a checkpoint as a TorchScript file."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from conftest import perturb_batch_norm, train_tiny_checkpoint

from dysonian_pl.cli import main
from dysonian_pl.export import EXPORT_FORMAT, export_torchscript, load_exported
from dysonian_pl.infer import CheckpointError, load_model
from dysonian_pl.params import SimulationConfig
from dysonian_pl.simulate import simulate

SET4_256 = SimulationConfig(
    B0=(3300, 3400), dB=(3, 100), p=(0.2, 2), window=(3256, 3455.9), n_points=256
)


@pytest.fixture(scope="module")
def five_channel_ckpt(tmp_path_factory):
    """The default `fit`'s input (integral, dispersion, quadratic detrend) with sigmas,
    batch norm perturbed so that the folding is really exercised."""
    path = tmp_path_factory.mktemp("export") / "five.ckpt"
    train_tiny_checkpoint(
        SET4_256, path, integral=True, dispersion=True, detrend=2, uncertainty=True
    )
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    from dysonian_pl.predictor import Predictor

    model = Predictor.from_checkpoint(ckpt)
    perturb_batch_norm(model.net)
    ckpt["state_dict"] = {
        **ckpt["state_dict"],
        **{f"net.{k}": v for k, v in model.net.state_dict().items()},
    }
    ckpt["state_dict"]["sigma_scale"] = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("batch", [1, 5, 33])
def test_exported_file_predicts_what_the_checkpoint_predicts(five_channel_ckpt, tmp_path, batch):
    out = tmp_path / "model.pt"
    meta = export_torchscript(five_channel_ckpt, out)
    module, stored = load_exported(out)
    assert stored == meta
    assert meta["format"] == EXPORT_FORMAT and meta["n_points"] == 256
    assert meta["names"] == ["B0", "dB", "p"] and meta["uncertainty"] is True
    assert meta["checkpoint_sha256"] == hashlib.sha256(five_channel_ckpt.read_bytes()).hexdigest()
    x, _ = simulate(SET4_256, 7, np.arange(batch))
    model = load_model(five_channel_ckpt)
    ref_value, ref_sigma = model.predict_with_sigma(x)
    with torch.inference_mode():
        value, sigma = module(x)
    assert value.dtype == torch.float64 and value.shape == (batch, 3)
    span = torch.tensor([100.0, 97.0, 1.8], dtype=torch.float64)
    assert torch.allclose(value / span, ref_value / span, rtol=0, atol=2e-6)
    # the sigmas carry the checkpoint's calibration factors
    assert torch.allclose(sigma, ref_sigma, rtol=1e-5, atol=0)
    assert torch.isfinite(sigma).all() and (sigma > 0).all()
    # and the predictions are not all the same (a constant network would pass the above)
    if batch > 1:
        assert value[:, 0].std() > 0


def test_exported_window_agnostic_model_without_sigma_head(tmp_path):
    sim = SimulationConfig(
        B0=(100, 900), dB=(10, 500), p=(0.05, 2.6), window=(0, 1000), n_points=256,
        log_dB=True, relative_window=True,
    )  # fmt: skip
    ckpt = train_tiny_checkpoint(sim, tmp_path / "rel.ckpt")
    out = tmp_path / "rel.pt"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    module, meta = load_exported(out)
    assert meta["sim"]["relative_window"] is True and meta["uncertainty"] is False
    x, _ = simulate(sim, 3, np.arange(4))
    value, sigma = module(x)
    assert torch.isnan(sigma).all()
    assert torch.allclose(value, load_model(ckpt).predict_physical(x), rtol=0, atol=1e-3)


def test_exported_module_refuses_another_length(five_channel_ckpt, tmp_path):
    out = tmp_path / "m.pt"
    export_torchscript(five_channel_ckpt, out)
    module, _ = load_exported(out)
    with pytest.raises(Exception, match=r"expected shape \(N, 256\)"):
        module(torch.zeros(2, 512))


def test_export_bad_input_is_one_clear_line_and_writes_nothing(five_channel_ckpt, tmp_path, capsys):
    # not a checkpoint
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    out = tmp_path / "out.pt"
    assert main(["export", "--ckpt", str(junk), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "junk.ckpt" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [junk]
    # --out is the checkpoint itself: refused, checkpoint untouched
    before = five_channel_ckpt.read_bytes()
    assert main(["export", "--ckpt", str(five_channel_ckpt), "--out", str(five_channel_ckpt)]) == 2
    assert "would overwrite the checkpoint" in capsys.readouterr().err
    assert five_channel_ckpt.read_bytes() == before
    # an existing good file is replaced only by a complete export
    good = tmp_path / "good.pt"
    export_torchscript(five_channel_ckpt, good)
    kept = good.read_bytes()
    assert main(["export", "--ckpt", str(junk), "--out", str(good)]) == 2
    assert good.read_bytes() == kept
    # a file that is not an export
    with pytest.raises(CheckpointError, match="not a TorchScript file"):
        load_exported(junk)
