"""Training monitors that the prior work did by hand: time, throughput, data waiting, memory."""

from __future__ import annotations

import resource
import sys
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

from .params import ConfigError


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


class PerformanceMonitor(L.Callback):
    """Logs epoch time, training samples/s, the fraction of step time spent waiting for
    data, and peak memory (CUDA allocated and reserved on a GPU, process peak RSS on CPU).

    Data waiting is the time from the end of one training batch to the start of the
    next (the DataLoader fetch), over the whole epoch's wall time.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.samples = 0
        self.wait = 0.0
        self.t_epoch = time.perf_counter()
        self.t_last_end: float | None = None
        self.summary: dict[str, float] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        self.wait += now - (self.t_last_end if self.t_last_end is not None else self.t_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.samples += len(batch[0])
        self.t_last_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # measured to the end of the last training batch: validation is not training time
        end = self.t_last_end if self.t_last_end is not None else time.perf_counter()
        elapsed = max(end - self.t_epoch, 1e-9)
        world = trainer.world_size
        s = {
            "perf/epoch_time_s": elapsed,
            "perf/samples_per_s": self.samples * world / elapsed,
            "perf/data_wait_fraction": self.wait / elapsed,
            "perf/peak_rss_mb": peak_rss_mb(),
        }
        if pl_module.device.type == "cuda":
            s["perf/cuda_max_allocated_mb"] = (
                torch.cuda.max_memory_allocated(pl_module.device) / 2**20
            )
            s["perf/cuda_max_reserved_mb"] = (
                torch.cuda.max_memory_reserved(pl_module.device) / 2**20
            )
        self.summary = s
        pl_module.log_dict(s, on_step=False, on_epoch=True, rank_zero_only=True)


class ResumableCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` is written after every epoch.

    Lightning 2.6 writes ``last.ckpt`` only when a top-k checkpoint was saved in the same
    step, so after the monitored metric stops improving the "last" checkpoint stays at
    the best epoch and a killed run resumed with ``--ckpt_path last`` would lose every
    epoch since then. This subclass writes it whenever the parent did not.
    """

    @property
    def state_key(self) -> str:
        # the key Lightning's ModelCheckpoint uses, so checkpoints of either class resume
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def _ensure_last(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            if self._last_global_step_saved != trainer.global_step or not self.last_model_path:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer) and not trainer.sanity_checking:
            self._ensure_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)


class WeightEMA(WeightAveraging):
    """An exponential moving average of the weights, validated, checkpointed and tested
    in place of the last step's weights (`ema` in the config; on in the default `fit`).

    With fresh spectra every step the last step's weights carry the noise of the last
    few batches; their average over about the last 1 / (1 - decay) steps does not.
    Measured (`scripts/arch_ab.py`, docs/benchmarks.md, pairs 17-18): MAE lower on all
    three parameters at the same steps, p by 19-41 %.

    As Lightning's `EMAWeightAveraging`, with the grouped foreach update (2.9 ms per step
    for the default model on the slow host of 2026-11-24, against 8.2 ms for its
    tensor-by-tensor one, in steps of about 200 ms; 1.3 ms in steps of about 70 ms on
    the faster host of 2026-11-25) and three changes:

    - averaging starts at optimizer step `start_step` (after the warm-up) from a copy of
      the weights then, never from the random initial weights; until the first update
      (a run shorter than `start_step`) validation, checkpoints and the end of training
      use the trained weights as they are;
    - ``sigma_scale`` (the uncertainty head's factors, set by validation for the
      weights validated, which are the averaged ones) is copied into the average, not
      averaged;
    - `enabled: false` turns it off (the seed's baseline and optimized regimes do), a
      checkpoint without averaging state loads silently, and a checkpoint tested or
      validated (also the test that ends `fit`) is read as its averaged weights.

    Args:
        enabled: average the weights.
        decay: weight of the old average at each step, in (0, 1): 0.99 averages about the
            last 100 steps.
        start_step: first optimizer step (0-based) that is averaged.
    """

    #: buffers set by validation for the weights validated: copied into the average
    COPIED_BUFFERS = ("sigma_scale",)

    def __init__(self, enabled: bool = True, decay: float = 0.99, start_step: int = 100) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"ema.decay: must be in (0, 1) (got {decay})")
        if start_step < 0:
            raise ConfigError(f"ema.start_step: must be >= 0 (got {start_step})")
        super().__init__(use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.enabled, self.decay, self.start_step = bool(enabled), decay, start_step
        self._swapped = False

    def _active(self) -> bool:
        """True once the average holds at least one update."""
        avg = self._average_model
        return avg is not None and int(avg.n_averaged) > 0

    def _copy_buffers(self, pl_module: L.LightningModule) -> None:
        assert self._average_model is not None
        average = self._average_model.module
        for name in self.COPIED_BUFFERS:
            if hasattr(pl_module, name) and hasattr(average, name):
                getattr(average, name).copy_(getattr(pl_module, name))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.enabled:
            super().setup(trainer, pl_module, stage)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """After every optimizer step from `start_step` on (never at an epoch's end)."""
        return self.enabled and step_idx is not None and step_idx >= self.start_step

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swapped = self._active()
        if self._swapped:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._swapped:
            super().on_validation_epoch_end(trainer, pl_module)
            self._swapped = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active():
            self._copy_buffers(pl_module)
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self._active():
            self._copy_buffers(pl_module)
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Only a resumed fit restores the trained weights beside the average. Testing a
        # checkpoint after `fit` (the same callback, its average still built) must use
        # the checkpoint's state_dict, the average: Lightning's callback would load the
        # last step's weights there.
        fitting = trainer.state.fn == "fit"
        if fitting and self._average_model is not None and "averaging_state" in checkpoint:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
