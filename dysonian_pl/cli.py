"""`python -m dysonian_pl`: LightningCLI (fit, validate, test, predict) plus the project's own tools.

A run is a YAML file: the embedded default (``dysonian_pl/configs/default.yaml``) is
read first, then ``--config`` files left to right, then command-line flags.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, Timer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .atomic import AtomicCheckpointIO
from .callbacks import PerformanceMonitor, ResumableCheckpoint
from .data import SpectraDataModule
from .module import DysonianRegressor
from .schedule import CosineBudget

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"
TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")
HALF_PRECISIONS = {"16", "16-mixed", "16-true", "bf16", "bf16-mixed", "bf16-true", 16}


def resolve_precision(
    precision, accelerator: str, cuda_available: bool
) -> tuple[object, str | None]:
    """The precision to run and, when it differs from the request, one line saying why.

    Half precision helps only on CUDA. On a CPU, Lightning turns ``16-mixed`` into
    ``bf16-mixed``, and a CPU without bf16/fp16 convolution kernels then trains about
    35 times slower than fp32 (measured on a 2-core AVX2 machine), so it runs ``32-true``.
    """
    on_cuda = cuda_available and str(accelerator) in ("auto", "gpu", "cuda")
    if precision in HALF_PRECISIONS and not on_cuda:
        return "32-true", (
            f"dysonian_pl: precision {precision!r} requested but no CUDA device will train; "
            "running '32-true' (this CPU has no fast half-precision convolution path)"
        )
    return precision, None


def resolve_sync_batchnorm(
    sync_batchnorm, accelerator: str, cuda_available: bool
) -> tuple[bool, str | None]:
    """Whether to convert BatchNorm to SyncBatchNorm and, when a request is dropped, why.

    torch's SyncBatchNorm works only on CUDA modules; DDP on CPU processes (gloo) would
    stop at start-up with "SyncBatchNorm layers only work with GPU modules", so there
    every process keeps its own batch statistics.
    """
    on_cuda = cuda_available and str(accelerator) in ("auto", "gpu", "cuda")
    if sync_batchnorm and not on_cuda:
        return False, (
            "dysonian_pl: sync_batchnorm needs CUDA devices (torch's SyncBatchNorm is "
            "GPU-only); running with per-process BatchNorm statistics"
        )
    return bool(sync_batchnorm), None


#: Machines with at most this many cores and no CUDA train without DataLoader workers.
FEW_CORES = 4


def resolve_workers(num_workers: int, on_cuda: bool, cores: int | None) -> tuple[int, str | None]:
    """DataLoader workers to run and, when a request is dropped, why.

    Without a GPU the training threads already use every core; on a small CPU, worker
    processes only compete with them (2-core machine: workers and 2-process DDP did not
    speed training up; spectra cost ~0.1 ms to simulate against several ms to train on).
    """
    if num_workers > 0 and not on_cuda and (cores or 1) <= FEW_CORES:
        return 0, (
            f"dysonian_pl: data.num_workers {num_workers} requested but no CUDA device trains "
            f"and this machine has {cores} cores; loading in the training process "
            "(workers would only compete with the training threads)"
        )
    return num_workers, None


def find_last_checkpoint(root: str | Path) -> tuple[Path, int] | None:
    """The newest run's ``last.ckpt`` under ``root/lightning_logs/version_N/checkpoints``."""
    found = []
    for ckpt in Path(root).glob("lightning_logs/version_*/checkpoints/last.ckpt"):
        try:
            found.append((int(ckpt.parent.parent.name.removeprefix("version_")), ckpt))
        except ValueError:
            continue
    if not found:
        return None
    version, ckpt = max(found)
    return ckpt, version


#: `--ckpt_path` values that Lightning resolves itself rather than naming a file.
_LIGHTNING_CKPT_WORDS = ("last", "best", "hpc", "registry")


def check_checkpoint_path(ckpt_path) -> None:
    """A named `--ckpt_path` file must be a dysonian_pl checkpoint this code can read.

    Checked before anything is built, with safe loading (``weights_only=True``), so a
    missing, empty, foreign, corrupt or too new file ends in one clear line
    (`infer.CheckpointError`) instead of a traceback from deep inside Lightning.
    Whether its field axis and geometry fit the run's data is checked when the model
    loads it (`DysonianRegressor.on_load_checkpoint`).
    """
    if not ckpt_path or str(ckpt_path) in _LIGHTNING_CKPT_WORDS:
        return
    from .infer import CheckpointError, read_checkpoint

    if not Path(ckpt_path).is_file():
        raise CheckpointError(
            f"--ckpt_path {ckpt_path}: file not found (expected a .ckpt written by "
            "dysonian_pl training, or 'last' to resume the newest run)"
        )
    read_checkpoint(ckpt_path)


class DysonianCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
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


def _trainer_main(args: list[str] | None) -> DysonianCLI:
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


#: Tools beside the trainer subcommands: name -> (module, one-line help). Each module has
#: ``main(argv: list[str]) -> int``.
TOOLS = {
    "infer": (
        "dysonian_pl.infer",
        "read spectrometer files, predict B0, dB, p; CSV, JSON, overlays",
    ),
    "lsq": ("dysonian_pl.fitting", "classical least-squares fit of spectrometer files"),
    "compare": (
        "dysonian_pl.compare",
        "CNN vs least squares on held-out simulated spectra and real files",
    ),
    "bench": ("dysonian_pl.bench", "measure the training regimes and inference speed"),
    "sets": (
        "dysonian_pl.evaluate",
        "a checkpoint on every prior-work set: MAE, sigma coverage, reliability",
    ),
}


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (a file, an option), reported in one line."""
    # Lightning's own check of a Trainer option (e.g. max_epochs -5) names option and value
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from .params import ConfigError
    from .readers import SpectrumFileError

    errors: list[type[BaseException]] = [
        ConfigError,
        SpectrumFileError,
        FileNotFoundError,
        MisconfigurationException,
    ]
    try:
        from .infer import CheckpointError

        errors.append(CheckpointError)
    except ImportError:
        pass
    return tuple(errors)


def main(args: list[str] | None = None):
    """Run a tool or a LightningCLI subcommand.

    Bad input (a config value, a spectrometer file, a checkpoint) ends with one line
    ``error: ...`` on stderr and exit status 2; ``--verbose`` shows the traceback.
    """
    argv = list(sys.argv[1:] if args is None else args)
    verbose = "--verbose" in argv
    if verbose and (not argv or argv[0] not in TOOLS):
        argv.remove("--verbose")  # the tools take --verbose themselves
    try:
        if argv and argv[0] in TOOLS:
            import importlib

            module = importlib.import_module(TOOLS[argv[0]][0])
            return module.main(argv[1:])
        if not argv or argv[0] in ("-h", "--help"):
            tools = "\n".join(f"  {name:<9} {text}" for name, (_, text) in TOOLS.items())
            print(f"dysonian_pl tools (python -m dysonian_pl TOOL --help):\n{tools}\n")
        return _trainer_main(argv)
    except user_errors() as err:
        if verbose:
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except argparse.ArgumentError as err:  # an option the parser rejects (jsonargparse)
        if verbose:
            raise
        sub = argv[0] if argv and argv[0] in TRAINER_SUBCOMMANDS else ""
        hint = f"python -m dysonian_pl {sub} --help".replace("  ", " ")
        print(f"error: {_one_line(err)} (options: {hint})", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


if __name__ == "__main__":
    main()
