#!/usr/bin/env python
"""Kill a training run with SIGKILL at random moments, resume it each time, check nothing broke.

Issue 5's check by hand, as a script::

    python scripts/kill_resume_loop.py --kills 10 --seed 1 --workdir /tmp/killloop

A tiny CPU run (``python -m dysonian_pl fit``) is started; once it has written a
checkpoint of its own (``last.ckpt`` appears or changes) the script waits a random
0.2-2 s and SIGKILLs it, wherever it is (mid-epoch, in validation, writing a
checkpoint or the data cache, logging). It then resumes with ``--ckpt_path last``.
After the last kill the run is left to finish. After every kill it checks:

* every ``*.ckpt`` loads with ``torch.load(weights_only=True)`` and is a dysonian_pl
  checkpoint (a half-written file under a real name would fail here);
* every data-cache folder that can be read as a cache is complete (meta, shapes);
  leftover ``.tmp-`` files or folders from a kill are counted, never read;
* every TensorBoard event file reads.

At the end: the final ``last.ckpt`` is at the configured epoch count, the test table
was printed, every resumed process logged validation only after its checkpoint's
step, and at most the work since the last checkpoint was lost (steps logged by a
killed process beyond its checkpoint's step, re-done after the resume).

Exit status 0 only if all of that holds.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

TABLE_HEADER = "| parameter | R2 | RMSE | MAE |"


@dataclass
class Cycle:
    """One process: started fresh or resumed, then killed (or left to finish)."""

    number: int
    pid: int = 0
    resumed_from_epoch: int | None = None  # last.ckpt's epoch when this process started
    resumed_from_step: int | None = None
    killed: bool = False
    kill_after_ckpt_s: float = 0.0  # the random wait after its first own checkpoint
    kill_at_s: float = 0.0  # seconds since the process started
    ckpt_epoch_at_kill: int | None = None
    ckpt_step_at_kill: int | None = None
    max_logged_step: int | None = None  # the furthest the killed process got (TensorBoard)
    returncode: int | None = None
    corrupt: list[str] = field(default_factory=list)
    leftover_tmp: int = 0
    stdout: str = ""
    stderr: str = ""


# --------------------------------------------------------------------------- checks
def read_ckpt(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def corrupt_files(root: Path, data_args: dict) -> tuple[list[str], int]:
    """Files under `root` that a later run could read and that are damaged; leftover temps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dysonian_pl.data import SpectraDataModule, _read_split
    from dysonian_pl.params import SimulationConfig

    bad: list[str] = []
    tmp = [p for p in root.rglob("*") if ".tmp-" in p.name]
    for ckpt in root.rglob("*.ckpt"):
        if ".tmp-" in ckpt.name:
            continue
        try:
            c = read_ckpt(ckpt)
            if not isinstance(c.get("dysonian_pl"), dict) or "epoch" not in c:
                bad.append(f"{ckpt.relative_to(root)}: not a complete dysonian_pl checkpoint")
        except Exception as e:  # noqa: BLE001 - any failure is a corrupt file
            bad.append(f"{ckpt.relative_to(root)}: {type(e).__name__}: {str(e)[:120]}")
    cache = root / "cache"
    if cache.is_dir():
        sim = SimulationConfig().replace(n_points=data_args["n_points"])
        dm = SpectraDataModule(
            sim=sim,
            n_spectra=data_args["n_spectra"],
            split=(0.7, 0.15, 0.15),
            cache_dir=str(cache),
            batch_size=8,
        )
        expected = {dm._folder(n).name: dm._meta(n) for n in ("train", "val", "test")}
        for folder in cache.iterdir():
            if ".tmp-" in folder.name:
                continue  # a kill's leftover under a name no reader looks for
            meta = expected.get(folder.name)
            if meta is None:
                bad.append(f"cache/{folder.name}: unexpected cache folder")
            elif _read_split(folder, meta) is None:
                bad.append(f"cache/{folder.name}: fails the cache check")
    for events in root.rglob("events.out.tfevents.*"):
        try:
            EventAccumulator(str(events), size_guidance={"scalars": 0}).Reload()
        except Exception as e:  # noqa: BLE001
            bad.append(f"{events.relative_to(root)}: unreadable ({type(e).__name__})")
    return bad, len(tmp)


