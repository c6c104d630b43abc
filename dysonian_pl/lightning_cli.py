"""The LightningCLI of `python -m dysonian_pl` (fit, validate, test, predict).

Kept apart from `cli` so the tools (`infer`, `lsq`, `sets`, `compare`) start without
importing Lightning: `cli.main` imports this module only for a trainer subcommand.
"""

from __future__ import annotations

import os
import sys
import warnings

import lightning as L
import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, Timer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .callbacks import PerformanceMonitor, ResumableCheckpoint, WeightEMA
from .checkpoint_io import AtomicCheckpointIO
from .cli import (
    DEFAULT_CONFIG,
    TRAINER_SUBCOMMANDS,
    check_checkpoint_path,
    find_last_checkpoint,
    resolve_precision,
    resolve_sync_batchnorm,
    resolve_workers,
)
from .data import SpectraDataModule
from .module import DysonianRegressor
from .schedule import CosineBudget


class DysonianCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        # before `perf`: its update then counts as step time, not as waiting for data
        parser.add_lightning_class_args(WeightEMA, "ema")
        parser.add_lightning_class_args(PerformanceMonitor, "perf")
        parser.link_arguments("data.sim", "model.sim", apply_on="instantiate")
        parser.add_argument(
            "--keep_workers",
            type=bool,
            default=False,
            help="run data.num_workers DataLoader workers even on a small CPU-only machine "
            "(by default they are dropped there: they only compete with training)",
        )

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the named checkpoint's hyperparameters while parsing; a bad
        # file must end in one line here, before torch.load raises from inside Lightning
        sub = self.config.get("subcommand")
        if sub:
            check_checkpoint_path(self.config[sub].get("ckpt_path"))
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        trainer = cfg.trainer
        precision, note = resolve_precision(
            trainer.precision, trainer.accelerator, torch.cuda.is_available()
        )
        if note:
            print(note, file=sys.stderr)
            trainer.precision = precision
        sync_bn, note = resolve_sync_batchnorm(
            trainer.get("sync_batchnorm", False), trainer.accelerator, torch.cuda.is_available()
        )
        if note:
            print(note, file=sys.stderr)
            trainer.sync_batchnorm = sync_bn
        on_cuda = torch.cuda.is_available() and str(trainer.accelerator) in ("auto", "gpu", "cuda")
        workers, note = resolve_workers(cfg.data.num_workers, on_cuda, os.cpu_count())
        if note and not cfg.get("keep_workers"):
            print(note, file=sys.stderr)
            cfg.data.num_workers = workers
        if self.subcommand == "fit" and cfg.get("ckpt_path") == "last":
            self._resume_last(cfg)

    @staticmethod
    def _resume_last(cfg) -> None:
        """`--ckpt_path last`: continue the newest run in its own version folder.

        Lightning alone would look for last.ckpt in a new version folder, find nothing and
        start over; here the newest ``last.ckpt`` is used and TensorBoard keeps logging
        into the same run, so its curves continue where they stopped.
        """
        root = cfg.trainer.default_root_dir or "."
        found = find_last_checkpoint(root)
        if found is None:
            print(
                f"dysonian_pl: no last.ckpt under {root}/lightning_logs; starting a new run",
                file=sys.stderr,
            )
            cfg.ckpt_path = None
            return
        ckpt, version = found
        check_checkpoint_path(ckpt)
        cfg.ckpt_path = str(ckpt)
        if cfg.trainer.logger in (None, True):
            cfg.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=str(root), name="lightning_logs", version=version),
            )
        print(f"dysonian_pl: resuming from {ckpt}", file=sys.stderr)

    @staticmethod
    def configure_optimizers(lightning_module, optimizer, lr_scheduler=None):
        lightning_module.scale_learning_rate(optimizer)
        if isinstance(lr_scheduler, CosineBudget):
            trainer = lightning_module._trainer
            if trainer is not None:  # (bench builds models without fitting them)
                lr_scheduler.bind(_max_time_s(trainer), trainer.estimated_stepping_batches)
            lr_scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step"},
            }
        return LightningCLI.configure_optimizers(lightning_module, optimizer, lr_scheduler)

    def instantiate_trainer(self, **kwargs):
        """Checkpoints are written atomically unless the config names its own CheckpointIO."""
        trainer = super().instantiate_trainer(**kwargs)
        connector = trainer._accelerator_connector
        if (
            connector.checkpoint_io is None
            or type(connector.checkpoint_io).__name__ == "TorchCheckpointIO"
        ):
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def after_fit(self) -> None:
        """Evaluate the best checkpoint on the held-out test split and print the table."""
        if self.trainer.interrupted:
            return
        best = (
            self.trainer.checkpoint_callback.best_model_path
            if self.trainer.checkpoint_callback
            else ""
        )
        self.trainer.test(
            self.model, datamodule=self.datamodule, ckpt_path=best or None, weights_only=False
        )


def _max_time_s(trainer: L.Trainer) -> float | None:
    """The trainer's `max_time` in seconds (None when it has none)."""
    for callback in trainer.callbacks:
        if isinstance(callback, Timer):
            return callback._duration
    return None


def trainer_main(args: list[str] | None) -> DysonianCLI:
    # parse errors raise (argparse.ArgumentError) instead of printing the whole usage;
    # `main` reports them in one line
    per_command = {"default_config_files": [str(DEFAULT_CONFIG)], "exit_on_error": False}
    with warnings.catch_warnings():
        # `main` passes sys.argv[1:] itself (less --verbose); not the mix Lightning warns of
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return DysonianCLI(
            DysonianRegressor,
            SpectraDataModule,
            args=args,
            parser_kwargs={
                "exit_on_error": False,
                **{c: per_command for c in TRAINER_SUBCOMMANDS},
            },
            trainer_defaults={"use_distributed_sampler": False},
            save_config_kwargs={"overwrite": True},
        )
