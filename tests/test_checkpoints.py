"""Checkpoints load as tensors and plain containers only (trainers/checkpoints.py): a file
that needs the full unpickler is refused, whatever it would run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from store.runs import CHECKPOINT_FILE
from trainers.checkpoints import UnsafeCheckpointError, load_checkpoint

RAN: list[str] = []


def _run(tag: str) -> None:
    RAN.append(tag)


class Planted:
    """Stands for any object a writer of shared storage could plant in a checkpoint: the
    full unpickler would call ``_run`` while loading it."""

    def __reduce__(self):
        return _run, ("unpickled",)


def test_a_checkpoint_of_tensors_and_containers_loads(tmp_path: Path):
    payload = {"model": {"w": torch.arange(3.0)}, "state": {"epoch": 2, "lr": 0.001,
                                                            "stopped_early": False},
               "sizes": {"num_items": 7}, "protocol": "slices", "seeds": {"train.seed": 1}}
    torch.save(payload, tmp_path / CHECKPOINT_FILE)
    loaded = load_checkpoint(tmp_path)
    assert torch.equal(loaded["model"]["w"], payload["model"]["w"])
    assert {k: v for k, v in loaded.items() if k != "model"} == {
        k: v for k, v in payload.items() if k != "model"}


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path: Path):
    torch.save({"model": {"w": torch.ones(2)}, "extra": Planted()}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(UnsafeCheckpointError, match="holds pickled Python objects.*not loaded"):
        load_checkpoint(tmp_path)
    assert RAN == []  # nothing of the file ran
