"""Test helpers for the training and evaluation tests: hand-written index folders in the
documented Parquet contract (docs/architecture.md, "Evaluation protocols") for each protocol,
and two tiny registered models.

The models are registered under the test-only names ``test_tiny`` (slice sets) and
``test_tiny_seq`` (sequence, plus feedback labels where fed); Ray workers import this module
by name (the trainer passes the model's module), so tests put this folder on the workers'
PYTHONPATH.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

from conf.loading import load_config
from conf.schema import ModelConfig, PipelineConfig
from trainers.embedding import RowSparseEmbedding
from trainers.registry import Batch, DataSizes, ModelParams, Output, register

T, S = 5, 3  # slices, set size
NUM_USERS, NUM_ITEMS = 30, 40
EVAL_NEGATIVES = 9
TARGETS = {"train": T - 3, "valid": T - 2, "test": T - 1}


class TinyParams(ModelParams):
    dim: int


@register("test_tiny")
class TinyModel(nn.Module):
    """Score = <W (u + mean of the user's history items), v>; enough to learn popularity."""

    Params: ClassVar[type[ModelParams]] = TinyParams
    inputs: ClassVar[frozenset[str]] = frozenset({"slice_sets"})

    def __init__(self, params: TinyParams, sizes: DataSizes) -> None:
        super().__init__()
        self.sizes = sizes
        self.embedding = RowSparseEmbedding(1 + sizes.num_users + sizes.num_items, params.dim,
                                            0.1)
        self.proj = nn.Linear(params.dim, params.dim)

    def forward(self, batch: Batch) -> Output:
        U = self.sizes.num_users
        history = batch["user_sets"][:, :, 0]  # (B, H, S) items
        hist = self.embedding(history + U * (history > 0)).mean(dim=(1, 2))  # (B, d)
        u = self.embedding(batch["user"])  # (B, d)
        v = self.embedding(batch["items"] + U)  # (B, C, d)
        return Output((self.proj(u + hist)[:, None, :] * v).sum(-1))  # (B, C)

    def loss(self, output: Output, batch: Batch) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(output.scores, batch["label"])

    def regularization(self) -> torch.Tensor:
        return sum(p.pow(2).sum() for p in self.parameters() if p.requires_grad) / 2


class TinySeqParams(ModelParams):
    dim: int


@register("test_tiny_seq")
class TinySequenceModel(nn.Module):
    """Score = <W (u + mean of history item (+ label) embeddings), v>: a sequence model that
    reads ``sequence_label`` when the protocol feeds it."""

    Params: ClassVar[type[ModelParams]] = TinySeqParams
    inputs: ClassVar[frozenset[str]] = frozenset({"sequence"})
    optional_inputs: ClassVar[frozenset[str]] = frozenset({"sequence_label"})

    def __init__(self, params: TinySeqParams, sizes: DataSizes) -> None:
        super().__init__()
        self.sizes = sizes
        self.embedding = nn.Embedding(1 + sizes.num_users + sizes.num_items, params.dim)
        self.label = nn.Embedding(2, params.dim)
        self.proj = nn.Linear(params.dim, params.dim)

    def forward(self, batch: Batch) -> Output:
        U = self.sizes.num_users
        sequence = batch["sequence"]  # (B, L)
        real = (sequence > 0).float()[..., None]  # (B, L, 1)
        history = self.embedding(sequence + U * (sequence > 0))  # (B, L, d)
        if "sequence_label" in batch:
            history = history + self.label(batch["sequence_label"])
        hist = (history * real).sum(1) / real.sum(1).clamp(min=1)  # (B, d)
        u = self.embedding(batch["user"])  # (B, d)
        v = self.embedding(batch["items"] + U)  # (B, C, d)
        return Output((self.proj(u + hist)[:, None, :] * v).sum(-1))  # (B, C)

    def loss(self, output: Output, batch: Batch) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(output.scores, batch["label"])

    def regularization(self) -> torch.Tensor:
        return torch.zeros(())  # no regularisation term


def tiny_config(root: Path, overrides: list[str] | None = None,
                model: str = "test_tiny") -> PipelineConfig:
    """A config with every path under ``root`` that fits the hand-written index
    (the ``work/index`` folder under ``root``) and runs a tiny model; the model section is
    replaced whole (the score preset's params would otherwise merge into it)."""
    cfg = load_config("sample", "score", "local", [
        f"paths.raw_dir={root}/raw", f"paths.work_dir={root}/work",
        f"tracking.uri=sqlite:///{root}/mlflow.db",
        f"tracking.artifact_location={root}/mlartifacts",
        f"dataset.num_slices={T}", f"index.set_size={S}",
        f"index.eval_negatives={EVAL_NEGATIVES}", "index.train_negatives=2",
        "train.batch_size=16", "train.eval_batch_size=7", "train.full_rank_users=8",
        "train.patience=5", "train.lr=0.05",
        *(overrides or []),
    ])
    return cfg.model_copy(update={"model": ModelConfig(name=model, params={"dim": 4})})


def _list_table(columns: dict[str, tuple[list, pa.DataType]]) -> pa.Table:
    return pa.table({k: pa.array(v, type=t) for k, (v, t) in columns.items()})


def write_index(work_dir: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``<work_dir>/index`` with users 1..NUM_USERS, items 1..NUM_ITEMS, T slices.

    Each user has one positive per slice (popular items more likely), so every split has
    NUM_USERS lists. Train lists carry 2 sampled negatives (the first one is a "real
    negative" for even users); valid/test carry EVAL_NEGATIVES.

    Returns:
        {"positives": (U+1, T) the positive item of each user and slice}.
    """
    rng = np.random.default_rng(seed)
    index = work_dir / "index"
    weights = np.linspace(2.0, 0.2, NUM_ITEMS)
    weights /= weights.sum()
    positives = np.zeros((NUM_USERS + 1, T), dtype=np.int64)
    positives[1:] = rng.choice(np.arange(1, NUM_ITEMS + 1), size=(NUM_USERS, T), p=weights)

    def sets(n_entities: int, n_other: int) -> pa.Table:
        rows = {"entity": [], "slice": [], "interaction": [], "co_interaction": []}
        for e in range(1, n_entities + 1):
            for t in range(T):
                if rng.random() < 0.2:
                    continue  # empty (entity, slice) pairs are absent
                rows["entity"].append(e)
                rows["slice"].append(t)
                rows["interaction"].append(rng.integers(1, n_other + 1, S).tolist())
                rows["co_interaction"].append(rng.integers(1, n_entities + 1, S).tolist())
        li = pa.list_(pa.int32())
        return _list_table({"entity": (rows["entity"], pa.int32()),
                            "slice": (rows["slice"], pa.int16()),
                            "interaction": (rows["interaction"], li),
                            "co_interaction": (rows["co_interaction"], li)})

    (index / "user_sets").mkdir(parents=True)
    (index / "item_sets").mkdir()
    pq.write_table(sets(NUM_USERS, NUM_ITEMS), index / "user_sets" / "part-0.parquet")
    pq.write_table(sets(NUM_ITEMS, NUM_USERS), index / "item_sets" / "part-0.parquet")

    for split, target in TARGETS.items():
        negatives = 2 if split == "train" else EVAL_NEGATIVES
        users, slices, cands, real = [], [], [], []
        for u in range(1, NUM_USERS + 1):
            pos = int(positives[u, target])
            pool = [i for i in range(1, NUM_ITEMS + 1) if i != pos]
            neg = rng.choice(pool, size=negatives, replace=False).tolist()
            users.append(u)
            slices.append(target)
            cands.append([pos, *neg])
            real.append(1 if split == "train" and u % 2 == 0 else 0)
        (index / "samples" / split).mkdir(parents=True)
        pq.write_table(_list_table({"user": (users, pa.int32()), "cut": (slices, pa.int32()),
                                    "candidates": (cands, pa.list_(pa.int32())),
                                    "real_negatives": (real, pa.int16()),
                                    "target_label": ([1] * len(users), pa.int8())}),
                       index / "samples" / split / "part-0.parquet")

    counts = np.zeros((NUM_ITEMS + 1, T), dtype=np.int64)
    for t in range(T):
        np.add.at(counts[:, t], positives[1:, t], 1)
    item, slc = counts.nonzero()
    (index / "item_popularity").mkdir()
    pq.write_table(_list_table({"item": (item.tolist(), pa.int32()),
                                "slice": (slc.tolist(), pa.int16()),
                                "count": (counts[item, slc].tolist(), pa.int64())}),
                   index / "item_popularity" / "part-0.parquet")

    (index / "sequences").mkdir()
    pq.write_table(_list_table({
        "user": (list(range(1, NUM_USERS + 1)), pa.int32()),
        "items": ([positives[u].tolist() for u in range(1, NUM_USERS + 1)], pa.list_(pa.int32())),
        "ts": ([[1000 * t for t in range(T)]] * NUM_USERS, pa.list_(pa.int64())),
        "slice": ([list(range(T))] * NUM_USERS, pa.list_(pa.int16())),
        "label": ([[1] * T] * NUM_USERS, pa.list_(pa.int8())),
    }), index / "sequences" / "part-0.parquet")

    manifest = {"stage": "index", "schema_version": 1, "input_hash": f"hand-{seed}",
                "config_hash": "hand", "protocol": "slices", "num_users": NUM_USERS,
                "num_items": NUM_ITEMS, "num_slices": T, "set_size": S,
                "target_slices": TARGETS}
    (index / "manifest.json").write_text(json.dumps(manifest))
    _write_id_maps(work_dir)
    return {"positives": positives, "counts": counts}


def _samples(path: Path, rows: list[tuple[int, int, list[int], int, int]]) -> None:
    """Write (user, cut, candidates, real_negatives, target_label) rows as one split."""
    path.mkdir(parents=True)
    user, cut, cand, real, label = (list(col) for col in zip(*rows))
    pq.write_table(_list_table({"user": (user, pa.int32()), "cut": (cut, pa.int32()),
                                "candidates": (cand, pa.list_(pa.int32())),
                                "real_negatives": (real, pa.int16()),
                                "target_label": (label, pa.int8())}), path / "part-0.parquet")


def write_sequence_index(work_dir: Path, protocol: str, seed: int = 0) -> dict:
    """Write ``<work_dir>/index`` for ``leave_one_out`` or ``feedback`` (no slices).

    Every user has 5..8 events (items drawn with a popularity slope, no repeats); under
    ``feedback`` an event is positive when ``(user + item) % 3 != 0`` (learnable), else
    negative; under ``leave_one_out`` every event is label 1. Rows (``cut`` = the target's
    position): leave_one_out, train n-3, valid n-2, test n-1 (one row per user each);
    feedback, train every position 1..n-3, valid n-2, test n-1 (per-user leave-one-out, the
    released code's split). Train rows carry 2 sampled negatives, valid/test EVAL_NEGATIVES
    (leave_one_out: the same fixed ones for valid and test), all never touched by the user.

    Returns:
        {"items": {user: [items]}, "labels": {user: [labels]}}.
    """
    if protocol not in ("leave_one_out", "feedback"):
        raise ValueError(protocol)
    rng = np.random.default_rng(seed)
    index = work_dir / "index"
    weights = np.linspace(2.0, 0.2, NUM_ITEMS)
    weights /= weights.sum()
    items, labels = {}, {}
    for u in range(1, NUM_USERS + 1):
        n = int(rng.integers(5, 9))
        items[u] = rng.choice(np.arange(1, NUM_ITEMS + 1), size=n, replace=False,
                              p=weights).tolist()
        labels[u] = ([1] * n if protocol == "leave_one_out"
                     else [int((u + i) % 3 != 0) for i in items[u]])
    splits = {"train": [], "valid": [], "test": []}
    for u in range(1, NUM_USERS + 1):
        n, unseen = len(items[u]), [i for i in range(1, NUM_ITEMS + 1) if i not in items[u]]
        fixed = rng.choice(unseen, size=EVAL_NEGATIVES, replace=False).tolist()
        train_cuts = [n - 3] if protocol == "leave_one_out" else list(range(1, n - 2))
        for cut in train_cuts:
            neg = rng.choice(unseen, size=2, replace=False).tolist()
            splits["train"].append((u, cut, [items[u][cut], *neg], 0, labels[u][cut]))
        for split, cut in (("valid", n - 2), ("test", n - 1)):
            neg = fixed if protocol == "leave_one_out" else \
                rng.choice(unseen, size=EVAL_NEGATIVES, replace=False).tolist()
            splits[split].append((u, cut, [items[u][cut], *neg], 0, labels[u][cut]))
    for split, rows in splits.items():
        _samples(index / "samples" / split, rows)
    users = list(range(1, NUM_USERS + 1))
    (index / "sequences").mkdir()
    pq.write_table(_list_table({
        "user": (users, pa.int32()),
        "items": ([items[u] for u in users], pa.list_(pa.int32())),
        "ts": ([[1000 * k for k in range(len(items[u]))] for u in users], pa.list_(pa.int64())),
        "label": ([labels[u] for u in users], pa.list_(pa.int8())),
    }), index / "sequences" / "part-0.parquet")
    manifest = {"stage": "index", "schema_version": 1, "input_hash": f"hand-{protocol}-{seed}",
                "config_hash": "hand", "protocol": protocol, "num_users": NUM_USERS,
                "num_items": NUM_ITEMS}
    (index / "manifest.json").write_text(json.dumps(manifest))
    _write_id_maps(work_dir)
    return {"items": items, "labels": labels}


def _write_id_maps(work_dir: Path) -> None:
    """``<work_dir>/ingest``'s id maps and manifest, as ingest writes them: original user ids
    1001.., item ids 5001.. (what a logged model carries, trainers/snapshot.py)."""
    ingest = work_dir / "ingest"
    for name, n, first in (("users", NUM_USERS, 1001), ("items", NUM_ITEMS, 5001)):
        (ingest / "id_maps" / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"raw": pa.array([str(first + i) for i in range(n)]),
                                 "idx": pa.array(range(1, n + 1), pa.int32())}),
                       ingest / "id_maps" / name / "part-0.parquet")
    (ingest / "manifest.json").write_text(json.dumps(
        {"stage": "ingest", "schema_version": 1, "input_hash": "hand", "config_hash": "hand",
         "string_ids": False}))
