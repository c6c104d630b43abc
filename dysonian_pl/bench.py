"""`python -m dysonian_pl bench`: the training regimes side by side in one process, plus inference speed.

Every regime (``NAME=CONFIG[,CONFIG...]``) is built through the real CLI parser
(`DysonianCLI` with ``run=False``), so its model, data module, precision (after the
CLI's CPU fallback), optimizer, gradient clipping and cuDNN setting are exactly what
``fit`` would use. All regimes must describe the same data (simulation config, seed,
split, fresh/fixed training set); batch size, workers, pinning and so on may differ.

Training is interleaved: R rounds, and in each round every regime trains for the
same wall time, the order alternating (A, B then B, A), so drift of a shared,
contended machine falls on all regimes alike. After each round every regime is
evaluated (untimed, eval mode) on one fixed validation set simulated from indices
10**9 + arange(n_val), which no training index reaches. The per-step loop mirrors
Lightning's: fetch (timed: data wait), move to the device, forward and the module's
own loss under the regime's precision, backward, gradient clipping, optimizer step,
and the update of the weight average where the regime's `ema` is enabled (the
default's; evaluation and inference then use the average, as `fit` does).
A round ends at the first step that finishes past its time, so rounds overrun by up to
one step; throughput and the curves use the measured times. CUDA is synchronised at
round boundaries only (as in ``fit``, steps overlap with the next fetch). The
learning rate follows a configured `CosineBudget` (stepped every step, decaying over
the regime's own total training time); other schedulers are not stepped (they react
to epoch-level validation in ``fit``). Time to a target
is resolved to one round. A regime with DataLoader workers keeps its iterator across
rounds, so its workers prefetch a couple of batches while another regime trains.

Then each trained model (and ``--ckpt``) is timed for inference as `infer` runs it
(eval mode, batch norm folded into the convolutions): batched spectra/s and
single-spectrum latency, eager and TorchScript-traced.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REGIMES = ("baseline=configs/baseline.yaml", "optimized=configs/optimized.yaml")
#: The prior work's set-4 MAE on held-out simulated spectra (physics.md): B0 (G), dB (G), p.
PRIOR_SET4_MAE = (0.56, 0.77, 0.022)
VAL_INDEX_OFFSET = 10**9
INFER_INDEX_OFFSET = 2 * 10**9
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


class BenchError(Exception):
    """A user error; the message is one line and the exit status 2."""


# ---- pure helpers (unit-tested) ---------------------------------------------------------


def round_order(names: Sequence[str], r: int) -> list[str]:
    """Training order in round `r` (0-based): given order in even rounds, reversed in odd."""
    return list(names) if r % 2 == 0 else list(reversed(names))


def time_to_target(
    curve: Iterable[tuple[float, Sequence[float]]], target: Sequence[float]
) -> float | None:
    """First cumulative training time whose MAEs are all <= `target`; None if never.

    `curve` holds (cumulative training seconds, MAE per parameter) in time order.
    """
    for t, maes in curve:
        if len(maes) != len(target):
            raise ValueError(f"{len(maes)} MAEs against a target of {len(target)}")
        if all(m <= g for m, g in zip(maes, target, strict=True)):
            return float(t)
    return None


def plan_rounds(minutes: float, n_regimes: int, round_seconds: float) -> tuple[int, float]:
    """(rounds, seconds per round per regime) for a total training budget of `minutes`."""
    per_regime = minutes * 60.0 / n_regimes
    rounds = max(1, round(per_regime / round_seconds))
    return rounds, per_regime / rounds


def parse_target(text: str, what: str = "--target") -> tuple[float, float, float]:
    parts = [s.strip() for s in str(text).split(",")]
    try:
        vals = tuple(float(s) for s in parts)
    except ValueError:
        raise BenchError(f"{what}: expected three numbers 'B0,dB,p' (got {text!r})") from None
    if len(vals) != 3 or not all(math.isfinite(v) and v > 0 for v in vals):
        raise BenchError(f"{what}: expected three positive numbers 'B0,dB,p' (got {text!r})")
    return vals  # type: ignore[return-value]


def parse_target2(text: str, target: Sequence[float]) -> tuple[float, float, float]:
    """Three numbers, or ``Kx``: K times `target`."""
    s = str(text).strip()
    if s.lower().endswith("x"):
        try:
            k = float(s[:-1])
        except ValueError:
            raise BenchError(f"--target2: expected 'Kx' or 'B0,dB,p' (got {text!r})") from None
        if not (math.isfinite(k) and k > 0):
            raise BenchError(f"--target2: factor must be positive (got {text!r})")
        return tuple(k * t for t in target)  # type: ignore[return-value]
    return parse_target(s, "--target2")


def parse_set(item: str) -> str:
    """``KEY=VALUE`` -> ``--KEY=VALUE`` for the CLI parser."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise BenchError(
            f"--set: expected KEY=VALUE with a dotted key, e.g. model.width=16 (got {item!r})"
        )
    return f"--{key}={value}"


