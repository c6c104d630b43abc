"""Shared helpers for the tests: tiny CLI runs on CPU, written only under pytest's tmp dirs.

The machine the suite runs on has two shared cores; with two intra-op threads a busy
neighbour makes every convolution wait on an OpenMP barrier (a tiny fit went from
5 s to 20 s), so the test process uses one thread. Numbers do not depend on it.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"

#: The tiny data set every CLI test trains on: 90 spectra split 70/15/15 -> 63 train,
#: 14 val, 13 test (whatever split the config under test asks for).
TINY_N_SPECTRA = 90
TINY_N_POINTS = 256
TINY_SPLIT_SIZES = {"train": 63, "val": 14, "test": 13}
METRIC_KEYS = {f"test/{n}_{k}" for n in ("B0", "dB", "p") for k in ("R2", "RMSE", "MAE")}
TABLE_HEADER = "| parameter | R2 | RMSE | MAE |"


def config(name: str) -> str:
    """Absolute path of a file in configs/, so tests run from any working directory."""
    path = CONFIG_DIR / name
    assert path.is_file(), path
    return str(path)


def tiny_overrides(
    root: Path, *, epochs: int = 1, workers: int = 0, batch_size: int | None = 16
) -> list[str]:
    """Command-line flags that shrink any regime to a few seconds on one CPU core.

    They come after any --config, so they win. ``batch_size=None`` keeps the config's.
    """
    args = [
        "--data.sim.n_points", str(TINY_N_POINTS),
        "--data.n_spectra", str(TINY_N_SPECTRA),
        "--data.split", "[0.7, 0.15, 0.15]",
        "--model.width", "8",
        "--trainer.max_epochs", str(epochs),
        "--trainer.default_root_dir", str(root),
        "--data.cache_dir", str(root / "cache"),
        "--data.num_workers", str(workers),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    if batch_size is not None:
        args += ["--data.batch_size", str(batch_size)]
    return args


def perturb_batch_norm(net: torch.nn.Module) -> None:
    """Batch-norm statistics and affine weights far from their defaults (in place), so
    that folding them into the convolutions is really tested."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def assert_test_summary(summary: dict[str, float]) -> None:
    assert set(summary) == METRIC_KEYS, sorted(summary)
    for key, value in summary.items():
        assert math.isfinite(value), (key, value)
        if key.endswith(("_RMSE", "_MAE")):
            assert value >= 0, (key, value)
    # RMSE >= MAE for any data (Jensen), per parameter
    for n in ("B0", "dB", "p"):
        assert summary[f"test/{n}_RMSE"] >= summary[f"test/{n}_MAE"] * (1 - 1e-6)


@dataclass
class TinyRun:
    """One finished `fit` of the embedded default config (2 epochs), reused by several tests."""

    cli: object
    root: Path
    log_dir: Path
    ckpt_dir: Path
    best: Path
    last: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    from dysonian_pl.cli import main

    root = tmp_path_factory.mktemp("tiny_run")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        cli = main(["fit", *tiny_overrides(root, epochs=2)])
    log_dir = Path(cli.trainer.log_dir)
    best = Path(cli.trainer.checkpoint_callback.best_model_path)
    return TinyRun(
        cli=cli,
        root=root,
        log_dir=log_dir,
        ckpt_dir=best.parent,
        best=best,
        last=best.parent / "last.ckpt",
        stdout=out.getvalue(),
        stderr=err.getvalue(),
    )


def train_tiny_checkpoint(sim, path: Path, seed: int = 0, **model_kwargs) -> Path:
    """A tiny checkpoint written by Lightning after two optimiser steps from `seed`."""
    import lightning as L

    from dysonian_pl.data import SpectraDataModule
    from dysonian_pl.module import DysonianRegressor

    # seeded: the same tiny model whichever tests ran before (their draws move the global
    # generators; an unseeded model read the ten slices of a 2D file nearly alike in one
    # order, and a batch of 11 apart from one by more than float32 rounding in another)
    L.seed_everything(seed, verbose=False)
    model = DysonianRegressor(sim=sim, width=8, **model_kwargs)
    dm = SpectraDataModule(sim=sim, n_spectra=60, batch_size=16, cache_dir=None)
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
    )
    trainer.fit(model, dm)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def rel_ckpt(tmp_path_factory) -> Path:
    """A tiny window-agnostic checkpoint with the uncertainty head."""
    from dysonian_pl.params import SimulationConfig

    sim = SimulationConfig(
        B0=(100, 900), dB=(10, 500), p=(0.05, 4), window=(0, 1000), n_points=256,
        log_dB=True, relative_window=True,
    )  # fmt: skip
    return train_tiny_checkpoint(
        sim, tmp_path_factory.mktemp("ckpt") / "rel.ckpt", uncertainty=True
    )
