"""What a run writes to TensorBoard, read back with TensorBoard's own event reader."""

from __future__ import annotations

import math

import pytest
import yaml
from conftest import TINY_N_POINTS, TINY_SPLIT_SIZES
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

EPOCHS = 2
NAMES = ("B0", "dB", "p")


@pytest.fixture(scope="module")
def events(tiny_run) -> EventAccumulator:
    guidance = {
        "scalars": 0, "images": 0, "tensors": 0, "histograms": 0,
        "compressedHistograms": 0, "audio": 0,
    }  # fmt: skip
    acc = EventAccumulator(str(tiny_run.log_dir), size_guidance=guidance)
    acc.Reload()
    return acc


def values(acc: EventAccumulator, tag: str) -> list[float]:
    return [e.value for e in acc.Scalars(tag)]


def test_training_and_validation_scalars(events) -> None:
    tags = set(events.Tags()["scalars"])
    # log_every_n_steps 50 > 4 steps per epoch: the per-step curve is empty, the epoch one not
    assert "train/loss_epoch" in tags or "train/loss_step" in tags
    assert len(values(events, "train/loss_epoch")) == EPOCHS
    expected = {"val/loss"} | {f"val/{n}_{k}" for n in NAMES for k in ("R2", "RMSE", "MAE")}
    assert expected <= tags, sorted(expected - tags)
    for tag in expected | {"train/loss_epoch"}:
        v = values(events, tag)
        assert len(v) == EPOCHS, tag  # one point per epoch, none from the sanity check
        assert all(math.isfinite(x) for x in v), tag
    steps = [e.step for e in events.Scalars("val/loss")]
    assert steps == sorted(steps) and len(set(steps)) == EPOCHS
    for n in NAMES:
        rmse, mae = values(events, f"val/{n}_RMSE"), values(events, f"val/{n}_MAE")
        assert all(r >= m * (1 - 1e-6) >= 0 for r, m in zip(rmse, mae, strict=True))


def test_learning_rate_monitor(events) -> None:
    tags = set(events.Tags()["scalars"])
    lr_tags = sorted(t for t in tags if t.startswith("lr-"))
    assert lr_tags == ["lr-AdamW"]
    # the default CosineBudget at each epoch start: warm-up (step + 1) / 100 times the
    # cosine factor at step / total steps (4 steps per epoch here), lr 4e-3
    steps_per_epoch, total = 4, 4 * EPOCHS
    want = []
    for epoch in range(EPOCHS):
        k = epoch * steps_per_epoch
        decay = 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * k / total))
        want.append(4e-3 * (k + 1) / 100 * decay)
    assert values(events, "lr-AdamW") == pytest.approx(want, rel=1e-5)


def test_performance_scalars(events) -> None:
    n_train = TINY_SPLIT_SIZES["train"]
    t = values(events, "perf/epoch_time_s")
    rate = values(events, "perf/samples_per_s")
    wait = values(events, "perf/data_wait_fraction")
    rss = values(events, "perf/peak_rss_mb")
    assert len(t) == len(rate) == len(wait) == len(rss) == EPOCHS
    for ti, ri, wi, mi in zip(t, rate, wait, rss, strict=True):
        assert 0 < ti < 600
        # samples/s is the epoch's training samples (fresh spectra, 63 of them) over its time
        assert ri * ti == pytest.approx(n_train, rel=1e-3)
        assert 0 <= wi <= 1
        assert 100 < mi < 64_000  # MiB: torch alone is over 100
    assert rss == sorted(rss)  # a peak never goes down


def test_parity_images(events) -> None:
    assert events.Tags()["images"] == ["val/parity"]
    images = events.Images("val/parity")
    assert len(images) == EPOCHS  # one per validation epoch, not for the sanity check
    for img in images:
        assert img.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
        # three panels side by side, 4 x 3.6 inches each
        assert img.width > 2.5 * img.height > 0


def test_hyperparameters(events, tiny_run) -> None:
    content = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in content
    assert b"sim/n_points" in content["_hparams_/session_start_info"]
    hp = yaml.full_load((tiny_run.log_dir / "hparams.yaml").read_text())
    assert hp["width"] == 8 and hp["arch"] == "fast"
    assert hp["n_spectra"] == 90 and hp["batch_size"] == 16
    assert hp["sim"]["n_points"] == TINY_N_POINTS
    assert list(hp["sim"]["window"]) == [3256.0, 3455.9]
    # LightningCLI's own copy of the resolved run
    cfg = yaml.safe_load((tiny_run.log_dir / "config.yaml").read_text())
    assert cfg["data"]["sim"]["n_points"] == TINY_N_POINTS
    assert cfg["trainer"]["max_epochs"] == EPOCHS


def test_test_scalars_after_fit(events, tiny_run) -> None:
    summary = tiny_run.cli.model.test_summary
    tags = set(events.Tags()["scalars"])
    assert set(summary) | {"test/loss"} <= tags
    for key, value in summary.items():
        (logged,) = values(events, key)  # logged once, by the final test
        assert logged == pytest.approx(value, rel=1e-6), key
