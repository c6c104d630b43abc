"""Splits, the on-disk cache, the samplers and the loaders of the data module."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

import dysonian_pl.data as data_mod
from dysonian_pl.data import (
    SPLITS,
    FreshSpectra,
    ShardedSampler,
    SpectraDataModule,
    SpectrumSet,
    cache_key,
    split_indices,
)
from dysonian_pl.params import ConfigError, SimulationConfig
from dysonian_pl.simulate import simulate

SIM = SimulationConfig(n_points=256)
N_SPECTRA = 60  # -> 42 train, 9 val, 9 test


def make(tmp_path: Path | None, **kw) -> SpectraDataModule:
    args = dict(sim=SIM, n_spectra=N_SPECTRA, seed=3, batch_size=8, num_workers=0)
    args.update(kw)
    return SpectraDataModule(cache_dir=None if tmp_path is None else str(tmp_path), **args)


def folders(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()}


class CountingSimulate:
    """Stands in for dysonian_pl.data.simulate: counts calls, or refuses them."""

    def __init__(self, refuse: bool = False) -> None:
        self.calls: list[int] = []
        self.refuse = refuse

    def __call__(self, sim, seed, index, **kw):
        if self.refuse:
            raise AssertionError("simulate() called: the cache was not reused")
        self.calls.append(len(index))
        return simulate(sim, seed, index, **kw)


# ---------------------------------------------------------------- splits
@pytest.mark.parametrize("n", [10, 90, 1001])
def test_split_indices_disjoint_covering_sized(n: int) -> None:
    s = split_indices(n, (0.7, 0.15, 0.15), seed=0)
    n_train, n_val = round(0.7 * n), round(0.15 * n)
    assert [len(s[k]) for k in SPLITS] == [n_train, n_val, n - n_train - n_val]
    allidx = np.concatenate([s[k] for k in SPLITS])
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))
    for k in SPLITS:
        assert np.all(np.diff(s[k]) > 0)  # sorted, no repeats
    # seeded: the same seed the same split, another seed another split
    again = split_indices(n, (0.7, 0.15, 0.15), seed=0)
    other = split_indices(n, (0.7, 0.15, 0.15), seed=1)
    assert all(np.array_equal(s[k], again[k]) for k in SPLITS)
    assert not np.array_equal(s["val"], other["val"])


def test_split_sizes_of_the_tiny_cli_data() -> None:
    s = split_indices(90, (0.7, 0.15, 0.15), seed=0)
    assert {k: len(v) for k, v in s.items()} == {"train": 63, "val": 14, "test": 13}


def test_module_argument_errors() -> None:
    with pytest.raises(ConfigError, match=r"data\.n_spectra: must be >= 3 \(got 2\)"):
        make(None, n_spectra=2)
    with pytest.raises(ConfigError, match=r"data\.split: need three positive fractions"):
        make(None, split=(0.8, 0.15, 0.1))
    with pytest.raises(ConfigError, match=r"data\.batch_size: must be >= 1 \(got 0\)"):
        make(None, batch_size=0)
    with pytest.raises(ConfigError, match=r"data\.num_workers: must be >= 0 \(got -1\)"):
        make(None, num_workers=-1)
    with pytest.raises(ConfigError, match=r"leave the test split empty"):
        make(None, n_spectra=5)


def test_init_generates_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(data_mod, "simulate", CountingSimulate(refuse=True))
    dm = make(tmp_path / "cache", fresh_train=True)
    assert dm.sets == {}
    assert not (tmp_path / "cache").exists()
    # a dict sim (as LightningCLI or a checkpoint passes it) is the same config
    assert make(None, sim=SIM.to_dict()).sim == SIM


# ---------------------------------------------------------------- cache
def test_prepare_writes_one_folder_per_split_named_by_key(tmp_path: Path) -> None:
    dm = make(tmp_path)
    dm.prepare_data()
    expected = {
        f"{name}-{cache_key(SIM, 3, N_SPECTRA, (0.7, 0.15, 0.15), name)}" for name in SPLITS
    }
    assert folders(tmp_path) == expected
    for name in SPLITS:
        folder = tmp_path / f"{name}-{cache_key(SIM, 3, N_SPECTRA, (0.7, 0.15, 0.15), name)}"
        assert folders(folder) == {"x.npy", "y.npy", "index.npy", "meta.json"}
        x, y = np.load(folder / "x.npy"), np.load(folder / "y.npy")
        ref_x, ref_y = simulate(SIM, 3, dm.indices[name])
        np.testing.assert_array_equal(x, ref_x.numpy())
        np.testing.assert_array_equal(y, ref_y.numpy())
        np.testing.assert_array_equal(np.load(folder / "index.npy"), dm.indices[name])
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["n"] == len(dm.indices[name]) and meta["n_points"] == 256
    # fresh training spectra: only validation and test are stored
    fresh = tmp_path / "fresh"
    make(fresh, fresh_train=True).prepare_data()
    assert {n.split("-")[0] for n in folders(fresh)} == {"val", "test"}


def test_changed_config_gets_its_own_folders(tmp_path: Path) -> None:
    make(tmp_path).prepare_data()
    first = folders(tmp_path)
    make(tmp_path, sim=SIM.replace(dB=(3.0, 50.0))).prepare_data()
    second = folders(tmp_path) - first
    assert len(second) == 3 and not (second & first)
    make(tmp_path, seed=4).prepare_data()
    assert len(folders(tmp_path)) == 9
    assert not any(".tmp-" in n for n in folders(tmp_path))


def test_same_config_reuses_the_cache(tmp_path: Path, monkeypatch) -> None:
    make(tmp_path).prepare_data()
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npy")}
    monkeypatch.setattr(data_mod, "simulate", CountingSimulate(refuse=True))
    dm = make(tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npy")} == mtimes
    assert isinstance(dm.sets["val"], SpectrumSet)
    assert isinstance(dm.sets["val"].x, np.memmap)  # read from disk, memory-mapped


def _val_folder(tmp_path: Path) -> Path:
    (folder,) = tmp_path.glob("val-*")
    return folder


@pytest.mark.parametrize("damage", ["truncate-x", "meta-seed", "meta-missing", "y-shape"])
def test_damaged_cache_is_regenerated_not_read(tmp_path: Path, monkeypatch, damage) -> None:
    make(tmp_path).prepare_data()
    folder = _val_folder(tmp_path)
    size = (folder / "x.npy").stat().st_size
    if damage == "truncate-x":
        with open(folder / "x.npy", "r+b") as fh:
            fh.truncate(size // 2)
    elif damage == "meta-seed":
        meta = json.loads((folder / "meta.json").read_text())
        meta["seed"] = 99
        (folder / "meta.json").write_text(json.dumps(meta))
    elif damage == "meta-missing":
        (folder / "meta.json").unlink()
    else:
        np.save(folder / "y.npy", np.zeros((5, 3)))
    spy = CountingSimulate()
    monkeypatch.setattr(data_mod, "simulate", spy)
    dm = make(tmp_path)
    dm.setup("validate")  # without prepare_data: setup must notice too
    x = np.asarray(dm.sets["val"].x)
    y = np.asarray(dm.sets["val"].y)
    ref_x, ref_y = simulate(SIM, 3, dm.indices["val"])
    np.testing.assert_array_equal(x, ref_x.numpy())
    np.testing.assert_array_equal(y, ref_y.numpy())
    assert len(dm.indices["val"]) in spy.calls  # regenerated
    assert (folder / "x.npy").stat().st_size == size  # rewritten whole
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["seed"] == 3
    assert not any(".tmp-" in n for n in folders(tmp_path))


def test_interrupted_write_leaves_no_folder(tmp_path: Path, monkeypatch) -> None:
    def broken_fsync(fd):
        raise OSError("disk full")

    real_fsync = os.fsync
    monkeypatch.setattr(data_mod.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        make(tmp_path).prepare_data()
    assert list(tmp_path.iterdir()) == []  # no half-written folder, no .tmp- left
    monkeypatch.setattr(data_mod.os, "fsync", real_fsync)
    make(tmp_path).prepare_data()
    assert len(folders(tmp_path)) == 3
    assert not any(".tmp-" in n for n in folders(tmp_path))


def test_in_memory_without_cache_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    dm = make(None)
    dm.prepare_data()
    dm.setup("fit")
    assert list(tmp_path.iterdir()) == []
    ref, _ = simulate(SIM, 3, dm.indices["train"])
    assert torch.equal(torch.as_tensor(dm.sets["train"].x), ref)


# ---------------------------------------------------------------- samplers
def test_sharded_eval_partitions_exactly_once_without_padding() -> None:
    positions = np.arange(11) + 100
    for world in (2, 3):
        shards = [
            list(ShardedSampler(positions, seed=0, shuffle=False, rank=r, world_size=world))
            for r in range(world)
        ]
        lengths = [
            len(ShardedSampler(positions, seed=0, shuffle=False, rank=r, world_size=world))
            for r in range(world)
        ]
        assert lengths == [len(s) for s in shards]
        flat = sorted(sum(shards, []))
        assert flat == positions.tolist()  # each exactly once, nothing padded
    assert [len(s) for s in shards] == [4, 4, 3]


def test_sharded_train_equal_disjoint_and_reshuffled_per_epoch() -> None:
    positions = np.arange(11)
    samplers = [
        ShardedSampler(positions, seed=5, shuffle=True, rank=r, world_size=2, even=True)
        for r in range(2)
    ]
    epochs = []
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        shards = [list(s) for s in samplers]
        assert [len(s) for s in shards] == [5, 5] == [len(s) for s in samplers]
        assert not set(shards[0]) & set(shards[1])
        assert set(shards[0]) | set(shards[1]) <= set(positions.tolist())
        epochs.append(shards)
    assert epochs[0] != epochs[1]  # a new order each epoch
    # the same on every rank's copy: rank 0 of a fresh sampler reproduces the shard
    again = ShardedSampler(positions, seed=5, shuffle=True, rank=0, world_size=2, even=True)
    again.set_epoch(1)
    assert list(again) == epochs[1][0]


def test_fresh_train_indices_new_every_epoch_and_never_val_or_test(tmp_path: Path) -> None:
    dm = make(None, fresh_train=True)
    dm.setup("fit")
    assert isinstance(dm.sets["train"], FreshSpectra)
    loader = dm.train_dataloader()
    n_train = len(dm.indices["train"])
    seen = []
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        idx = list(loader.sampler)
        assert len(idx) == n_train and len(set(idx)) == n_train
        assert min(idx) >= N_SPECTRA
        seen.append(set(idx))
    assert not seen[0] & seen[1]
    assert seen[0] == set(range(N_SPECTRA, N_SPECTRA + n_train))
    held_out = set(dm.indices["val"].tolist()) | set(dm.indices["test"].tolist())
    assert not (seen[0] | seen[1]) & held_out
    # what the loader serves is simulate() of exactly those indices
    loader.sampler.set_epoch(1)
    x, y = next(iter(loader))
    first = sorted(seen[1])[:8]
    ref_x, ref_y = simulate(SIM, 3, np.array(first))
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)


# ---------------------------------------------------------------- loaders
def test_loader_batches_shapes_dtypes_and_content(tmp_path: Path) -> None:
    dm = make(tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    n_train = len(dm.indices["train"])
    batches = list(dm.train_dataloader())
    assert [len(b[0]) for b in batches] == [8] * (n_train // 8) + [n_train % 8]
    for x, y in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (256,)
        assert y.dtype == torch.float64 and y.shape == (len(x), 3)
    # the training split, each spectrum once per epoch, shuffled
    ref_x, ref_y = simulate(SIM, 3, dm.indices["train"])
    got_y = torch.cat([y for _, y in batches])
    order = torch.argsort(got_y[:, 0])
    assert torch.equal(got_y[order], ref_y[torch.argsort(ref_y[:, 0])])
    assert not torch.equal(got_y, ref_y)
    # validation: in order, complete, equal to the simulator
    val = list(dm.val_dataloader())
    assert torch.equal(torch.cat([x for x, _ in val]), simulate(SIM, 3, dm.indices["val"])[0])


def test_loader_flags_without_workers_or_cuda(tmp_path: Path) -> None:
    dm = make(tmp_path, num_workers=0, persistent_workers=True, pin_memory=True)
    dm.setup("validate")
    loader = dm.val_dataloader()
    assert loader.num_workers == 0
    assert loader.persistent_workers is False
    assert loader.pin_memory is False  # no trainer: not on CUDA
    dm.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    loader = dm.val_dataloader()
    assert loader.pin_memory is False
    assert loader.sampler.world_size == 1 and loader.sampler.rank == 0
    dm2 = make(tmp_path, num_workers=2, persistent_workers=True)
    dm2.setup("validate")
    loader2 = dm2.val_dataloader()
    assert loader2.num_workers == 2 and loader2.persistent_workers is True


def test_spectrum_set_getitems_keeps_request_order() -> None:
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(30, dtype=np.float64).reshape(10, 3)
    ds = SpectrumSet(x, y)
    bx, by = ds.__getitems__([7, 2, 9, 2])
    assert bx[:, 0].tolist() == [14.0, 4.0, 18.0, 4.0]
    assert by[:, 0].tolist() == [21.0, 6.0, 27.0, 6.0]
    one_x, one_y = ds[4]
    assert one_x.tolist() == [8.0, 9.0] and one_y.dtype == torch.float64


def test_fresh_spectra_served_from_blocks_equal_direct_simulation() -> None:
    import torch

    from dysonian_pl.data import FreshSpectra
    from dysonian_pl.params import SimulationConfig
    from dysonian_pl.simulate import simulate

    sim = SimulationConfig(n_points=128)
    ds = FreshSpectra(sim, 5, 1 << 62, block=7, epoch_start=40, epoch_length=30)
    calls = []
    import dysonian_pl.data as data_mod

    real = data_mod.simulate

    def counting(*a, **k):
        calls.append(len(a[2]))
        return real(*a, **k)

    data_mod.simulate = counting
    try:
        for epoch in range(2):
            for rank in range(2):  # rank r of 2 takes every second index of the epoch
                idx = (40 + epoch * 30 + np.arange(30))[rank::2]
                for b in range(0, len(idx), 4):
                    x, y = ds.__getitems__(idx[b : b + 4].tolist())
                    rx, ry = simulate(sim, 5, idx[b : b + 4])
                    # the same spectra, to float32 rounding (as for any chunking)
                    torch.testing.assert_close(x, rx, rtol=0, atol=1e-6)
                    assert torch.equal(y, ry)
        # blocks of whole batches (4 of 7 -> 4) that never run past the epoch:
        # each spectrum simulated once
        assert all(c <= 7 for c in calls) and sum(calls) == 2 * 2 * 15
        x, _ = ds.__getitems__([3, 11, 2])  # not an even progression: simulated directly
        torch.testing.assert_close(x, simulate(sim, 5, [3, 11, 2])[0], rtol=0, atol=0)
    finally:
        data_mod.simulate = real
