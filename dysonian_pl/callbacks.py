"""Training monitors that the prior work did by hand: time, throughput, data waiting, memory."""

from __future__ import annotations

import resource
import sys
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


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