def scalar_steps(log_dir: Path, pid: int, tag: str) -> list[int]:
    """Steps of `tag` in the event files one process wrote (the pid is in their names)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps: list[int] = []
    for f in sorted(log_dir.glob(f"events.out.tfevents.*.{pid}.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            steps += [e.step for e in acc.Scalars(tag)]
    return steps


# --------------------------------------------------------------------------- the loop
def fit_command(root: Path, max_epochs: int, n_spectra: int, n_points: int) -> list[str]:
    return [
        sys.executable, "-m", "dysonian_pl", "fit",
        "--data.sim.n_points", str(n_points),
        "--data.n_spectra", str(n_spectra),
        "--data.split", "[0.7, 0.15, 0.15]",  # what corrupt_files expects
        "--data.batch_size", "8",
        "--model.width", "8",
        "--trainer.max_epochs", str(max_epochs),
        "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", str(root),
        "--data.cache_dir", str(root / "cache"),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--ckpt_path", "last",
    ]  # fmt: skip


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def run_loop(
    workdir: str | os.PathLike,
    *,
    kills: int = 10,
    seed: int = 0,
    max_epochs: int | None = None,
    n_spectra: int = 200,
    n_points: int = 256,
    wait: tuple[float, float] = (0.2, 2.0),
    timeout_s: float = 600.0,
    log=print,
) -> tuple[list[Cycle], list[str]]:
    """Run the loop; the cycles and the list of failed final checks (empty: all clean)."""
    rng = random.Random(seed)
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise SystemExit(f"error: --workdir {root}: must be empty (a fresh run is needed)")
    max_epochs = max_epochs if max_epochs is not None else kills + 4
    data_args = {"n_spectra": n_spectra, "n_points": n_points}
    cmd = fit_command(root, max_epochs, n_spectra, n_points)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    last = root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    cycles: list[Cycle] = []
    for number in range(kills + 1):
        cyc = Cycle(number)
        if last.exists():
            c = read_ckpt(last)
            cyc.resumed_from_epoch, cyc.resumed_from_step = int(c["epoch"]), int(c["global_step"])
        before = _mtime(last)
        out_path, err_path = root / f".cycle{number}.out", root / f".cycle{number}.err"
        with open(out_path, "w") as out, open(err_path, "w") as err:
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=err)
            cyc.pid = proc.pid
            if number < kills:  # wait for this process's own checkpoint, then a random moment
                while proc.poll() is None and time.monotonic() - t0 < timeout_s:
                    now = _mtime(last)
                    if now is not None and now != before:
                        break
                    time.sleep(0.05)
                cyc.kill_after_ckpt_s = rng.uniform(*wait)
                time.sleep(cyc.kill_after_ckpt_s)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    cyc.killed = True
                    cyc.kill_at_s = time.monotonic() - t0
            try:
                cyc.returncode = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                cyc.returncode = proc.wait()
        cyc.stdout, cyc.stderr = out_path.read_text(), err_path.read_text()
        out_path.unlink()
        err_path.unlink()
        if cyc.killed and last.exists():
            c = read_ckpt(last)
            cyc.ckpt_epoch_at_kill, cyc.ckpt_step_at_kill = int(c["epoch"]), int(c["global_step"])
            steps = scalar_steps(last.parent.parent, cyc.pid, "train/loss_step")
            cyc.max_logged_step = max(steps) if steps else None
        cyc.corrupt, cyc.leftover_tmp = corrupt_files(root, data_args)
        cycles.append(cyc)
        log(
            f"cycle {number}: pid {cyc.pid} "
            + (f"killed at {cyc.kill_at_s:.2f} s" if cyc.killed else f"exit {cyc.returncode}")
            + f", corrupt {len(cyc.corrupt)}"
        )
        if not cyc.killed:
            break
    return cycles, final_checks(root, cycles, max_epochs)


def final_checks(root: Path, cycles: list[Cycle], max_epochs: int) -> list[str]:
    failed: list[str] = []
    last = root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    final = cycles[-1]
    if final.killed or final.returncode != 0:
        failed.append(f"the final run did not finish cleanly (exit {final.returncode})")
        failed.append(final.stderr[-2000:])
    versions = sorted(p.name for p in (root / "lightning_logs").glob("version_*"))
    if versions != ["version_0"]:
        failed.append(f"resumes started new runs: {versions}")
    if not last.exists():
        return [*failed, "no last.ckpt"]
    c = read_ckpt(last)
    processed = c["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
    # last.ckpt is written at the end of the last validation (epoch max_epochs - 1, before
    # Lightning marks the epoch completed) or, after a resume, once the loop has finished
    # (epoch max_epochs); either way all max_epochs epochs were processed
    if c["epoch"] not in (max_epochs - 1, max_epochs) or processed != max_epochs:
        failed.append(
            f"last.ckpt: epoch {c['epoch']}, {processed} epochs processed; expected "
            f"{max_epochs} epochs processed"
        )
    if TABLE_HEADER not in final.stdout:
        failed.append("the final run printed no test table")
    for cyc in cycles:
        if cyc.corrupt:
            failed.append(f"cycle {cyc.number}: corrupt files {cyc.corrupt}")
    # metrics continue: a resumed process logs validation only after its checkpoint's step
    log_dir = last.parent.parent
    steps_per_epoch = int(c["global_step"]) // max_epochs
    for cyc in cycles:
        val = scalar_steps(log_dir, cyc.pid, "val/loss")
        if val != sorted(set(val)):
            failed.append(f"cycle {cyc.number}: val/loss steps not increasing: {val}")
        if cyc.resumed_from_step is not None and val and min(val) <= cyc.resumed_from_step:
            failed.append(
                f"cycle {cyc.number}: resumed at step {cyc.resumed_from_step} but logged "
                f"val/loss at step {min(val)}"
            )
        if cyc.killed and cyc.max_logged_step is not None and cyc.ckpt_step_at_kill is not None:
            lost = cyc.max_logged_step - cyc.ckpt_step_at_kill
            if lost > steps_per_epoch:
                failed.append(f"cycle {cyc.number}: {lost} steps lost (> one epoch)")
    # one validation per epoch over the whole run, an epoch's steps apart (a re-done epoch
    # logs at the same step as the lost one, never at a new one)
    all_val = sorted({s for cyc in cycles for s in scalar_steps(log_dir, cyc.pid, "val/loss")})
    gaps = {b - a for a, b in zip(all_val, all_val[1:], strict=False)}
    if len(all_val) != max_epochs or gaps - {steps_per_epoch}:
        failed.append(
            f"val/loss steps over all processes {all_val}; expected {max_epochs} steps "
            f"{steps_per_epoch} apart"
        )
    return failed


def summary_table(cycles: list[Cycle]) -> str:
    rows = [
        "| kill # | moment (s after start / after own ckpt) | ckpt epoch at kill "
        "| resumed epoch | steps lost | corrupt files | leftover .tmp- |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for cyc in cycles:
        if cyc.killed:
            nxt = cyc.ckpt_epoch_at_kill + 1 if cyc.ckpt_epoch_at_kill is not None else None
            lost = (
                cyc.max_logged_step - cyc.ckpt_step_at_kill
                if cyc.max_logged_step is not None and cyc.ckpt_step_at_kill is not None
                else "-"
            )
            moment = f"{cyc.kill_at_s:.2f} / {cyc.kill_after_ckpt_s:.2f}"
            rows.append(
                f"| {cyc.number + 1} | {moment} | {cyc.ckpt_epoch_at_kill} | {nxt} | {lost} "
                f"| {len(cyc.corrupt)} | {cyc.leftover_tmp} |"
            )
        else:
            rows.append(
                f"| final | ran to the end (exit {cyc.returncode}) | - | "
                f"{(cyc.resumed_from_epoch + 1) if cyc.resumed_from_epoch is not None else 0} "
                f"| - | {len(cyc.corrupt)} | {cyc.leftover_tmp} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=10, help="SIGKILLs before the run may finish")
    ap.add_argument("--seed", type=int, default=0, help="seeds the random kill moments")
    ap.add_argument("--workdir", required=True, help="an empty (or new) folder for the run")
    ap.add_argument(
        "--max-epochs", type=int, default=None, help="epochs of the run (default kills + 4)"
    )
    ap.add_argument("--n-spectra", type=int, default=200, help="size of the data set")
    args = ap.parse_args(argv)
    if args.kills < 0:
        ap.error(f"--kills: must be >= 0 (got {args.kills})")
    cycles, failed = run_loop(
        args.workdir,
        kills=args.kills,
        seed=args.seed,
        max_epochs=args.max_epochs,
        n_spectra=args.n_spectra,
    )
    print()
    print(summary_table(cycles))
    n_killed = sum(c.killed for c in cycles)
    n_corrupt = sum(len(c.corrupt) for c in cycles)
    print(
        f"\n{n_killed} kills, {n_killed} resumes, {n_corrupt} corrupt files; "
        + ("all clean" if not failed else "FAILED:")
    )
    for line in failed:
        print(f"  - {line}")
    if n_killed < args.kills:  # the run outpaced the kill schedule (a fast host)
        epochs = args.max_epochs if args.max_epochs is not None else args.kills + 4
        print(
            f"  - only {n_killed} of --kills {args.kills}: the run finished first; "
            f"give it more epochs (--max-epochs, now {epochs})"
        )
    return 0 if not failed and n_killed == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
