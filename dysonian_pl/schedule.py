"""Learning-rate schedule for budgeted training: warm-up, then cosine decay over the budget.

A run here is usually bounded by wall time (`trainer.max_time`) rather than by epochs:
fresh spectra every epoch mean there is no "end of the data". `CosineBudget` decays the
learning rate over whichever budget runs out first (the trainer's `max_time`, or its
total number of optimizer steps), so a 5-minute run and a 5-hour run both finish at a
low learning rate instead of being cut off at a high one.
"""

from __future__ import annotations

import math
import time

import torch
from torch.optim.lr_scheduler import LRScheduler


class CosineBudget(LRScheduler):
    """Linear warm-up over `warmup_steps`, then cosine decay to `final_fraction` x lr.

    Progress is the larger of elapsed wall time / `max_time_s` and optimizer steps /
    `max_steps`. Both default to the trainer's budget (`max_time`, and the number of
    steps `max_epochs` or `max_steps` implies) when the CLI binds the schedule; set them
    to override. Elapsed time is measured between scheduler steps (validation included,
    as the trainer's `max_time` counts it) and kept in the checkpoint, so a resumed run
    continues the decay where it stopped. Stepped once per optimizer step.

    Args:
        optimizer: the wrapped optimizer.
        warmup_steps: steps of linear warm-up from lr / warmup_steps.
        final_fraction: lr at the end of the budget, as a fraction of the initial lr.
        max_time_s: time budget in seconds (None: the trainer's `max_time`, if any).
        max_steps: step budget (None: the trainer's estimate, if finite).
    """

    interval = "step"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 100,
        final_fraction: float = 0.02,
        max_time_s: float | None = None,
        max_steps: int | None = None,
        last_epoch: int = -1,
    ) -> None:
        if warmup_steps < 0:
            raise ValueError(f"lr_scheduler.warmup_steps: must be >= 0 (got {warmup_steps})")
        if not 0.0 <= final_fraction <= 1.0:
            raise ValueError(
                f"lr_scheduler.final_fraction: must be in [0, 1] (got {final_fraction})"
            )
        for name, value in (("max_time_s", max_time_s), ("max_steps", max_steps)):
            if value is not None and value <= 0:
                raise ValueError(f"lr_scheduler.{name}: must be > 0 or null (got {value})")
        self.warmup_steps = warmup_steps
        self.final_fraction = final_fraction
        self.max_time_s = max_time_s
        self.max_steps = max_steps
        self.elapsed_s = 0.0
        self._t_last: float | None = None
        super().__init__(optimizer, last_epoch)

    def bind(self, max_time_s: float | None, max_steps: int | float | None) -> None:
        """Fill the budgets left unset from the trainer's (called by the CLI)."""
        if self.max_time_s is None and max_time_s:
            self.max_time_s = float(max_time_s)
        if self.max_steps is None and max_steps and math.isfinite(max_steps) and max_steps > 0:
            self.max_steps = int(max_steps)

    def progress(self) -> float:
        """Fraction of the budget used, in [0, 1] (0 when no budget is known)."""
        done = 0.0
        if self.max_steps:
            done = max(done, self.last_epoch / self.max_steps)
        if self.max_time_s:
            done = max(done, self.elapsed_s / self.max_time_s)
        return min(done, 1.0)

    def step(self, epoch: int | None = None) -> None:  # noqa: D102 - see class docstring
        now = time.monotonic()
        if self._t_last is not None:
            self.elapsed_s += now - self._t_last
        self._t_last = now
        super().step()

    def get_lr(self) -> list[float]:
        warm = min(1.0, (self.last_epoch + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        f = self.final_fraction
        decay = f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * self.progress()))
        return [base * warm * decay for base in self.base_lrs]

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("_t_last", None)  # a monotonic clock reading means nothing in another process
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._t_last = None
