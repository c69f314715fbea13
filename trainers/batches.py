"""Batches for any registered model, gathered from dense tensors by vectorised indexing.

The index stage's sets are loaded once per worker as dense int32 tensors
(``trainers/set_arrays.py``): ``users (U+1, T, 2, S)`` and ``items (I+1, T, 2, S)``. A batch
is a handful of advanced-indexing gathers over them, never a per-sample Python loop, so it
runs on whichever device holds the tensors.

History window (trainers/registry.py): a sample predicting slice ``t`` sees the H = T - 1
slices ``t - H .. t - 1``; positions before slice 0 are all-empty (zeros). Every split
(train predicts T-3, valid T-2, test T-1; 0-based) thus feeds the model the same H, and the
target slice itself never leaks into the window.

Legend: B batch, C candidates, H history slices, S set size, N samples in a split,
K sampled negatives per row, U users, I items, T slices.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from trainers.registry import Batch

_MAX_REJECTION_ROUNDS = 64  # a row still rejected after this many redraws has no valid item


@dataclass(frozen=True)
class Samples:
    """One split's candidate lists as tensors (from ``set_arrays.load_samples``).

    Attributes:
        user: (N,) int64 user_idx.
        slice: (N,) int64 target slice.
        candidates: (N, C) int64 item_idx, the positive at column 0.
        real_negatives: (N,) int64, how many of columns 1.. are real negative feedback
            (they come first and are never resampled).
    """

    user: torch.Tensor
    slice: torch.Tensor
    candidates: torch.Tensor
    real_negatives: torch.Tensor

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], device: torch.device | str = "cpu"
                    ) -> Samples:
        """Wrap the numpy dict of ``load_samples`` as int64 tensors on ``device``.

        Raises:
            ValueError: a field is missing or the lengths disagree.
        """
        missing = {"user", "slice", "candidates", "real_negatives"} - set(arrays)
        if missing:
            raise ValueError(f"samples lack fields {sorted(missing)}")
        n = len(arrays["user"])
        for key in ("slice", "candidates", "real_negatives"):
            if len(arrays[key]) != n:
                raise ValueError(f"samples field {key!r} has {len(arrays[key])} rows, user has {n}")
        if arrays["candidates"].ndim != 2:
            raise ValueError(f"samples candidates must be (N, C), got {arrays['candidates'].shape}")
        return cls(*(torch.as_tensor(np.asarray(arrays[k]), dtype=torch.int64, device=device)
                     for k in ("user", "slice", "candidates", "real_negatives")))

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def with_candidates(self, candidates: torch.Tensor) -> Samples:
        return Samples(self.user, self.slice, candidates, self.real_negatives)


@dataclass(frozen=True)
class PositiveSequences:
    """Every user's positive items in time order, CSR over users.

    Attributes:
        offsets: (U+2,) int64; user u's items are ``items[offsets[u]:offsets[u+1]]``.
        items: (E,) int64 item_idx in time order per user.
        keys: (E,) int64 ``user * T + slice`` of each item, non-decreasing (sorted by user,
            then time), so the items before a slice are found by ``searchsorted``.
        num_slices: T.
    """

    offsets: torch.Tensor
    items: torch.Tensor
    keys: torch.Tensor
    num_slices: int

    @classmethod
    def from_csr(cls, offsets: np.ndarray, items: np.ndarray, slices: np.ndarray,
                 labels: np.ndarray, num_slices: int, device: torch.device | str = "cpu"
                 ) -> PositiveSequences:
        """Keep the positive events (label 1) of ``set_arrays.Sequences``' CSR arrays."""
        counts = np.diff(offsets)  # (U+1,) events per user
        user = np.repeat(np.arange(len(counts), dtype=np.int64), counts)  # (E,)
        keep = labels == 1
        kept = np.bincount(user[keep], minlength=len(counts))
        new_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(kept, out=new_offsets[1:])
        keys = user[keep] * num_slices + slices[keep].astype(np.int64)
        if keys.size and (np.diff(keys) < 0).any():
            raise ValueError("sequence events are not in time order within each user")

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a.astype(np.int64), device=device)

        return cls(tensor(new_offsets), tensor(items[keep]), tensor(keys), num_slices)

    def before(self, user: torch.Tensor, target: torch.Tensor, length: int) -> torch.Tensor:
        """The last ``length`` positive items of each user before its target slice.

        Args:
            user: (B,) user_idx; target: (B,) target slice.

        Returns:
            (B, L) int64, left-padded with 0.
        """
        end = torch.searchsorted(self.keys, user * self.num_slices + target)  # (B,) exclusive
        idx = end[:, None] - length + torch.arange(length, device=user.device)  # (B, L)
        valid = idx >= self.offsets[user][:, None]
        return torch.where(valid, self.items[idx.clamp(min=0)], 0)


