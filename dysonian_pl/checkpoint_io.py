"""Lightning checkpoint IO that writes checkpoints atomically (`atomic.atomic_open`)."""

from __future__ import annotations

import io
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from .atomic import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that renames a complete, fsynced file into place.

    Lightning's own save writes through a temporary file in the system temp folder and
    moves it, which is a copy (not atomic) when that folder is on another file system.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        with atomic_open(path, "wb") as fh:
            fh.write(buf.getbuffer())