def resolve_config(path: str, cwd: Path | None = None) -> Path:
    """A config file relative to the working folder, else to the repository."""
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [(cwd or Path.cwd()) / p, REPO / p]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise BenchError(f"regime config file not found: {path!r}")


def parse_regime(spec: str, cwd: Path | None = None) -> tuple[str, list[Path]]:
    """``NAME=CONFIG[,CONFIG...]`` (or a bare path, named by its stem) -> (name, files)."""
    name, sep, files = spec.partition("=")
    if not sep:
        name, files = Path(spec).stem, spec
    name = name.strip()
    if not _NAME.match(name):
        raise BenchError(
            f"regime: bad name {name!r} in {spec!r} (expected NAME=CONFIG[,CONFIG...])"
        )
    paths = [f.strip() for f in files.split(",") if f.strip()]
    if not paths:
        raise BenchError(f"regime {name!r}: no config file given in {spec!r}")
    return name, [resolve_config(f, cwd) for f in paths]


# ---- machine facts -----------------------------------------------------------------------


def _worker_pss_mb(pid: int) -> float:
    """Proportional set size of a process (MB): shared pages split among their users."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return float(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return float("nan")


def _proc_status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS/VmHWM (MB) of a process from /proc; empty where unreadable."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = float(rest.split()[0]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return out


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "processor": platform.processor(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(AttributeError, OSError):
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(AttributeError, OSError):
        info["load_average_start"] = list(os.getloadavg())
    return info


def versions() -> dict[str, str]:
    import lightning
    import torchmetrics

    from . import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torchmetrics": torchmetrics.__version__,
        "numpy": np.__version__,
        "dysonian_pl": __version__,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- regimes ------------------------------------------------------------------------------

_MIXED = {"16": torch.float16, "16-mixed": torch.float16, "bf16": torch.bfloat16,
          "bf16-mixed": torch.bfloat16}  # fmt: skip
_FULL = {"32", "32-true"}


@dataclass
class Regime:
    name: str
    files: list[Path]
    overrides: list[str]
    model: Any
    dm: Any
    loader: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    precision: str
    requested_precision: str
    autocast_dtype: torch.dtype | None
    scaler: Any
    benchmark: bool
    clip_val: float | None
    clip_alg: str
    config: dict[str, Any]
    iterator: Any = None
    epoch: int = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    #: the weight average of `fit`'s `ema` (None: off), updated from step `ema_start` on
    ema: Any = None
    ema_start: int = 0
    steps_done: int = 0

    def trained(self):
        """The module `fit` would leave: the weight average once it holds an update."""
        if self.ema is not None and int(self.ema.n_averaged) > 0:
            return self.ema.module
        return self.model

    @property
    def pinned(self) -> bool:
        return bool(self.loader.pin_memory)

    def next_batch(self):
        if self.iterator is None:
            self.iterator = iter(self.loader)
        try:
            return next(self.iterator)
        except StopIteration:  # end of an epoch: what the fit loop does at the next one
            self.epoch += 1
            sampler = getattr(self.loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)
            self.iterator = iter(self.loader)
            return next(self.iterator)

    def worker_pids(self) -> list[int]:
        return [w.pid for w in getattr(self.iterator, "_workers", []) or [] if w.pid]

    def close(self) -> None:
        it, self.iterator = self.iterator, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            with contextlib.suppress(Exception):
                it._shutdown_workers()


def _last_error_line(text: str) -> str:
    """The parser's complaint on one line: its last 'error:' line, the next line and the
    'Given value' line (jsonargparse spreads one error over several lines)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    starts = [i for i, ln in enumerate(lines) if ln.lower().startswith("error:")]
    if not starts:
        return lines[-1] if lines else "invalid configuration"
    i = starts[-1]
    parts = lines[i : i + 2] + [ln for ln in lines[i + 2 :] if ln.startswith("Given value:")]
    msg = " ".join(parts)
    return msg if len(msg) <= 300 else msg[:297] + "..."


def _user_errors() -> tuple[type[BaseException], ...]:
    """The CLI's own 'bad input' exceptions (e.g. Lightning's MisconfigurationException)."""
    from . import cli

    try:
        return tuple(cli.user_errors())
    except Exception:  # noqa: BLE001 - an older cli without the list
        return ()


