"""`ema` (callbacks.WeightEMA): the averaged weights are what is validated, checkpointed,
tested and left in the model; a run shorter than `start_step` is left as trained."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from dysonian_pl.callbacks import WeightEMA
from dysonian_pl.cli import main
from dysonian_pl.params import ConfigError

STEPS_PER_EPOCH = 4  # 63 training spectra in batches of 16
# enough validation spectra (>= 20) for the uncertainty head's factors to be set
BIG_VAL = ("--data.split", "[0.5, 0.35, 0.15]")


def _fit(root: Path, *extra: str, epochs: int = 2):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        cli = main(["fit", *tiny_overrides(root, epochs=epochs), *extra])
    assert not isinstance(cli, int), out.getvalue()[-2000:]
    last = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    return cli, torch.load(last, map_location="cpu", weights_only=True), out.getvalue()


def _ema(cli) -> WeightEMA:
    return next(cb for cb in cli.trainer.callbacks if isinstance(cb, WeightEMA))


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"decay": 1.0}, "ema.decay"),
        ({"decay": 0.0}, "ema.decay"),
        ({"start_step": -1}, "ema.start_step"),
    ],
)
def test_bad_settings_name_the_option(kwargs, option):
    with pytest.raises(ConfigError, match=option):
        WeightEMA(**kwargs)


def test_averaged_weights_are_checkpointed_and_left_in_the_model(tmp_path):
    start = 3
    cli, ckpt, _ = _fit(
        tmp_path, "--ema.start_step", str(start), "--ema.decay", "0.5",
        "--model.uncertainty", "true", *BIG_VAL,
    )  # fmt: skip
    steps = ckpt["global_step"]
    assert steps == 2 * 3  # 45 training spectra: 3 batches per epoch
    # steps start .. steps - 1 (0-based) were averaged, the first one by copying
    assert int(ckpt["averaging_state"]["n_averaged"]) == steps - start
    avg, cur = ckpt["state_dict"], ckpt["current_model_state"]
    weights = [k for k in avg if k.startswith("net.") and avg[k].is_floating_point()]
    assert weights and any(not torch.equal(avg[k], cur[k]) for k in weights)
    # the uncertainty factors were set by validating the averaged weights: copied, not averaged
    assert torch.equal(avg["sigma_scale"], cur["sigma_scale"])
    assert not torch.equal(avg["sigma_scale"], torch.ones(3, dtype=torch.float64))
    # after training the module holds the average (the checkpoint's state_dict)
    module = cli.model.state_dict()
    for k in weights:
        torch.testing.assert_close(module[k], avg[k], rtol=0, atol=0)


def test_a_run_shorter_than_start_step_keeps_its_trained_weights(tmp_path):
    cli, ckpt, out = _fit(tmp_path)  # default start_step 100 > 8 steps
    assert "averaging_state" not in ckpt and "current_model_state" not in ckpt
    assert not _ema(cli)._active()
    module = cli.model.state_dict()
    for k, v in ckpt["state_dict"].items():
        torch.testing.assert_close(module[k], v, rtol=0, atol=0)
    assert "WeightAveraging" not in out  # no warning about a missing average


def test_disabled_adds_nothing(tmp_path):
    cli, ckpt, _ = _fit(tmp_path, "--ema.enabled", "false", "--ema.start_step", "0")
    ema = _ema(cli)
    assert ema._average_model is None and not ema.should_update(step_idx=5)
    assert "averaging_state" not in ckpt and "current_model_state" not in ckpt


def test_resume_continues_the_average(tmp_path):
    args = ("--ema.start_step", "0", "--ema.decay", "0.5")
    _, c1, _ = _fit(tmp_path, *args, epochs=2)
    cli, c2, _ = _fit(tmp_path, *args, "--ckpt_path", "last", epochs=4)
    assert c2["global_step"] == 4 * STEPS_PER_EPOCH
    assert int(c1["averaging_state"]["n_averaged"]) == 2 * STEPS_PER_EPOCH
    assert int(c2["averaging_state"]["n_averaged"]) == 4 * STEPS_PER_EPOCH
    assert _ema(cli)._active()
