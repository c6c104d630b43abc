"""DDP on two CPU processes (gloo) gives the single-process answer, counting every test sample once.

`fit` runs in a subprocess with ``configs/ddp.yaml`` and 2 CPU devices on a data set
whose test split has an odd size (15), so a padding sampler would have to duplicate a
sample to give both ranks the same count. A ledger callback (below, imported by the
subprocess through PYTHONPATH) writes per rank the targets of every test sample it
saw and the local (unsynchronised) sample counts of the torchmetrics states; the
union over ranks must be exactly the cached test split, each sample once. Then a
single-process `test` of the best checkpoint must reproduce the 2-process test
metrics (read back from the run's TensorBoard event file) to 1e-6 relative.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
N_SPECTRA = 101  # split 71 / 15 / 15: an odd test split
N_TEST = 15
DATA_ARGS = [
    "--data.sim.n_points", "256",
    "--data.n_spectra", str(N_SPECTRA),
    "--data.split", "[0.7, 0.15, 0.15]",
    "--data.batch_size", "8",
    "--model.width", "8",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip
METRIC_NAMES = [f"test/{n}_{k}" for n in ("B0", "dB", "p") for k in ("R2", "RMSE", "MAE")]


class SampleLedger(L.Callback):
    """Writes, per rank, what the test loop fed to the metrics: one JSON file per rank."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.targets: list[list[float]] = []
        self.batch_sizes: list[int] = []
        self.local_counts: dict[str, int] = {}

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.targets, self.batch_sizes, self.local_counts = [], [], {}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        _, y = batch
        self.targets += y.double().tolist()
        self.batch_sizes.append(len(y))

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        # callbacks run before the module's hook, so these are the local, pre-sync states
        metrics = pl_module.test_metrics
        self.local_counts = {
            "R2_total": int(metrics["B0_R2"].total),
            "MAE_total": int(metrics["B0_MAE"].total),
            "RMSE_total": int(metrics["dB_RMSE"].total),
        }

    def on_test_end(self, trainer, pl_module) -> None:
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "pid": os.getpid(),
            "targets": self.targets,
            "batch_sizes": self.batch_sizes,
            "local_counts": self.local_counts,
            "summary": pl_module.test_summary,
        }
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{trainer.global_rank}-{os.getpid()}.json").write_text(json.dumps(record))


def _ledger_arg(out_dir: Path) -> str:
    spec = [{"class_path": "test_ddp.SampleLedger", "init_args": {"out_dir": str(out_dir)}}]
    return "--trainer.callbacks=" + json.dumps(spec)


def _tb_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(log_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def _rows(targets) -> list[tuple[float, ...]]:
    return sorted(tuple(float(v) for v in row) for row in targets)


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(tmp_path, capsys):
    from dysonian_pl.cli import main

    root, ledger2, ledger1 = tmp_path / "ddp", tmp_path / "ledger2", tmp_path / "ledger1"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable, "-m", "dysonian_pl", "fit",
        "--config", str(REPO_ROOT / "configs" / "ddp.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2",
        *DATA_ARGS,
        "--trainer.max_epochs", "2",
        "--trainer.default_root_dir", str(root),
        "--data.cache_dir", str(root / "cache"),
        _ledger_arg(ledger2),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 training processes" in proc.stdout  # really two ranks

    # ---- every test sample counted exactly once, no padding --------------------------
    records = [json.loads(f.read_text()) for f in sorted(ledger2.glob("rank*.json"))]
    assert sorted(r["rank"] for r in records) == [0, 1], [r["rank"] for r in records]
    assert {r["world_size"] for r in records} == {2}
    assert len({r["pid"] for r in records}) == 2
    counts = sorted(len(r["targets"]) for r in records)
    assert counts == [7, 8], counts  # uneven shards: 15 is odd, nothing duplicated
    for r in records:  # what reached torchmetrics on each rank is what the loader gave it
        assert r["local_counts"] == dict.fromkeys(r["local_counts"], len(r["targets"]))
    test_cache = list((root / "cache").glob("test-*/y.npy"))
    assert len(test_cache) == 1, test_cache
    truth = np.load(test_cache[0])
    assert truth.shape == (N_TEST, 3)
    seen = [row for r in records for row in r["targets"]]
    assert _rows(seen) == _rows(truth.tolist())  # the same multiset: each sample once
    assert len(set(map(tuple, seen))) == N_TEST

    # ---- rank 0 alone logged and checkpointed -----------------------------------------
    versions = sorted(p.name for p in (root / "lightning_logs").iterdir())
    assert versions == ["version_0"], versions
    log_dir = root / "lightning_logs" / "version_0"
    events = sorted(log_dir.glob("events.out.tfevents.*"))
    assert len(events) == 2, events  # one for fit, one for the test after it
    ckpts = sorted(p.name for p in (log_dir / "checkpoints").iterdir())
    assert len(ckpts) == 2 and "last.ckpt" in ckpts, ckpts
    best = next(log_dir / "checkpoints" / n for n in ckpts if n.startswith("best-"))
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]
    assert sorted(p.name for p in root.iterdir()) == ["cache", "lightning_logs"]

    scalars = _tb_scalars(log_dir)
    ddp = {}
    for name in METRIC_NAMES:
        assert len(scalars[name]) == 1, (name, scalars[name])  # logged once, not per rank
        ddp[name] = scalars[name][0][1]
    rank0 = next(r for r in records if r["rank"] == 0)["summary"]
    rank1 = next(r for r in records if r["rank"] == 1)["summary"]
    assert rank0 == rank1  # synchronised metrics: every rank holds the global value

    # ---- one process, same checkpoint ------------------------------------------------
    cli = main(
        [
            "test",
            "--ckpt_path", str(best),
            *DATA_ARGS,
            "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.default_root_dir", str(tmp_path / "single"),
            "--data.cache_dir", str(root / "cache"),
            _ledger_arg(ledger1),
        ]
    )  # fmt: skip
    capsys.readouterr()
    single = cli.model.test_summary
    (one,) = [json.loads(f.read_text()) for f in ledger1.glob("rank*.json")]
    assert one["world_size"] == 1 and len(one["targets"]) == N_TEST
    assert _rows(one["targets"]) == _rows(seen)

    worst = 0.0
    for name in METRIC_NAMES:
        rel = abs(ddp[name] - single[name]) / max(abs(single[name]), 1e-12)
        rel0 = abs(rank0[name] - single[name]) / max(abs(single[name]), 1e-12)
        worst = max(worst, rel, rel0)
        assert rel <= 1e-6 and rel0 <= 1e-6, (name, ddp[name], rank0[name], single[name])
    print(f"DDP vs single process: worst relative difference {worst:.2e} over {METRIC_NAMES}")