def _optimizer_from(out: Any) -> torch.optim.Optimizer:
    """The (first) optimizer from whatever `configure_optimizers` returned."""
    if isinstance(out, torch.optim.Optimizer):
        return out
    if isinstance(out, dict):
        return _optimizer_from(out["optimizer"])
    if isinstance(out, (list, tuple)) and out:
        return _optimizer_from(out[0])
    raise BenchError(f"configure_optimizers returned no optimizer ({type(out).__name__})")


def _scheduler_from(out: Any):
    """The step-interval `CosineBudget` of `configure_optimizers`' output, if any."""
    from .schedule import CosineBudget

    if isinstance(out, dict):
        cfg = out.get("lr_scheduler")
        sched = cfg.get("scheduler") if isinstance(cfg, dict) else cfg
        if isinstance(sched, CosineBudget):
            return sched
    return None


def build_regime(name: str, files: list[Path], overrides: list[str]) -> Regime:
    from .cli import DEFAULT_CONFIG, DysonianCLI
    from .data import SpectraDataModule
    from .module import DysonianRegressor
    from .params import ConfigError

    class _BenchCLI(DysonianCLI):
        """DysonianCLI unchanged, except that it remembers the precision asked for."""

        def before_instantiate_classes(self) -> None:
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            self.requested_precision = cfg.trainer.precision
            super().before_instantiate_classes()

    args = [f"--config={f}" for f in files] + ["--trainer.logger=false", *overrides]
    buf = io.StringIO()
    ok = False
    try:
        with contextlib.redirect_stderr(buf), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*configure_optimizers.*overridden.*")
            warnings.filterwarnings("ignore", message=".*args parameter is intended to run.*")
            cli = _BenchCLI(
                DysonianRegressor,
                SpectraDataModule,
                args=args,
                run=False,
                parser_kwargs={"default_config_files": [str(DEFAULT_CONFIG)]},
                trainer_defaults={"use_distributed_sampler": False},
            )
        ok = True
    except SystemExit:
        raise BenchError(f"regime {name!r}: {_last_error_line(buf.getvalue())}") from None
    except (ConfigError, ValueError, TypeError, argparse.ArgumentError, *_user_errors()) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BenchError(f"regime {name!r}: {msg}") from None
    finally:
        if ok:  # the CLI's own notes (e.g. the precision fallback) still reach the user
            sys.stderr.write(buf.getvalue())

    cfg = cli.config
    trainer = cli.trainer
    device = trainer.strategy.root_device
    precision = str(cfg.trainer.precision)
    if precision in _MIXED:
        dtype: torch.dtype | None = _MIXED[precision]
    elif precision in _FULL:
        dtype = None
    else:
        raise BenchError(f"regime {name!r}: precision {precision!r} is not supported by bench")
    # (without CUDA the CLI has already turned half precision into 32-true)
    scaler = (
        torch.amp.GradScaler("cuda") if dtype == torch.float16 and device.type == "cuda" else None
    )

    model = cli.model.to(device)
    dm = cli.datamodule
    dm.trainer = trainer  # the loader asks the trainer for the device (pinning) and rank
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    configured = model.configure_optimizers()
    optimizer = _optimizer_from(configured)
    scheduler = _scheduler_from(configured)

    ema_cfg = cfg.get("ema")
    ema = None
    if ema_cfg is not None and ema_cfg.get("enabled"):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(
            model, use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(float(ema_cfg.decay))
        )
    opt_cfg = cfg.optimizer
    init = dict(opt_cfg.init_args) if opt_cfg and opt_cfg.init_args else {}
    group = optimizer.param_groups[0]
    config = {
        "config_files": [str(f) for f in files],
        "overrides": list(overrides),
        "accelerator": str(cfg.trainer.accelerator),
        "device": str(device),
        "precision_requested": str(cli.requested_precision),
        "precision": precision,
        "benchmark": bool(cfg.trainer.benchmark),
        "gradient_clip_val": cfg.trainer.gradient_clip_val,
        "gradient_clip_algorithm": str(cfg.trainer.gradient_clip_algorithm or "norm"),
        "batch_size": dm.batch_size,
        "num_workers": dm.num_workers,
        "pin_memory": bool(loader.pin_memory),
        "persistent_workers": bool(loader.persistent_workers),
        "optimizer": type(optimizer).__module__ + "." + type(optimizer).__name__,
        "lr": group.get("initial_lr", group.get("lr")),  # before any warm-up or decay
        "weight_decay": group.get("weight_decay"),
        "betas": list(group["betas"]) if "betas" in group else None,
        "optimizer_init_args": {k: _plain(v) for k, v in init.items()},
        "lr_scheduler": (
            "CosineBudget over the regime's training time"
            if scheduler is not None
            else "not stepped"
        ),
        "arch": model.hparams["arch"],
        "width": model.hparams["width"],
        "dropout": model.hparams["dropout"],
        "ema": (
            {"decay": float(ema_cfg.decay), "start_step": int(ema_cfg.start_step)}
            if ema is not None
            else None
        ),
        "fresh_train": dm.fresh_train,
        "n_spectra": dm.n_spectra,
        "seed": dm.seed,
        "seed_everything": _plain(cfg.get("seed_everything")),
    }
    return Regime(
        name=name,
        files=files,
        overrides=overrides,
        model=model,
        dm=dm,
        loader=loader,
        optimizer=optimizer,
        scheduler=scheduler,
        device=device,
        precision=precision,
        requested_precision=str(cli.requested_precision),
        autocast_dtype=dtype,
        scaler=scaler,
        benchmark=bool(cfg.trainer.benchmark),
        clip_val=cfg.trainer.gradient_clip_val,
        clip_alg=str(cfg.trainer.gradient_clip_algorithm or "norm"),
        config=config,
        ema=ema,
        ema_start=int(ema_cfg.start_step) if ema is not None else 0,
    )


