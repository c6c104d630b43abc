"""`python -m dysonian_pl`: LightningCLI (fit, validate, test, predict) plus the project's own tools.

A run is a YAML file: the embedded default (``dysonian_pl/configs/default.yaml``) is
read first, then ``--config`` files left to right, then command-line flags.

Importing this module imports neither torch nor Lightning: the tools start fast, and
the LightningCLI (`lightning_cli.DysonianCLI`) is imported for a trainer subcommand only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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


def _trainer_main(args: list[str] | None):
    """Run LightningCLI (`lightning_cli.trainer_main`); Lightning is imported only here."""
    from .lightning_cli import trainer_main

    return trainer_main(args)


def __getattr__(name: str):
    # the Lightning-bound names, imported on first use (see the module docstring)
    if name in ("DysonianCLI", "_max_time_s"):
        from . import lightning_cli

        return getattr(lightning_cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "calibrate": (
        "dysonian_pl.calibration",
        "fit a window-agnostic model's sigma calibration as infer reads spectra",
    ),
    "ensemble": (
        "dysonian_pl.ensemble",
        "make an ensemble of window-agnostic models (then calibrate it)",
    ),
    "export": (
        "dysonian_pl.export",
        "write a checkpoint as a TorchScript file (fast prediction without Lightning)",
    ),
}


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (a file, an option), reported in one line."""
    from .params import ConfigError
    from .readers import SpectrumFileError

    errors: list[type[BaseException]] = [ConfigError, SpectrumFileError, FileNotFoundError]
    # Lightning's own check of a Trainer option (e.g. max_epochs -5) names option and value;
    # and `infer.CheckpointError`. Each only from a module already loaded (nothing else can
    # have raised it), so a tool's error does not import Lightning or torch
    lightning_errors = sys.modules.get("lightning.fabric.utilities.exceptions")
    if lightning_errors is not None:
        errors.append(lightning_errors.MisconfigurationException)
    infer = sys.modules.get(f"{__package__}.infer")
    if infer is not None:
        errors.append(infer.CheckpointError)
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