class BatchBuilder:
    """Builds batch dicts holding only the fields a model declares in ``inputs``.

    Args:
        inputs: the model's ``inputs`` (``"slice_sets"``, ``"sequence"``).
        user_sets: (U+1, T, 2, S) int tensor, ``[u, t, 0]`` = G_t(u), ``[u, t, 1]`` = G_t(v|u).
        item_sets: (I+1, T, 2, S) int tensor, ``[v, t, 0]`` = G_t(v), ``[v, t, 1]`` = G_t(u|v).
        num_slices: T; the history window has H = T - 1 slices.
        sequences: the users' positive items in CSR form (needed only for ``"sequence"``).
        sequence_len: L, the last L items before the target slice go into ``sequence``.

    Raises:
        ValueError: an unknown input name, or an input whose arrays were not given.
    """

    KNOWN_INPUTS = frozenset({"slice_sets", "sequence"})

    def __init__(self, inputs: frozenset[str], user_sets: torch.Tensor | None,
                 item_sets: torch.Tensor | None, num_slices: int,
                 sequences: PositiveSequences | None = None,
                 sequence_len: int = 0) -> None:
        unknown = set(inputs) - self.KNOWN_INPUTS
        if unknown:
            raise ValueError(f"unknown model inputs {sorted(unknown)}; known: "
                             f"{sorted(self.KNOWN_INPUTS)}")
        if "slice_sets" in inputs:
            if user_sets is None or item_sets is None:
                raise ValueError("model needs 'slice_sets' but no user/item set arrays were given")
            if user_sets.shape[1:] != item_sets.shape[1:] or user_sets.shape[1] != num_slices:
                raise ValueError(f"user sets {tuple(user_sets.shape)} and item sets "
                                 f"{tuple(item_sets.shape)} must both be (n, {num_slices}, 2, S)")
        if "sequence" in inputs and (sequences is None or sequence_len < 1):
            raise ValueError("model needs 'sequence' but no sequence arrays / length were given")
        self.inputs = frozenset(inputs)
        self.user_sets = user_sets
        self.item_sets = item_sets
        self.history_slices = num_slices - 1  # H = T - 1 for every split
        self.sequences = sequences
        self.sequence_len = sequence_len

    def build(self, user: torch.Tensor, target: torch.Tensor, candidates: torch.Tensor) -> Batch:
        """One batch.

        Args:
            user: (B,) int64 user_idx.
            target: (B,) int64 target slice of each row.
            candidates: (B, C) int64 item_idx, positive at column 0.

        Returns:
            dict with ``user`` (B,), ``items`` (B, C), ``label`` (B, C) float and, as declared,
            ``user_sets`` (B, H, 2, S), ``item_sets`` (B, C, H, 2, S), ``sequence`` (B, L);
            all ids int64.
        """
        B, C = candidates.shape
        label = torch.zeros(B, C, dtype=torch.float32, device=candidates.device)
        label[:, 0] = 1.0
        batch: Batch = {"user": user, "items": candidates, "label": label}
        if "slice_sets" in self.inputs:
            H = self.history_slices
            window = target[:, None] - H + torch.arange(H, device=target.device)  # (B, H)
            valid = window >= 0
            t = window.clamp(min=0)
            user_sets = self.user_sets[user[:, None], t]  # (B, H, 2, S)
            item_sets = self.item_sets[candidates[:, :, None], t[:, None, :]]  # (B, C, H, 2, S)
            batch["user_sets"] = (user_sets * valid[:, :, None, None]).long()
            batch["item_sets"] = (item_sets * valid[:, None, :, None, None]).long()
        if "sequence" in self.inputs:
            batch["sequence"] = self.sequences.before(user, target, self.sequence_len)
        return batch

    def batches(self, samples: Samples, rows: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        """Batches over ``rows`` (indices into ``samples``) in the given order."""
        for start in range(0, len(rows), batch_size):
            idx = rows[start:start + batch_size]
            yield self.build(samples.user[idx], samples.slice[idx], samples.candidates[idx])


def epoch_rows(n: int, epoch: int, seed: int, rank: int, world_size: int,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """This worker's shuffled share of ``n`` training rows for one epoch.

    Every worker draws the same permutation (seeded by seed and epoch) and takes every
    ``world_size``-th row from its rank, so the shares are disjoint. The permutation is padded
    by wrapping to a multiple of ``world_size`` (as ``DistributedSampler`` does) so every
    worker runs the same number of steps and the per-step gradient all-reduce never waits
    on a finished worker.

    Returns:
        (ceil(n / world_size),) int64 row indices.
    """
    if n == 0:
        raise ValueError("the training split has no rows")
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    per_worker = -(-n // world_size)
    padded = perm.repeat(-(-per_worker * world_size // n))[:per_worker * world_size]
    return padded[rank::world_size].to(device)


def shard_rows(n: int, rank: int, world_size: int, device: torch.device | str = "cpu"
               ) -> torch.Tensor:
    """Contiguous, unpadded share of ``n`` evaluation rows (each row counted exactly once)."""
    bounds = np.linspace(0, n, world_size + 1).round().astype(int)
    return torch.arange(bounds[rank], bounds[rank + 1], device=device)


class NegativeSampler:
    """Fresh training negatives each epoch (``index.resample_train_negatives``).

    Same rules as the index stage's sampler (spark_jobs/negatives.py): a drawn item is
    rejected and redrawn when it is any item the user interacted with in the target slice
    (every positive of the user in the train split, i.e. column 0 of the user's train rows,
    the row's own positive included), or already in the row (a real negative or an earlier
    draw). Membership is tested on sorted ``user * (I + 1) + item`` keys with
    ``searchsorted``, so rejection is vectorised over rows; only the K columns are a loop.
    Real negative feedback columns (the first ``real_negatives`` after the positive) are kept.

    Args:
        train: the train split.
        num_items: I (item_idx in 1..I).
        weights: (I+1,) non-negative sampling weights for ``popularity`` sampling, or None
            for uniform over 1..I. Index 0 (padding) is never drawn.

    Raises:
        ValueError: weights of the wrong length, negative, or all zero.
    """

    def __init__(self, train: Samples, num_items: int, weights: torch.Tensor | None) -> None:
        self.num_items = num_items
        device = train.candidates.device
        keys = train.user * (num_items + 1) + train.candidates[:, 0]
        self.forbidden = torch.unique(keys)  # sorted
        self.cdf = None
        if weights is not None:
            if weights.shape != (num_items + 1,):
                raise ValueError(f"popularity weights must be ({num_items + 1},), "
                                 f"got {tuple(weights.shape)}")
            w = weights.to(torch.float64).clone()
            w[0] = 0.0
            if (w < 0).any() or w.sum() <= 0:
                raise ValueError("popularity weights must be non-negative with a positive sum")
            self.cdf = (w.cumsum(0) / w.sum()).to(device)

    def _draw(self, n: int, g: torch.Generator, device) -> torch.Tensor:
        if self.cdf is None:
            return torch.randint(1, self.num_items + 1, (n,), generator=g).to(device)
        u = torch.rand(n, generator=g, dtype=torch.float64).to(device)
        # Inverse CDF: the first item whose cumulative weight exceeds u.
        return torch.searchsorted(self.cdf, u, right=True).clamp(max=self.num_items)

    def _interacted(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        keys = user * (self.num_items + 1) + items
        pos = torch.searchsorted(self.forbidden, keys).clamp(max=len(self.forbidden) - 1)
        return self.forbidden[pos] == keys

    def resample(self, samples: Samples, epoch: int, seed: int) -> Samples:
        """Samples whose sampled negatives are redrawn for ``epoch`` (same on every worker).

        Returns:
            a Samples with candidates (N, C): column 0 and real-negative columns unchanged.

        Raises:
            RuntimeError: some rows still draw only forbidden items after many rounds (the
                user interacted with (nearly) every item that can be drawn).
        """
        new = samples.candidates.clone()
        device = new.device
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_919)
        for col in range(1, new.shape[1]):
            rows = (samples.real_negatives < col).nonzero(as_tuple=True)[0]  # sampled here
            users = samples.user[rows]
            items = self._draw(len(rows), g, device)
            for _ in range(_MAX_REJECTION_ROUNDS):
                bad = self._interacted(users, items) | (new[rows, :col] == items[:, None]).any(1)
                if not bad.any():
                    break
                items[bad] = self._draw(int(bad.sum()), g, device)
            else:
                raise RuntimeError(
                    f"no valid negative item found for users {users[bad].unique()[:5].tolist()} "
                    f"after {_MAX_REJECTION_ROUNDS} redraws")
            new[rows, col] = items
        return samples.with_candidates(new)
