"""The real CLI, in process on tiny data: every shipped regime config, the precision
fallback, and the validate / test / predict subcommands on a produced checkpoint."""

from __future__ import annotations

import gc
import math
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    TABLE_HEADER,
    TINY_N_POINTS,
    TINY_N_SPECTRA,
    TINY_SPLIT_SIZES,
    assert_test_summary,
    config,
    tiny_overrides,
)

from dysonian_pl.callbacks import WeightEMA
from dysonian_pl.cli import main, resolve_precision
from dysonian_pl.lightning_cli import _max_time_s
from dysonian_pl.simulate import simulate

FALLBACK = "running '32-true'"


def fit(*args: str):
    cli = main(["fit", *args])
    assert not isinstance(cli, int), f"fit returned exit status {cli}"
    return cli


def _ema(cli) -> WeightEMA:
    return next(cb for cb in cli.trainer.callbacks if isinstance(cb, WeightEMA))


def optimizer(cli) -> torch.optim.Optimizer:
    (opt,) = cli.trainer.optimizers
    return opt


# ---------------------------------------------------------------- help
def _run_module(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dysonian_pl", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_module_help_in_subprocess(tmp_path: Path) -> None:
    """`python -m dysonian_pl --help` exits 0 from any directory (about 15 s: the imports)."""
    proc = _run_module(["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for tool in ("infer", "lsq", "compare", "bench"):
        assert tool in proc.stdout
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in proc.stdout
    assert list(tmp_path.iterdir()) == []  # --help writes nothing


FIT_OPTIONS = ("--data.sim", "--data.sim.n_points", "--data.sim.geometry", "--model.width")


def test_fit_help(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["fit", "--help"])
    assert info.value.code in (0, None)
    out = capsys.readouterr().out
    for option in (*FIT_OPTIONS, "--data.n_spectra", "--config", "--trainer.precision"):
        assert option in out, option


@pytest.mark.slow
def test_fit_help_in_subprocess(tmp_path: Path) -> None:
    proc = _run_module(["fit", "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for option in FIT_OPTIONS:
        assert option in proc.stdout, option
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- precision
@pytest.mark.parametrize(
    ("precision", "accelerator", "cuda", "expected", "note"),
    [
        ("16-mixed", "auto", False, "32-true", True),
        ("16-mixed", "cpu", True, "32-true", True),
        ("bf16-mixed", "auto", False, "32-true", True),
        (16, "auto", False, "32-true", True),
        ("16-mixed", "auto", True, "16-mixed", False),
        ("16-mixed", "gpu", True, "16-mixed", False),
        ("32-true", "cpu", False, "32-true", False),
        ("32-true", "auto", True, "32-true", False),
    ],
)
def test_resolve_precision(precision, accelerator, cuda, expected, note) -> None:
    got, message = resolve_precision(precision, accelerator, cuda)
    assert got == expected
    if note:
        assert message is not None and "\n" not in message
        assert repr(precision) in message and FALLBACK in message
    else:
        assert message is None


# ---------------------------------------------------------------- fit, per regime
def test_fit_default(tiny_run) -> None:
    cli = tiny_run.cli
    assert_test_summary(cli.model.test_summary)
    assert TABLE_HEADER in tiny_run.stdout
    for name in ("B0 (G)", "dB (G)", "| p |"):
        assert name in tiny_run.stdout
    assert FALLBACK not in tiny_run.stderr
    assert cli.trainer.precision == "32-true"
    assert cli.trainer.current_epoch == 2
    assert cli.datamodule.fresh_train is True  # the embedded default trains on fresh spectra
    opt = optimizer(cli)
    assert type(opt) is torch.optim.AdamW
    # the configured lr; the current one has decayed over the budget (CosineBudget)
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(4e-3)
    assert opt.param_groups[0]["weight_decay"] == 0.0  # the weight average instead (ema)
    assert cli.model.hparams.dropout == 0.0
    ema = _ema(cli)
    assert ema.enabled and ema.decay == 0.99 and ema.start_step == 100
    sched = cli.trainer.lr_scheduler_configs[0].scheduler
    assert type(sched).__name__ == "CosineBudget" and sched.max_time_s == 300.0
    assert opt.param_groups[0]["lr"] < opt.param_groups[0]["initial_lr"]
    assert cli.model.sim == cli.datamodule.sim  # linked data.sim -> model.sim
    assert cli.model.sim.n_points == TINY_N_POINTS
    # the printed table carries the summary's numbers
    r2 = cli.model.test_summary["test/B0_R2"]
    assert f"| B0 (G) | {r2:.5f} |" in tiny_run.stdout


def test_fit_baseline(tmp_path: Path, capsys) -> None:
    cli = fit("--config", config("baseline.yaml"), *tiny_overrides(tmp_path, batch_size=None))
    out, err = capsys.readouterr()
    assert TABLE_HEADER in out and FALLBACK not in err
    assert_test_summary(cli.model.test_summary)
    opt = optimizer(cli)
    assert type(opt) is torch.optim.Adam
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(1e-3)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1e-5)
    assert cli.datamodule.batch_size == 16
    assert cli.model.hparams.dropout == pytest.approx(0.2)
    assert cli.trainer.precision == "32-true"
    assert cli.trainer.callbacks  # EarlyStopping patience from the config
    (stop,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "EarlyStopping"]
    assert stop.patience == 20
    assert not _ema(cli).enabled  # not in the seed's recipe


def test_fit_optimized_falls_back_to_fp32_and_runs_two_persistent_workers(
    tmp_path: Path, capsys
) -> None:
    """The one run that keeps the config's 2 persistent DataLoader workers."""
    before = set(multiprocessing.active_children())
    cli = fit(
        "--config", config("optimized.yaml"),
        *tiny_overrides(tmp_path, batch_size=None),
        "--data.num_workers", "2",
        "--keep_workers", "true",
    )  # fmt: skip
    out, err = capsys.readouterr()
    fallback = [line for line in err.splitlines() if FALLBACK in line]
    assert len(fallback) == 1 and "'16-mixed'" in fallback[0]
    assert cli.trainer.precision == "32-true"
    assert TABLE_HEADER in out
    assert_test_summary(cli.model.test_summary)
    assert cli.datamodule.batch_size == 32
    opt = optimizer(cli)
    assert type(opt) is torch.optim.AdamW
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(2e-3)
    loader = cli.datamodule.train_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers is True
    assert loader.pin_memory is False  # pin_memory: true, but no CUDA device trains
    # the workers are gone once the run is
    del cli, loader
    gc.collect()
    leftover = set(multiprocessing.active_children()) - before
    for p in leftover:
        p.join(timeout=10)
    assert not [p for p in leftover if p.is_alive()]


def test_fit_optimized_then_cpu_overlay(tmp_path: Path, capsys) -> None:
    cli = fit(
        "--config", config("optimized.yaml"), "--config", config("cpu.yaml"),
        *tiny_overrides(tmp_path, batch_size=None),
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert FALLBACK not in err  # cpu.yaml asks for 32-true itself
    assert TABLE_HEADER in out
    assert_test_summary(cli.model.test_summary)
    assert cli.trainer.precision == "32-true"
    assert cli.datamodule.batch_size == 8  # cpu.yaml wins over optimized.yaml
    opt = optimizer(cli)
    assert type(opt) is torch.optim.AdamW  # class from optimized.yaml
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(1e-3)  # lr from cpu.yaml
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1e-4)  # from optimized.yaml
    assert cli.trainer.accelerator.__class__.__name__ == "CPUAccelerator"


def test_fit_set_6_sphere(tmp_path: Path, capsys) -> None:
    cli = fit("--config", config("sets/set-6.yaml"), *tiny_overrides(tmp_path))
    out, _ = capsys.readouterr()
    assert TABLE_HEADER in out
    assert_test_summary(cli.model.test_summary)
    sim = cli.model.sim
    assert sim.geometry == "sphere"
    assert sim.window == (3326.0, 3376.0) and sim.B0 == (3345.0, 3360.0)
    assert sim.n_points == TINY_N_POINTS  # the flag after --config wins
    ckpt = torch.load(cli.trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert ckpt["dysonian_pl"]["geometry"] == "sphere"
    assert ckpt["dysonian_pl"]["field_axis"] == [3326.0, 3376.0, TINY_N_POINTS]


def test_fit_pretrained_recipe_on_the_universal_sets(tmp_path: Path, capsys) -> None:
    cli = fit(
        "--config", config("sets/universal-sphere.yaml"), "--config", config("pretrained.yaml"),
        *tiny_overrides(tmp_path),
    )  # fmt: skip
    assert TABLE_HEADER in capsys.readouterr()[0]
    model, trainer = cli.model, cli.trainer
    assert model.uncertainty and model.sim.relative_window and model.sim.geometry == "sphere"
    assert cli.datamodule.n_spectra == TINY_N_SPECTRA
    sched = trainer.lr_scheduler_configs[0].scheduler
    # the recipe's step budget (machine-independent) reaches the trainer and, capped by
    # the tiny run's epochs, the schedule; no time budget
    assert trainer.max_steps == 5600 and _max_time_s(trainer) is None
    assert sched.max_time_s is None
    assert sched.max_steps == trainer.estimated_stepping_batches < 5600
    assert {"test/B0_cover1", "test/p_cover2"} <= set(model.test_summary)
    # the shipped models' recipe predates the default's weight average, dropout 0 and
    # weight decay 0: the reproduce command must keep them as they were trained
    assert not _ema(cli).enabled and model.hparams.dropout == pytest.approx(0.1)
    assert optimizer(cli).param_groups[0]["weight_decay"] == pytest.approx(1e-4)


def test_fit_prior_network_overlay(tmp_path: Path, capsys) -> None:
    cli = fit("--config", config("prior-network.yaml"), *tiny_overrides(tmp_path))
    assert TABLE_HEADER in capsys.readouterr()[0]
    assert cli.model.hparams["arch"] == "prior"
    assert not _ema(cli).enabled
    assert sum(p.numel() for p in cli.model.net.parameters()) == 691_283


def test_fit_narrow_share_overlay_reaches_data_model_and_checkpoint(tmp_path: Path) -> None:
    from dysonian_pl.infer import load_model

    cli = fit(
        "--config", config("sets/universal-plate.yaml"), "--config", config("pretrained.yaml"),
        "--config", config("narrow-share.yaml"), *tiny_overrides(tmp_path),
    )  # fmt: skip
    assert cli.model.sim.dB_narrow == (40.0, 0.1) and cli.datamodule.sim == cli.model.sim
    model = load_model(cli.trainer.checkpoint_callback.best_model_path)
    assert model.sim.dB_narrow == (40.0, 0.1) and model.sim.log_dB


def test_narrow_share_on_a_fixed_window_set_is_one_clear_line(tmp_path: Path, capsys) -> None:
    args = ["fit", "--config", config("sets/set-1.yaml"), "--config", config("narrow-share.yaml")]
    try:
        status = main([*args, *tiny_overrides(tmp_path)])
    except SystemExit as exc:
        status = exc.code
    err = capsys.readouterr().err
    assert status not in (0, None) and not hasattr(status, "trainer")
    assert "data.sim.dB_narrow: needs log_dB: true" in err and "Traceback" not in err
    assert not (tmp_path / "lightning_logs").exists()


def test_bad_option_value_is_one_line_not_a_traceback(tmp_path: Path, capsys) -> None:
    args = ["fit", *tiny_overrides(tmp_path), "--data.sim.n_points", "64"]
    try:
        status = main(args)
    except SystemExit as exc:
        status = exc.code
    err = capsys.readouterr().err
    assert status not in (0, None) and not hasattr(status, "trainer")
    assert "n_points" in err and "128" in err and "64" in err
    assert "Traceback" not in err
    assert not (tmp_path / "lightning_logs").exists()


# ---------------------------------------------------------------- other subcommands
def _eval_args(tiny_run, tmp_path: Path) -> list[str]:
    return ["--ckpt_path", str(tiny_run.best), *tiny_overrides(tmp_path)]


def test_validate_with_checkpoint(tiny_run, tmp_path: Path) -> None:
    cli = main(["validate", *_eval_args(tiny_run, tmp_path)])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    for key in ("val/loss", "val/B0_R2", "val/dB_RMSE", "val/p_MAE"):
        assert math.isfinite(metrics[key]), key
    # the logged numbers are those of the checkpoint's weights on the validation split
    model = cli.model.eval()
    dm = cli.datamodule
    assert len(dm.indices["val"]) == TINY_SPLIT_SIZES["val"]  # one batch of 14
    x, y = simulate(dm.sim, dm.seed, dm.indices["val"])
    with torch.no_grad():
        z = model(x)
    assert metrics["val/loss"] == pytest.approx(model._loss(z, y).item(), rel=1e-5)
    pred = model.scaler.unscale(z)
    for i, name in enumerate(("B0", "dB", "p")):
        mae = (pred[:, i] - y[:, i]).abs().mean().item()
        assert metrics[f"val/{name}_MAE"] == pytest.approx(mae, rel=1e-4), name


def test_test_with_checkpoint_reproduces_fit_summary(tiny_run, tmp_path: Path, capsys) -> None:
    cli = main(["test", *_eval_args(tiny_run, tmp_path)])
    out, _ = capsys.readouterr()
    assert TABLE_HEADER in out
    assert_test_summary(cli.model.test_summary)
    # the same best checkpoint on the same (seeded) test split as the fit's own test
    reference = tiny_run.cli.model.test_summary
    for key, value in reference.items():
        assert cli.model.test_summary[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_predict_with_checkpoint(tiny_run, tmp_path: Path) -> None:
    cli = main(["predict", *_eval_args(tiny_run, tmp_path)])
    batches = cli.trainer.predict_loop.predictions
    pred = torch.cat(batches).numpy()
    assert pred.shape == (TINY_SPLIT_SIZES["test"], 3) and pred.dtype == np.float64
    assert np.isfinite(pred).all()
    dm = cli.datamodule
    x, _ = simulate(dm.sim, dm.seed, dm.indices["test"])
    expected = cli.model.eval().predict_physical(x).numpy()
    np.testing.assert_allclose(pred, expected, rtol=1e-6, atol=1e-6)
    # the checkpoint's weights: the in-memory fit model (best weights) predicts the same
    again = tiny_run.cli.model.eval().predict_physical(x).numpy()
    np.testing.assert_allclose(pred, again, rtol=1e-6, atol=1e-6)


def test_resolve_workers_drops_workers_on_a_small_cpu_only_machine() -> None:
    from dysonian_pl.cli import resolve_workers

    assert resolve_workers(2, on_cuda=False, cores=2)[0] == 0
    assert "2 cores" in resolve_workers(2, on_cuda=False, cores=2)[1]
    assert resolve_workers(2, on_cuda=True, cores=2) == (2, None)
    assert resolve_workers(2, on_cuda=False, cores=16) == (2, None)
    assert resolve_workers(0, on_cuda=False, cores=2) == (0, None)


def test_fit_optimized_on_this_cpu_runs_without_workers_and_says_so(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    cli = fit(
        "--config", config("optimized.yaml"),
        *tiny_overrides(tmp_path, batch_size=None),
        "--data.num_workers", "2",
    )  # fmt: skip
    err = capsys.readouterr().err
    assert sum("data.num_workers 2 requested" in line for line in err.splitlines()) == 1
    assert cli.datamodule.num_workers == 0
    assert cli.datamodule.train_dataloader().num_workers == 0