def _plain(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)


def _data_signature(reg: Regime) -> dict[str, Any]:
    dm = reg.dm
    return {
        "sim": dm.sim.to_dict(),
        "seed": dm.seed,
        "n_spectra": dm.n_spectra,
        "split": list(dm.split),
        "fresh_train": dm.fresh_train,
    }


# ---- training and evaluation --------------------------------------------------------------


def train_round(reg: Regime, seconds: float) -> dict[str, Any]:
    """Train `reg` for `seconds` of wall time (at least one step), as Trainer.fit would."""
    model, opt, dev = reg.model, reg.optimizer, reg.device
    cuda = dev.type == "cuda"
    torch.backends.cudnn.benchmark = reg.benchmark
    model.train()
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        resident = torch.cuda.memory_allocated(dev) / 2**20
    else:
        _reset_peak_rss()
        resident = _proc_status().get("VmRSS", float("nan"))
    autocast = (
        torch.autocast(dev.type, dtype=reg.autocast_dtype)
        if reg.autocast_dtype is not None
        else contextlib.nullcontext()
    )
    params = [p for p in model.parameters() if p.requires_grad]
    non_blocking = reg.pinned and cuda
    sched = reg.scheduler
    if sched is not None:
        sched._t_last = None  # the time other regimes trained in between is not ours
    steps = samples = 0
    wait = 0.0
    loss_sum = torch.zeros((), device=dev)
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        x, y = reg.next_batch()
        wait += time.perf_counter() - t0
        x = x.to(dev, non_blocking=non_blocking)
        y = y.to(dev, non_blocking=non_blocking)
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = model._loss(model.net(x), y)
        if reg.scaler is not None:
            reg.scaler.scale(loss).backward()
            reg.scaler.unscale_(opt)
        else:
            loss.backward()
        if reg.clip_val:
            if reg.clip_alg == "value":
                torch.nn.utils.clip_grad_value_(params, reg.clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, reg.clip_val)
        if reg.scaler is not None:
            reg.scaler.step(opt)
            reg.scaler.update()
        else:
            opt.step()
        if sched is not None:
            sched.step()
        if reg.ema is not None and reg.steps_done >= reg.ema_start:
            reg.ema.update_parameters(model)  # timed: part of the step, as in fit
        reg.steps_done += 1
        loss_sum += loss.detach().float()
        steps += 1
        samples += len(x)
        if time.perf_counter() - start >= seconds:
            break
    _sync(dev)
    elapsed = time.perf_counter() - start
    out: dict[str, Any] = {
        "seconds": elapsed,
        "steps": steps,
        "samples": samples,
        "data_wait_s": wait,
        "train_loss": float(loss_sum) / steps,
    }
    if cuda:
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        out["cuda_max_reserved_mb"] = torch.cuda.max_memory_reserved(dev) / 2**20
        out["cuda_resident_at_start_mb"] = resident
    else:
        out["peak_rss_mb"] = _proc_status().get("VmHWM", float("nan"))
        out["rss_at_start_mb"] = resident
        pids = reg.worker_pids()
        out["workers"] = len(pids)
        out["workers_rss_mb"] = sum(_proc_status(p).get("VmRSS", 0.0) for p in pids)
        out["workers_pss_mb"] = sum(_worker_pss_mb(p) for p in pids)
    return out


def evaluate(
    model, x: torch.Tensor, y: torch.Tensor, batch: int = 256
) -> tuple[list[float], float]:
    """MAE per parameter in physical units (predict_physical) and the module's loss."""
    was_training = model.training
    model.eval()
    preds = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            preds.append(model.predict_physical(x[i : i + batch]).cpu())
        pred = torch.cat(preds)
        mae = (pred - y).abs().mean(dim=0)
        loss = model._loss(model.scaler.scale(pred.to(model.device)), y.to(model.device), nll=False)
    model.train(was_training)
    return [float(v) for v in mae], float(loss)


