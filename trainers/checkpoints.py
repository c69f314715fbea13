"""Reading a training checkpoint (``state.pt``, store/runs.py) without unpickling code.

A checkpoint holds tensors and plain containers only (model and optimizer state dicts, the
run's counters, sizes and protocol name), so it loads with
``torch.load(..., weights_only=True)``. A work folder on shared storage (NFS, ``hdfs://``,
``s3a://``) is writable by others; a file there that needs the full unpickler is refused
with one clear error instead of running whatever it holds.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from store.runs import CHECKPOINT_FILE


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds pickled Python objects, which training never writes."""


def load_checkpoint(folder: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The payload of ``<folder>/state.pt`` on ``device``.

    Raises:
        UnsafeCheckpointError: the file holds anything but tensors and plain containers.
    """
    return load_weights(Path(folder) / CHECKPOINT_FILE, device)


def load_weights(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A file of tensors and plain containers (a checkpoint's ``state.pt``, a logged model's
    ``weights.pt``) on ``device``.

    Raises:
        UnsafeCheckpointError: the file holds anything else.
    """
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path} holds pickled Python objects, which seqrec checkpoints never do; it was "
            "not written by training and is not loaded (it could run code). Remove the run "
            f"directory and train again. ({str(exc).splitlines()[0]})") from None
