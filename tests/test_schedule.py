"""CosineBudget: warm-up and cosine decay over a step or time budget, resumable, bound by the CLI."""

from __future__ import annotations

import contextlib
import io
import math

import pytest
import torch
from conftest import tiny_overrides

from dysonian_pl import schedule
from dysonian_pl.schedule import CosineBudget


def _sched(**kw) -> tuple[torch.optim.Optimizer, CosineBudget]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return opt, CosineBudget(opt, **kw)


def _lr(opt: torch.optim.Optimizer) -> float:
    return opt.param_groups[0]["lr"]


def test_warmup_is_linear_then_cosine_over_steps():
    opt, s = _sched(warmup_steps=4, final_fraction=0.1, max_steps=100)
    lrs = [_lr(opt)]
    for _ in range(100):
        opt.step()
        s.step()
        lrs.append(_lr(opt))
    # step k uses warm-up (k + 1) / 4 times the cosine factor at k / 100
    cos = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 100)) for k in range(101)]
    for k in range(4):
        assert lrs[k] == pytest.approx((k + 1) / 4 * cos[k], rel=1e-12)
    assert lrs[50] == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-12)
    assert lrs[100] == pytest.approx(0.1, rel=1e-12)


def test_time_budget_decays_by_elapsed_time(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(schedule.time, "monotonic", lambda: clock[0])
    opt, s = _sched(warmup_steps=0, final_fraction=0.0, max_time_s=10.0, max_steps=10**6)
    s.step()  # first step starts the clock
    clock[0] += 5.0
    s.step()
    assert s.elapsed_s == pytest.approx(5.0)
    assert _lr(opt) == pytest.approx(0.5, rel=1e-12)  # half the time: cos(pi/2)
    clock[0] += 20.0
    s.step()
    assert s.progress() == 1.0
    assert _lr(opt) == pytest.approx(0.0, abs=1e-15)


def test_state_dict_resumes_the_decay_in_a_new_process(monkeypatch):
    clock = [50.0]
    monkeypatch.setattr(schedule.time, "monotonic", lambda: clock[0])
    opt, s = _sched(warmup_steps=0, max_time_s=100.0)
    s.step()
    clock[0] += 30.0
    s.step()
    state = s.state_dict()
    assert "_t_last" not in state and state["elapsed_s"] == pytest.approx(30.0)

    clock[0] = 7.0  # another process: its monotonic clock has another origin
    opt2, s2 = _sched(warmup_steps=0)
    s2.load_state_dict(state)
    s2.step()  # restarts the clock, adds nothing
    clock[0] += 20.0
    s2.step()
    assert s2.elapsed_s == pytest.approx(50.0)
    assert s2.progress() == pytest.approx(0.5)


def test_no_budget_keeps_the_initial_lr_after_warmup():
    opt, s = _sched(warmup_steps=2)
    for _ in range(5):
        s.step()
    assert s.progress() == 0.0 and _lr(opt) == pytest.approx(1.0)


def test_bind_fills_only_unset_budgets_and_ignores_infinite_steps():
    _, s = _sched(max_steps=7)
    s.bind(120.0, 1000)
    assert (s.max_time_s, s.max_steps) == (120.0, 7)
    _, s = _sched()
    s.bind(None, float("inf"))
    assert (s.max_time_s, s.max_steps) == (None, None)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"final_fraction": 1.5}, "final_fraction"),
        ({"max_time_s": 0}, "max_time_s"),
        ({"max_steps": -3}, "max_steps"),
    ],
)
def test_bad_arguments_name_the_option(kw, msg):
    with pytest.raises(ValueError, match=f"lr_scheduler.{msg}"):
        _sched(**kw)


def test_cli_steps_the_schedule_every_batch_over_the_trainer_budget(tmp_path):
    from dysonian_pl.cli import main

    args = [
        "fit",
        *tiny_overrides(tmp_path, epochs=2),
        "--lr_scheduler", "dysonian_pl.schedule.CosineBudget",
        "--lr_scheduler.warmup_steps", "2",
        "--lr_scheduler.final_fraction", "0.1",
        "--optimizer.lr", "0.01",
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli = main(args)
    config = cli.trainer.lr_scheduler_configs[0]
    sched = config.scheduler
    assert isinstance(sched, CosineBudget) and config.interval == "step"
    steps = cli.trainer.global_step
    assert steps == 2 * math.ceil(63 / 16)  # 63 training spectra, batch 16, 2 epochs
    assert sched.max_steps == steps  # bound to the trainer's own estimate
    assert sched.last_epoch == steps
    # lr after the last step: the end of the budget
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * 0.1)