# ---- inference -----------------------------------------------------------------------------


def _time_fn(fn, x: torch.Tensor, device: torch.device, batch: int, repeats: int, calls: int):
    n = len(x)
    with torch.inference_mode():
        fn(x[:batch].to(device)).cpu()  # warm-up (allocator, cuDNN autotune, JIT passes)
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(0, n, batch):
                fn(x[i : i + batch].to(device)).cpu()
            best = min(best, time.perf_counter() - t0)
        for i in range(10):
            fn(x[i % n : i % n + 1].to(device)).cpu()
        lat = []
        for i in range(calls):
            xi = x[i % n : i % n + 1]
            t0 = time.perf_counter()
            fn(xi.to(device)).cpu()
            lat.append(time.perf_counter() - t0)
    return {
        "batched_spectra_per_s": n / best,
        "batched_best_s": best,
        "latency_ms": 1000.0 * statistics.median(lat),
    }


def bench_inference(
    net: torch.nn.Module,
    x: torch.Tensor,
    device: torch.device,
    *,
    batch: int = 1024,
    repeats: int = 3,
    calls: int = 200,
    benchmark: bool = False,
) -> dict[str, Any]:
    """Eager and TorchScript-traced timing of `net` (eval mode): input on the CPU, moved
    to the device and the output back to the CPU inside the timed region."""
    torch.backends.cudnn.benchmark = benchmark
    was_training = net.training
    net.eval()
    batch = min(batch, len(x))
    result: dict[str, Any] = {
        "n_spectra": len(x),
        "batch": batch,
        "repeats": repeats,
        "latency_calls": calls,
        "eager": _time_fn(net, x, device, batch, repeats, calls),
    }
    try:
        example = x[:batch].to(device)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(net, example)
        with torch.inference_mode():
            diff = max(
                float((traced(xx) - net(xx)).abs().max())
                for xx in (example, x[:1].to(device), x[: min(7, len(x))].to(device))
            )
        if not diff <= 1e-5:
            result["traced"] = f"n/a (traced output differs from eager by {diff:.3g} > 1e-5)"
        else:
            result["traced"] = _time_fn(traced, x, device, batch, repeats, calls)
            result["traced"]["max_abs_diff_vs_eager"] = diff
    except Exception as e:  # noqa: BLE001 - any tracing failure is reported, not fatal
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        result["traced"] = f"n/a (trace failed: {type(e).__name__}: {msg[:200]})"
    net.train(was_training)
    return result


def bench_simulator(sim, seed: int, n: int, repeats: int = 3) -> dict[str, Any]:
    from .simulate import simulate

    simulate(sim, seed, np.arange(min(n, 64)))  # noise bank and caches, untimed
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        simulate(sim, seed, np.arange(n))
        best = min(best, time.perf_counter() - t0)
    return {"n_spectra": n, "n_points": sim.n_points, "best_s": best, "spectra_per_s": n / best}


def load_checkpoint(path: str):
    from .module import DysonianRegressor

    p = Path(path).expanduser()
    if not p.is_file():
        raise BenchError(f"--ckpt: file not found: {path!r}")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
        model = DysonianRegressor(**ckpt["hyper_parameters"])
        model.load_state_dict(ckpt["state_dict"])
    except Exception as e:  # noqa: BLE001
        raise BenchError(f"--ckpt: cannot load {path!r}: {type(e).__name__}: {e}") from None
    return model


# ---- report ----------------------------------------------------------------------------------


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "not reached"
    if isinstance(v, str):
        return v
    return format(v, spec)


