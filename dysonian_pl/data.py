"""Simulated spectra for Lightning: datasets that fetch whole batches, samplers that shard by rank.

Split: indices 0..n_spectra-1 are permuted by the seed and cut 70/15/15 (train, val,
test). With ``fresh_train`` the training set is instead new spectra every epoch,
drawn from indices >= n_spectra (epoch e uses n_spectra + e * n_train + j), which
never meet the validation and test indices.

Ranks: the samplers shard explicitly by (rank, world size), so every sample of the
validation and test splits is seen exactly once across ranks (uneven shards, no
padding) and training shards are equal-sized (no rank waits at a gradient sync).
The Trainer therefore runs with ``use_distributed_sampler=False`` (set by the CLI).

Cache: generated splits are stored as ``.npy`` files (read memory-mapped) in a
folder named by a hash of the full simulation config, seed, size and split, written
under a temporary name and renamed into place, so an interrupted write never leaves
a folder that is later read as valid, and a changed config never reuses a stale cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .params import ConfigError, SimulationConfig
from .simulate import simulate

#: Bumped whenever the simulator's output for a given config changes.
SIMULATOR_VERSION = 1
SPLITS = ("train", "val", "test")


def split_indices(
    n: int, fractions: tuple[float, float, float], seed: int
) -> dict[str, np.ndarray]:
    """Disjoint index sets for train/val/test, a seeded permutation of 0..n-1."""
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return {
        "train": np.sort(perm[:n_train]),
        "val": np.sort(perm[n_train : n_train + n_val]),
        "test": np.sort(perm[n_train + n_val :]),
    }


def cache_key(
    sim: SimulationConfig, seed: int, n_spectra: int, split: tuple[float, ...], name: str
) -> str:
    payload = json.dumps(
        {
            "sim": sim.to_dict(),
            "seed": seed,
            "n_spectra": n_spectra,
            "split": list(split),
            "name": name,
            "version": SIMULATOR_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _write_split_atomically(
    folder: Path, x: torch.Tensor, y: torch.Tensor, index: np.ndarray, meta: dict
) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        np.save(tmp / "x.npy", x.numpy())
        np.save(tmp / "y.npy", y.numpy())
        np.save(tmp / "index.npy", index)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        try:
            os.rename(tmp, folder)  # atomic; fails if another process got there first
        except OSError:
            if not (folder / "meta.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _read_split(folder: Path, meta: dict) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        stored = json.loads((folder / "meta.json").read_text())
        if stored != meta:
            return None
        x = np.load(folder / "x.npy", mmap_mode="r")
        y = np.load(folder / "y.npy")
    except (OSError, ValueError):
        return None
    if x.shape != (meta["n"], meta["n_points"]) or y.shape != (meta["n"], 3):
        return None
    return x, y


class SpectrumSet(Dataset):
    """A split held as arrays (memory-mapped when cached); fetches whole batches."""

    def __init__(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(idx)
        order = np.argsort(idx)  # sorted reads are sequential on a memory map
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        x = torch.as_tensor(np.asarray(self.x[idx[order]]))[inv]
        y = torch.as_tensor(np.asarray(self.y[idx[order]]), dtype=torch.float64)[inv]
        return x, y


class FreshSpectra(Dataset):
    """Simulates requested batches on the fly: sample i is simulate(sim, seed, i).

    Batches whose indices step evenly (what the fresh-training sampler yields: i, i+w,
    i+2w, ... for rank r of w) are served from a block of whole batches (about `block`
    spectra) simulated ahead along the same progression, without passing `stop` (the end of the epoch's
    indices when `epoch_start`/`epoch_length` are given): one simulator call per block
    instead of per batch, the same spectra. Other requests are simulated directly.
    """

    def __init__(
        self,
        sim: SimulationConfig,
        seed: int,
        length: int,
        *,
        block: int = 1024,
        epoch_start: int = 0,
        epoch_length: int = 0,
    ) -> None:
        self.sim, self.seed, self.length = sim, seed, length
        self.block, self.epoch_start, self.epoch_length = block, epoch_start, epoch_length
        self._cache: tuple[int, int, torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def _block_end(self, first: int) -> int | None:
        """First index after the epoch that `first` belongs to (None: no epochs)."""
        if self.epoch_length <= 0 or first < self.epoch_start:
            return None
        epoch = (first - self.epoch_start) // self.epoch_length
        return self.epoch_start + (epoch + 1) * self.epoch_length

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(idx, dtype=np.int64)
        step = int(idx[1] - idx[0]) if len(idx) > 1 else 1
        if (
            self.block <= 1
            or step < 1
            or not np.array_equal(idx, idx[0] + step * np.arange(len(idx)))
        ):
            return simulate(self.sim, self.seed, idx)
        c = self._cache
        if c is not None and c[1] == step and (idx[0] - c[0]) % step == 0:
            k = (int(idx[0]) - c[0]) // step
            if 0 <= k and k + len(idx) <= len(c[2]):
                return c[2][k : k + len(idx)], c[3][k : k + len(idx)]
        count = max(self.block // len(idx), 1) * len(idx)  # whole batches: no overlap
        end = self._block_end(int(idx[0]))
        if end is not None:
            count = max(len(idx), min(count, -(-(end - int(idx[0])) // step)))
        block = idx[0] + step * np.arange(count, dtype=np.int64)
        x, y = simulate(self.sim, self.seed, block)
        self._cache = (int(idx[0]), step, x, y)
        return x[: len(idx)], y[: len(idx)]


def _pass_through(batch):
    return batch


class ShardedSampler(Sampler[int]):
    """Yields this rank's share of `positions` (optionally shuffled per epoch).

    ``even=True`` (training) drops the remainder so every rank has the same count;
    ``even=False`` (evaluation) gives every position to exactly one rank.
    ``offset_per_epoch`` shifts positions by epoch * offset (fresh spectra each epoch).
    """

    def __init__(
        self,
        positions: np.ndarray,
        *,
        seed: int,
        shuffle: bool,
        rank: int = 0,
        world_size: int = 1,
        even: bool = False,
        offset_per_epoch: int = 0,
    ) -> None:
        self.positions = np.asarray(positions, dtype=np.int64)
        self.seed, self.shuffle, self.even = seed, shuffle, even
        self.rank, self.world_size = rank, world_size
        self.offset_per_epoch = offset_per_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _mine(self) -> np.ndarray:
        pos = self.positions + self.epoch * self.offset_per_epoch
        if self.shuffle:
            g = np.random.Generator(np.random.PCG64([self.seed, self.epoch]))
            pos = pos[g.permutation(len(pos))]
        if self.even:
            pos = pos[: len(pos) - len(pos) % self.world_size]
        return pos[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._mine().tolist())

    def __len__(self) -> int:
        n = len(self.positions)
        if self.even:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))


class SpectraDataModule(L.LightningDataModule):
    """Simulated Dysonian spectra, split 70/15/15 by seed, cached on disk.

    Args:
        sim: the simulation config (ranges, window, points, geometry, augmentations).
        n_spectra: spectra in the fixed data set that is split 70/15/15.
        seed: seeds the simulator and the split.
        split: train/val/test fractions (sum 1).
        fresh_train: train on new spectra every epoch (n_train of them) instead of the
            fixed training split; validation and test stay fixed.
        batch_size: per device.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory; applied only when a CUDA device trains.
        persistent_workers: keep workers between epochs; applied only when num_workers > 0.
        cache_dir: where generated splits are stored; None keeps them in memory only.
    """

    def __init__(
        self,
        sim: SimulationConfig = SimulationConfig(),  # noqa: B008 - frozen dataclass
        n_spectra: int = 10_000,
        seed: int = 0,
        split: tuple[float, float, float] = (0.7, 0.15, 0.15),
        fresh_train: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        cache_dir: str | None = ".cache/dysonian_pl",
    ) -> None:
        super().__init__()
        if isinstance(sim, dict):
            sim = SimulationConfig.from_dict(sim)
        if n_spectra < 3:
            raise ConfigError(f"data.n_spectra: must be >= 3 (got {n_spectra})")
        if (
            len(split) != 3
            or any(f <= 0 for f in split)
            or not math.isclose(sum(split), 1.0, abs_tol=1e-6)
        ):
            raise ConfigError(
                f"data.split: need three positive fractions summing to 1 (got {list(split)})"
            )
        if batch_size < 1:
            raise ConfigError(f"data.batch_size: must be >= 1 (got {batch_size})")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers: must be >= 0 (got {num_workers})")
        self.sim = sim
        self.n_spectra, self.seed, self.split = n_spectra, seed, tuple(split)
        self.fresh_train = fresh_train
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self.cache_dir = cache_dir
        self.indices = split_indices(n_spectra, self.split, seed)
        for name, idx in self.indices.items():
            if len(idx) == 0:
                raise ConfigError(
                    f"data.n_spectra: {n_spectra} spectra leave the {name} split empty"
                )
        self.sets: dict[str, Dataset] = {}
        self.save_hyperparameters(ignore=["sim"])
        self.hparams["sim"] = sim.to_dict()  # plain types, equal to the model's copy

    # ---- generation and cache -------------------------------------------------------

    def _meta(self, name: str) -> dict:
        return {
            "key": cache_key(self.sim, self.seed, self.n_spectra, self.split, name),
            "n": int(len(self.indices[name])),
            "n_points": self.sim.n_points,
            "sim": self.sim.to_dict(),
            "seed": self.seed,
            "version": SIMULATOR_VERSION,
        }

    def _folder(self, name: str) -> Path:
        assert self.cache_dir is not None
        return Path(self.cache_dir).expanduser() / f"{name}-{self._meta(name)['key']}"

    def _needed(self) -> tuple[str, ...]:
        return ("val", "test") if self.fresh_train else SPLITS

    def prepare_data(self) -> None:
        if self.cache_dir is None:
            return
        for name in self._needed():
            folder, meta = self._folder(name), self._meta(name)
            if _read_split(folder, meta) is None:
                if folder.exists():  # stale or damaged: move aside, never read
                    shutil.rmtree(folder, ignore_errors=True)
                x, y = simulate(self.sim, self.seed, self.indices[name])
                _write_split_atomically(folder, x, y, self.indices[name], meta)

    def _load(self, name: str) -> Dataset:
        if self.cache_dir is not None:
            got = _read_split(self._folder(name), self._meta(name))
            if got is None:  # prepare_data did not run here (e.g. another node): make it
                self.prepare_data()
                got = _read_split(self._folder(name), self._meta(name))
            if got is not None:
                return SpectrumSet(*got)
        x, y = simulate(self.sim, self.seed, self.indices[name])
        return SpectrumSet(x, y)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(
            stage or "", SPLITS
        )
        for name in wanted:
            if name in self.sets:
                continue
            if name == "train" and self.fresh_train:
                n_train = len(self.indices["train"])
                self.sets[name] = FreshSpectra(
                    self.sim,
                    self.seed,
                    1 << 62,
                    epoch_start=self.n_spectra,
                    epoch_length=n_train,
                )
            else:
                self.sets[name] = self._load(name)

    # ---- loaders ----------------------------------------------------------------------

    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        if t is None:
            return 0, 1
        return t.global_rank, t.world_size

    def _loader(self, name: str) -> DataLoader:
        rank, world = self._rank_world()
        n_train = len(self.indices["train"])
        if name == "train" and self.fresh_train:
            sampler = ShardedSampler(
                np.arange(n_train) + self.n_spectra,
                seed=self.seed, shuffle=False, rank=rank, world_size=world,
                even=True, offset_per_epoch=n_train,
            )  # fmt: skip
        elif name == "train":
            sampler = ShardedSampler(
                np.arange(n_train),
                seed=self.seed,
                shuffle=True,
                rank=rank,
                world_size=world,
                even=True,
            )
        else:
            sampler = ShardedSampler(
                np.arange(len(self.indices[name])),
                seed=self.seed,
                shuffle=False,
                rank=rank,
                world_size=world,
            )
        on_cuda = bool(
            self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        )
        workers = self.num_workers
        return DataLoader(
            self.sets[name],
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=_pass_through,
            num_workers=workers,
            pin_memory=self.pin_memory and on_cuda,
            persistent_workers=self.persistent_workers and workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        if "test" not in self.sets:
            self.setup("test")
        return self._loader("test")