def summarise(reg: Regime, names: Sequence[str], target, target2) -> dict[str, Any]:
    rounds = reg.rounds
    secs = sum(r["seconds"] for r in rounds)
    samples = sum(r["samples"] for r in rounds)
    steps = sum(r["steps"] for r in rounds)
    wait = sum(r["data_wait_s"] for r in rounds)
    curve = [(r["train_seconds_cum"], r["mae"]) for r in rounds]
    s: dict[str, Any] = {
        "train_seconds": secs,
        "samples": samples,
        "steps": steps,
        "epochs_started": reg.epoch + 1,
        "samples_per_s": samples / secs,
        "samples_per_s_median_round": statistics.median(
            r["samples"] / r["seconds"] for r in rounds
        ),
        "step_ms": 1000.0 * secs / steps,
        "data_wait_fraction": min(1.0, max(0.0, wait / secs)),
        "final_mae": dict(zip(names, rounds[-1]["mae"], strict=True)),
        "final_val_loss": rounds[-1]["val_loss"],
        "time_to_target_s": time_to_target(curve, target),
        "time_to_target2_s": time_to_target(curve, target2),
    }
    if reg.device.type == "cuda":
        s["cuda_max_allocated_mb"] = max(r["cuda_max_allocated_mb"] for r in rounds)
        s["cuda_max_reserved_mb"] = max(r["cuda_max_reserved_mb"] for r in rounds)
    else:
        s["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rounds)
        s["workers_rss_mb"] = max(r["workers_rss_mb"] for r in rounds)
        s["workers_pss_mb"] = max(r["workers_pss_mb"] for r in rounds)
    return s


def _memory_cell(s: dict[str, Any]) -> str:
    if "cuda_max_allocated_mb" in s:
        return f"{s['cuda_max_allocated_mb']:.0f} / {s['cuda_max_reserved_mb']:.0f}"
    cell = f"{s['peak_rss_mb']:.0f}"
    if s.get("workers_rss_mb"):
        cell += f" + {s['workers_rss_mb']:.0f} workers (PSS {s['workers_pss_mb']:.0f})"
    return cell


def _infer_cells(inf: dict[str, Any]) -> list[str]:
    e, t = inf["eager"], inf["traced"]
    cells = [f"{e['batched_spectra_per_s']:.0f}", f"{e['latency_ms']:.2f}"]
    if isinstance(t, dict):
        cells += [f"{t['batched_spectra_per_s']:.0f}", f"{t['latency_ms']:.2f}"]
    else:
        cells += [t, "n/a"]
    return cells


def render_markdown(report: dict[str, Any]) -> str:
    names = report["target_names"]
    cuda = report["device"] != "cpu"
    mem = "peak CUDA MB (alloc / reserved)" if cuda else "peak RSS MB"
    s = report["settings"]
    lines = [
        "# dysonian_pl bench",
        "",
        f"Device: {report['device']}; CPU: {report['machine'].get('cpu_model') or '?'} "
        f"({report['machine']['cpu_count']} CPUs, {report['machine']['torch_threads']} torch threads); "
        f"torch {report['versions']['torch']}, lightning {report['versions']['lightning']}.",
        f"{s['rounds']} interleaved rounds of {s['round_seconds']:.1f} s per regime; "
        f"validation: {s['n_val']} simulated spectra; n_points {report['sim']['n_points']}; "
        f"target MAE {tuple(s['target'])}, looser target {tuple(round(v, 6) for v in s['target2'])} "
        "(checked at the end of each round).",
        "",
        "## Training",
        "",
        "| regime | batch | workers | precision | optimizer (lr, wd) | dropout | samples/s | "
        "samples/s (median round) | step ms | data wait | "
        + mem
        + " | "
        + " | ".join(f"MAE {n}" for n in names)
        + " | time to target (s) | time to looser target (s) |",
        "| --- " * (13 + len(names)) + "|",
    ]
    for name, r in report["regimes"].items():
        c, t = r["config"], r["train"]
        prec = c["precision"]
        if c["precision_requested"] != prec:
            prec += f" (asked {c['precision_requested']})"
        opt = f"{c['optimizer'].rsplit('.', 1)[-1]} ({c['lr']:g}, {c['weight_decay']:g})"
        row = [
            name, str(c["batch_size"]), str(c["num_workers"]), prec, opt, f"{c['dropout']:g}",
            f"{t['samples_per_s']:.0f}", f"{t['samples_per_s_median_round']:.0f}",
            f"{t['step_ms']:.1f}", f"{t['data_wait_fraction']:.1%}", _memory_cell(t),
            *(f"{t['final_mae'][n]:.4g}" for n in names),
            _fmt(t["time_to_target_s"], ".0f"), _fmt(t["time_to_target2_s"], ".0f"),
        ]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    regs = list(report["regimes"].items())
    if len(regs) > 1:
        ref_name, ref = regs[0]
        lines.append("")
        for name, r in regs[1:]:
            a, b = r["train"], ref["train"]
            parts = [f"samples/s x{a['samples_per_s'] / b['samples_per_s']:.2f}"]
            for key, label in (
                ("time_to_target_s", "target"),
                ("time_to_target2_s", "looser target"),
            ):
                if a[key] is not None and b[key] is not None and b[key] > 0:
                    parts.append(f"time to {label} x{a[key] / b[key]:.2f}")
            lines.append(f"- {name} vs {ref_name}: " + ", ".join(parts))
    lines += [
        "",
        "## Inference (prediction network: eval mode, batch norm folded; CPU tensor in, CPU tensor out)",
        "",
        "| model | eager spectra/s (batch {b}) | eager latency ms (batch 1) | traced spectra/s | "
        "traced latency ms |".format(b=s["infer_batch"]),
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in report["regimes"].items():
        lines.append("| " + " | ".join([name, *_infer_cells(r["inference"])]) + " |")
    if report.get("checkpoint"):
        ck = report["checkpoint"]
        lines.append(
            "| "
            + " | ".join([f"ckpt {Path(ck['path']).name}", *_infer_cells(ck["inference"])])
            + " |"
        )
    if report.get("simulator"):
        sim = report["simulator"]
        lines += [
            "",
            f"Simulator: {sim['spectra_per_s']:.0f} spectra/s "
            f"({sim['n_spectra']} spectra at {sim['n_points']} points, best of 3).",
        ]
    lines += ["", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2 (via BenchError)
        raise BenchError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m dysonian_pl bench",
        description="Train the regimes interleaved on identical data in one process, "
        "then time inference. Writes bench.md and bench.json to --out.",
    )
    p.add_argument(
        "regimes",
        nargs="*",
        metavar="NAME=CONFIG[,CONFIG...]",
        help="regimes to compare (default: " + " ".join(DEFAULT_REGIMES) + "); "
        "config paths relative to the working folder or the repository",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every regime, e.g. --set model.arch=prior")  # fmt: skip
    p.add_argument("--minutes", type=float, default=10.0,
                   help="total training budget, split across regimes (default 10)")  # fmt: skip
    p.add_argument("--round-seconds", type=float, default=20.0,
                   help="training seconds per regime per round (default 20)")  # fmt: skip
    p.add_argument("--n-val", type=int, default=1000, help="validation spectra (default 1000)")
    p.add_argument("--target", default=",".join(map(str, PRIOR_SET4_MAE)),
                   help="MAE target B0,dB,p (default: the prior work's set-4 MAE 0.56,0.77,0.022)")  # fmt: skip
    p.add_argument("--target2", default="2x",
                   help="a looser target: B0,dB,p or Kx (K times --target; default 2x)")  # fmt: skip
    p.add_argument("--ckpt", help="also time this checkpoint's inference")
    p.add_argument("--simulator", action="store_true",
                   help="also measure the simulator's spectra/s (8192 spectra, best of 3)")  # fmt: skip
    p.add_argument("--sim-n", type=int, default=8192, help=argparse.SUPPRESS)
    p.add_argument("--infer-n", type=int, default=4096, help="spectra for batched inference")
    p.add_argument(
        "--infer-batch", type=int, default=256, help="batch for batched inference (default 256)"
    )
    p.add_argument("--latency-calls", type=int, default=200, help="batch-1 calls for latency")
    p.add_argument("--threads", type=int,
                   help="torch intra-op threads for this process (default: torch's own choice, "
                   "as fit uses; restored on return)")  # fmt: skip
    p.add_argument("--out", default="bench", help="output folder (default ./bench)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except BenchError as e:
        print(f"dysonian_pl bench: {e}", file=sys.stderr)
        return 2


def _check_args(a: argparse.Namespace) -> None:
    for name in ("minutes", "round_seconds"):
        v = getattr(a, name)
        if not (math.isfinite(v) and v > 0):
            raise BenchError(f"--{name.replace('_', '-')}: must be > 0 (got {v})")
    for name in ("n_val", "infer_n", "infer_batch", "latency_calls", "sim_n", "threads"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')}: must be >= 1 (got {getattr(a, name)})")


def _run(argv: list[str]) -> int:
    a = _parser().parse_args(argv)
    _check_args(a)
    threads = torch.get_num_threads()
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        return _bench(a, argv)
    finally:
        torch.set_num_threads(threads)


def _bench(a: argparse.Namespace, argv: list[str]) -> int:
    target = parse_target(a.target)
    target2 = parse_target2(a.target2, target)
    overrides = [parse_set(s) for s in a.set]
    specs = [parse_regime(s) for s in (a.regimes or DEFAULT_REGIMES)]
    seen: set[str] = set()
    for name, _ in specs:
        if name in seen:
            raise BenchError(f"regime name {name!r} given twice")
        seen.add(name)
    out = Path(a.out)
    machine = machine_info()
    ckpt_model = load_checkpoint(a.ckpt) if a.ckpt else None

    regimes: dict[str, Regime] = {}
    try:
        for name, files in specs:
            regimes[name] = build_regime(name, files, overrides)
        first = next(iter(regimes.values()))
        sig = _data_signature(first)
        for reg in regimes.values():
            other = _data_signature(reg)
            if other != sig:
                diff = sorted(k for k in sig if sig[k] != other[k])
                raise BenchError(
                    f"regimes {first.name!r} and {reg.name!r} differ in data ({', '.join(diff)}); "
                    "bench compares regimes on identical data"
                )
        sim, seed = first.dm.sim, first.dm.seed
        names = list(sim.target_names)

        from .simulate import simulate

        x_val, y_val = simulate(sim, seed, VAL_INDEX_OFFSET + np.arange(a.n_val))
        y_val = y_val.double()
        n_rounds, round_s = plan_rounds(a.minutes, len(regimes), a.round_seconds)
        print(
            f"bench: {len(regimes)} regimes, {n_rounds} rounds x {round_s:.1f} s each "
            f"on {first.device}",
            file=sys.stderr,
        )
        for reg in regimes.values():  # a CosineBudget decays over each regime's own time
            if reg.scheduler is not None:
                reg.scheduler.max_time_s, reg.scheduler.max_steps = n_rounds * round_s, None
        cum = {n: 0.0 for n in regimes}
        cum_samples = {n: 0 for n in regimes}
        for r in range(n_rounds):
            order = round_order(list(regimes), r)
            results = {n: train_round(regimes[n], round_s) for n in order}
            msg = []
            for n in regimes:  # evaluate after the round (untimed)
                res = results[n]
                cum[n] += res["seconds"]
                cum_samples[n] += res["samples"]
                mae, vloss = evaluate(regimes[n].trained(), x_val, y_val)
                res.update(
                    round=r,
                    order=order.index(n),
                    train_seconds_cum=cum[n],
                    samples_cum=cum_samples[n],
                    mae=mae,
                    val_loss=vloss,
                )
                regimes[n].rounds.append(res)
                msg.append(
                    f"{n} {res['samples'] / res['seconds']:.0f} sp/s MAE "
                    + " ".join(f"{v:.3g}" for v in mae)
                )
            print(f"bench: round {r + 1}/{n_rounds}: " + "; ".join(msg), file=sys.stderr)
        for reg in regimes.values():
            reg.close()

        x_inf, _ = simulate(sim, seed, INFER_INDEX_OFFSET + np.arange(a.infer_n))
        report: dict[str, Any] = {
            "command": "python -m dysonian_pl bench " + shlex.join(argv),
            "argv": argv,
            "sys_argv": list(sys.argv),
            "machine": machine,
            "device": (
                torch.cuda.get_device_name(first.device) if first.device.type == "cuda" else "cpu"
            ),
            "versions": versions(),
            "settings": {
                "minutes": a.minutes,
                "rounds": n_rounds,
                "round_seconds": round_s,
                "n_val": a.n_val,
                "val_indices": f"{VAL_INDEX_OFFSET} + arange({a.n_val})",
                "target": list(target),
                "target2": list(target2),
                "infer_n": a.infer_n,
                "infer_batch": min(a.infer_batch, a.infer_n),
                "latency_calls": a.latency_calls,
            },
            "target_names": names,
            "sim": sim.to_dict(),
            "data": {k: v for k, v in sig.items() if k != "sim"},
            "regimes": {},
        }
        for n, reg in regimes.items():
            report["regimes"][n] = {
                "config": reg.config,
                "train": summarise(reg, names, target, target2),
                "rounds": reg.rounds,
                "inference": bench_inference(
                    reg.trained().eval().prediction_network(),
                    x_inf,
                    reg.device,
                    batch=a.infer_batch,
                    calls=a.latency_calls,
                    benchmark=reg.benchmark,
                ),  # fmt: skip
            }
        if ckpt_model is not None:
            model = ckpt_model.to(first.device)
            entry: dict[str, Any] = {
                "path": str(a.ckpt),
                "hyper_parameters": _plain(dict(model.hparams)),
            }
            if model.sim.to_dict() == sim.to_dict():
                entry["mae"] = dict(zip(names, evaluate(model, x_val, y_val)[0], strict=True))
                x_ck = x_inf
            else:
                entry["mae"] = "n/a (checkpoint trained for a different simulation config)"
                x_ck = simulate(model.sim, seed, INFER_INDEX_OFFSET + np.arange(a.infer_n))[0]
            entry["inference"] = bench_inference(
                model.eval().prediction_network(),
                x_ck,
                first.device,
                batch=a.infer_batch,
                calls=a.latency_calls,
            )
            report["checkpoint"] = entry
        if a.simulator:
            report["simulator"] = bench_simulator(sim, seed, a.sim_n)
        with contextlib.suppress(AttributeError, OSError):
            report["machine"]["load_average_end"] = list(os.getloadavg())
    finally:
        for reg in regimes.values():
            reg.close()

    md = render_markdown(report)
    print(md)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench.md", md)
    atomic_write_text(out / "bench.json", json.dumps(report, indent=1, default=_plain) + "\n")
    print(f"bench: wrote {out / 'bench.md'} and {out / 'bench.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
