"""Batches for any registered model, gathered from dense tensors by vectorised indexing.

The index stage's sets are loaded once per worker as dense int32 tensors
(``store/index.py``): ``users (U+1, T, 2, S)`` and ``items (I+1, T, 2, S)``. A batch
is a handful of advanced-indexing gathers over them, never a per-sample Python loop, so it
runs on whichever device holds the tensors.

A sample's ``cut`` says where its history ends (docs/architecture.md, "Evaluation
protocols"):
  * ``slices``: ``cut`` is the target slice ``t``. The set window holds the H = T - 1 slices
    ``t - H .. t - 1`` (positions before slice 0 all-empty), so every split (train predicts
    T-3, valid T-2, test T-1; 0-based) feeds the model the same H and the target slice never
    leaks; ``sequence`` is the user's last L events before slice ``t`` with their
    ``sequence_label`` (a model that reads labels) or its last L positive items (one that
    does not).
  * ``leave_one_out``: ``cut`` is the target's position in the user's sequence; ``sequence``
    is the user's events ``[cut - L, cut)``.
  * ``feedback``: as leave_one_out, plus ``sequence_label``, each history event's feedback.

Legend: B batch, C candidates, H history slices, S set size, N samples in a split,
K sampled negatives per row, U users, I items, T slices, E events, L sequence length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from trainers.registry import INPUTS, Batch

if TYPE_CHECKING:
    from trainers.protocols import EvaluationProtocol

_MAX_REJECTION_ROUNDS = 64  # a row still rejected after this many redraws has no valid item

@dataclass(frozen=True)
class Samples:
    """One split's candidate lists as tensors (from ``store.index.load_samples``).

    Attributes:
        user: (N,) int64 user_idx.
        cut: (N,) int64 where the history ends: the target slice (``slices``) or the
            target's position in the user's sequence (``leave_one_out``, ``feedback``).
        candidates: (N, C) int64 item_idx, the target at column 0.
        real_negatives: (N,) int64, how many of columns 1.. are real negative feedback
            (they come first and are never resampled).
        target_label: (N,) int64, the target's label (its feedback under ``feedback``,
            1 elsewhere); the other columns are label 0.
    """

    user: torch.Tensor
    cut: torch.Tensor
    candidates: torch.Tensor
    real_negatives: torch.Tensor
    target_label: torch.Tensor

    FIELDS = ("user", "cut", "candidates", "real_negatives", "target_label")

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], device: torch.device | str = "cpu"
                    ) -> Samples:
        """Wrap the numpy dict of ``load_samples`` as int64 tensors on ``device``.

        Raises:
            ValueError: a field is missing, the lengths disagree, or a label is not 0/1.
        """
        missing = set(cls.FIELDS) - set(arrays)
        if missing:
            raise ValueError(f"samples lack fields {sorted(missing)}")
        n = len(arrays["user"])
        for key in cls.FIELDS[1:]:
            if len(arrays[key]) != n:
                raise ValueError(f"samples field {key!r} has {len(arrays[key])} rows, user has {n}")
        if arrays["candidates"].ndim != 2:
            raise ValueError(f"samples candidates must be (N, C), got {arrays['candidates'].shape}")
        if not np.isin(np.asarray(arrays["target_label"]), (0, 1)).all():
            raise ValueError("samples target_label must be 0 or 1")
        return cls(*(torch.as_tensor(np.asarray(arrays[k]), dtype=torch.int64, device=device)
                     for k in cls.FIELDS))

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def with_candidates(self, candidates: torch.Tensor) -> Samples:
        return Samples(self.user, self.cut, candidates, self.real_negatives, self.target_label)

    def take(self, rows: torch.Tensor) -> Samples:
        """The rows ``rows`` (indices) of every field."""
        return Samples(*(getattr(self, k)[rows] for k in self.FIELDS))


def _csr_user(offsets: np.ndarray) -> np.ndarray:
    """(E,) the user of each event of a CSR layout with (U+2,) ``offsets``."""
    return np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))


@dataclass(frozen=True)
class SliceSequences:
    """Every user's history events in time order, CSR over users (``slices`` protocol).

    A model that reads ``sequence_label`` gets every event with its feedback label, so real
    negative feedback (ratings 1-3 under ``dataset.negative_max_rating``) reaches its history
    as it does under ``feedback`` (issue 15); a model that does not read labels gets the
    positive events only (an unlabelled disliked item would read as a liked one). On data
    without negative feedback (Taobao) both views hold the same events.

    Attributes:
        offsets: (U+2,) int64; user u's events are ``items[offsets[u]:offsets[u+1]]``.
        items: (E,) int64 item_idx in time order per user.
        labels: (E,) int64 feedback label (1 positive, 0 negative).
        keys: (E,) int64 ``user * T + slice`` of each event, non-decreasing (sorted by user,
            then time), so the events before a slice are found by ``searchsorted``.
        num_slices: T.
    """

    offsets: torch.Tensor
    items: torch.Tensor
    labels: torch.Tensor
    keys: torch.Tensor
    num_slices: int

    @classmethod
    def from_csr(cls, offsets: np.ndarray, items: np.ndarray, slices: np.ndarray,
                 labels: np.ndarray, num_slices: int, positives_only: bool,
                 device: torch.device | str = "cpu") -> SliceSequences:
        """Every event of ``store.index.Sequences``' CSR arrays, or only the positive ones
        (label 1) with ``positives_only``.

        Raises:
            ValueError: a user's events are not in slice order.
        """
        counts = np.diff(offsets)  # (U+1,) events per user
        user = _csr_user(offsets)  # (E,)
        keep = labels == 1 if positives_only else np.ones(len(items), dtype=bool)
        kept = np.bincount(user[keep], minlength=len(counts))
        new_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(kept, out=new_offsets[1:])
        keys = user[keep] * num_slices + slices[keep].astype(np.int64)
        if keys.size and (np.diff(keys) < 0).any():
            raise ValueError("sequence events are not in time order within each user")

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a.astype(np.int64), device=device)

        return cls(tensor(new_offsets), tensor(items[keep]), tensor(labels[keep]), tensor(keys),
                   num_slices)

    def count_before(self, user: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
        """(B,) how many events each user has before its target slice ``cut``."""
        return torch.searchsorted(self.keys, user * self.num_slices + cut) - self.offsets[user]

    def before(self, user: torch.Tensor, cut: torch.Tensor, length: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last ``length`` events of each user before its target slice.

        Args:
            user: (B,) user_idx; cut: (B,) target slice.

        Returns:
            ((B, L) int64 items left-padded with 0, (B, L) int64 labels, 0 on padding).
        """
        end = torch.searchsorted(self.keys, user * self.num_slices + cut)  # (B,) exclusive
        idx = end[:, None] - length + torch.arange(length, device=user.device)  # (B, L)
        valid = idx >= self.offsets[user][:, None]
        safe = idx.clamp(min=0)
        return (torch.where(valid, self.items[safe], 0),
                torch.where(valid, self.labels[safe], 0))


@dataclass(frozen=True)
class EventSequences:
    """Every user's events (positive and negative) in time order, CSR over users
    (``leave_one_out`` and ``feedback``, where ``cut`` is a position in this sequence).

    Attributes:
        offsets: (U+2,) int64; user u's events are ``[offsets[u], offsets[u+1])``.
        items: (E,) int64 item_idx.
        labels: (E,) int64 feedback label (1 positive, 0 negative).
    """

    offsets: torch.Tensor
    items: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_csr(cls, offsets: np.ndarray, items: np.ndarray, labels: np.ndarray,
                 device: torch.device | str = "cpu") -> EventSequences:
        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a).astype(np.int64), device=device)

        return cls(tensor(offsets), tensor(items), tensor(labels))

    def lengths(self, user: torch.Tensor) -> torch.Tensor:
        """(B,) number of events of each user."""
        return self.offsets[user + 1] - self.offsets[user]

    def check_cuts(self, samples: Samples, split: str) -> None:
        """Every row's history ``[0, cut)`` and target lie inside its user's sequence.

        Raises:
            ValueError: naming the first bad row.
        """
        bad = (samples.cut < 0) | (samples.cut >= self.lengths(samples.user))
        if bad.any():
            row = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"split {split!r}: row of user {int(samples.user[row])} has cut "
                f"{int(samples.cut[row])} outside the user's {int(self.lengths(samples.user)[row])}"
                " events: samples and sequences come from different index runs")

    def count_before(self, user: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
        """(B,) how many events each user has before position ``cut``: ``cut`` itself."""
        return cut.clone()

    def before(self, user: torch.Tensor, cut: torch.Tensor, length: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The events ``[cut - length, cut)`` of each user (its last L before the target).

        Args:
            user: (B,) user_idx; cut: (B,) the target's position in the user's sequence.

        Returns:
            ((B, L) int64 items left-padded with 0, (B, L) int64 labels, 0 on padding).
        """
        start = self.offsets[user]  # (B,)
        idx = (start + cut)[:, None] - length + torch.arange(length, device=user.device)  # (B, L)
        valid = idx >= start[:, None]
        safe = idx.clamp(min=0)
        return (torch.where(valid, self.items[safe], 0),
                torch.where(valid, self.labels[safe], 0))

    def touched_keys(self, num_items: int) -> torch.Tensor:
        """Sorted unique ``user * (I + 1) + item`` of every event: the items each user ever
        touched (the rejection set of :class:`NegativeSampler` under these protocols)."""
        user = torch.repeat_interleave(
            torch.arange(len(self.offsets) - 1, device=self.items.device),
            self.offsets.diff())
        return torch.unique(user * (num_items + 1) + self.items)


def random_windows(samples: Samples, events: EventSequences, length: int, epoch: int,
                   seed: int) -> Samples:
    """Leave-one-out training rows moved to a random window for one epoch
    (``train.window: random``, DualRec's released code).

    A row's index target sits at position ``cut`` of its user's sequence and its history is
    the L events before it, so under ``last`` the events before a long history's last L are
    never trained. Here each row takes, uniformly, one of the ``cut - L + 1`` contiguous
    windows of L + 1 events (history + target) that end at or before ``cut`` (a row with
    ``cut <= L`` keeps its own): the new target is the event at the window's end. The draw
    is seeded by seed and epoch, so every worker and a resumed run see the same windows.
    Sampled negatives stay valid (never an item the user touched); leave_one_out has no real
    negatives and every target label is 1.

    Args:
        samples: the train split, (N,) cuts and (N, C) candidates.
        events: every user's events (the rows' cuts are positions in them).
        length: L, the history length.

    Returns:
        Samples with new ``cut`` (N,) in [min(cut, L), cut] and column 0 the event there.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 104_729)
    device = samples.cut.device
    spare = (samples.cut - length).clamp(min=0)  # (N,) windows that end before the cut
    u = torch.rand(len(samples), generator=g, dtype=torch.float64).to(device)
    shift = torch.minimum((u * (spare + 1)).long(), spare)  # uniform over 0..spare
    cut = samples.cut - shift  # (N,)
    candidates = samples.candidates.clone()
    candidates[:, 0] = events.items[events.offsets[samples.user] + cut]
    return Samples(samples.user, cut, candidates, samples.real_negatives, samples.target_label)


def target_keys(train: Samples, num_items: int) -> torch.Tensor:
    """Sorted unique ``user * (I + 1) + target`` of the train rows: under ``slices`` the
    items each user interacted with in the target slice (the index stage's rejection rule)."""
    return torch.unique(train.user * (num_items + 1) + train.candidates[:, 0])


class BatchBuilder:
    """Builds batch dicts holding only the fields a model declares in ``inputs``.

    Args:
        protocol: the index's protocol (trainers/protocols.py): which inputs it can feed and
            whether ``cut`` is a slice.
        inputs: the fields to build (a model's ``inputs``, plus those of its
            ``optional_inputs`` the protocol feeds).
        user_sets: (U+1, T, 2, S) int tensor, ``[u, t, 0]`` = G_t(u), ``[u, t, 1]`` = G_t(v|u)
            (``slice_sets`` only).
        item_sets: (I+1, T, 2, S) int tensor, ``[v, t, 0]`` = G_t(v), ``[v, t, 1]`` = G_t(u|v).
        num_slices: T (``slices``; the history window has H = T - 1 slices), else 0.
        sequences: the users' history source for ``sequence``: :class:`SliceSequences`
            under ``slices`` (every event when ``sequence_label`` is an input, else the
            positive ones), :class:`EventSequences` otherwise.
        sequence_len: L, the last L items before the cut go into ``sequence``.
        next_negatives: the distribution of ``next_negatives``, one sampled item per history
            position (a model's negative for that position's next item), drawn afresh for
            every batch from torch's global RNG (the loop seeds it per epoch). It is the
            distribution of the index's sampled candidates, so a model learns from its
            history what the candidate lists will ask of it.

    Attributes:
        trim_padding: cut ``sequence``, ``sequence_label`` and ``next_negatives`` to the
            batch's longest history plus one slot (the empty-history slot before a user's
            first event), at most L. Set it only for a ``variable_length`` model
            (trainers/registry.py), whose outputs that cut leaves unchanged.

    Raises:
        ValueError: an unknown input name, an input the protocol cannot feed (naming both),
            or an input whose arrays were not given.
    """

    def __init__(self, protocol: EvaluationProtocol, inputs: frozenset[str],
                 user_sets: torch.Tensor | None, item_sets: torch.Tensor | None, num_slices: int,
                 sequences: SliceSequences | EventSequences | None = None,
                 sequence_len: int = 0, next_negatives: ItemDistribution | None = None
                 ) -> None:
        unknown = set(inputs) - INPUTS
        if unknown:
            raise ValueError(f"unknown model inputs {sorted(unknown)}; known: {sorted(INPUTS)}")
        protocol.fed(inputs)  # raises on an input the protocol cannot feed
        if "slice_sets" in inputs:
            if user_sets is None or item_sets is None:
                raise ValueError("model needs 'slice_sets' but no user/item set arrays were given")
            if user_sets.shape[1:] != item_sets.shape[1:] or user_sets.shape[1] != num_slices:
                raise ValueError(f"user sets {tuple(user_sets.shape)} and item sets "
                                 f"{tuple(item_sets.shape)} must both be (n, {num_slices}, 2, S)")
        if {"sequence", "sequence_label"} & set(inputs):
            expected = SliceSequences if protocol.sliced else EventSequences
            if not isinstance(sequences, expected) or sequence_len < 1:
                raise ValueError(f"model needs 'sequence' but no {expected.__name__} / length "
                                 "were given")
        if "next_negatives" in inputs and ("sequence" not in inputs or next_negatives is None):
            raise ValueError("'next_negatives' are drawn per history position: the model must "
                             "also read 'sequence', and an ItemDistribution must be given")
        self.protocol = protocol
        self.inputs = frozenset(inputs)
        self.user_sets = user_sets
        self.item_sets = item_sets
        self.history_slices = max(num_slices - 1, 0)  # H = T - 1 for every split
        self.sequences = sequences
        self.sequence_len = sequence_len
        self.next_negatives = next_negatives
        self.trim_padding = False

    def build(self, user: torch.Tensor, cut: torch.Tensor, candidates: torch.Tensor,
              target_label: torch.Tensor) -> Batch:
        """One batch.

        Args:
            user: (B,) int64 user_idx.
            cut: (B,) int64 where each row's history ends (target slice or position).
            candidates: (B, C) int64 item_idx, the target at column 0.
            target_label: (B,) the target's label (column 0 of ``label``).

        Returns:
            dict with ``user`` (B,), ``items`` (B, C), ``label`` (B, C) float and, as declared,
            ``user_sets`` (B, H, 2, S), ``item_sets`` (B, C, H, 2, S), ``sequence`` (B, L),
            ``sequence_label`` (B, L), ``next_negatives`` (B, L-1); all ids int64.
        """
        B, C = candidates.shape
        label = torch.zeros(B, C, dtype=torch.float32, device=candidates.device)
        label[:, 0] = target_label.float()
        batch: Batch = {"user": user, "items": candidates, "label": label}
        if "slice_sets" in self.inputs:
            H = self.history_slices
            window = cut[:, None] - H + torch.arange(H, device=cut.device)  # (B, H)
            valid = window >= 0
            t = window.clamp(min=0)
            user_sets = self.user_sets[user[:, None], t]  # (B, H, 2, S)
            item_sets = self.item_sets[candidates[:, :, None], t[:, None, :]]  # (B, C, H, 2, S)
            batch["user_sets"] = (user_sets * valid[:, :, None, None]).long()
            batch["item_sets"] = (item_sets * valid[:, None, :, None, None]).long()
        if {"sequence", "sequence_label"} & self.inputs:
            items, labels = self.sequences.before(user, cut, self.sequence_len)  # (B, L) x2
            if self.trim_padding:
                L = self.sequence_len
                keep = min(L, int((items != 0).sum(1).max()) + 1)
                items, labels = items[:, L - keep:], labels[:, L - keep:]  # (B, keep) x2
            if "sequence" in self.inputs:
                batch["sequence"] = items
            if "sequence_label" in self.inputs:
                batch["sequence_label"] = labels
            if "next_negatives" in self.inputs:
                batch["next_negatives"] = self.next_negatives.draw((B, items.shape[1] - 1))
        return batch

    def history_lengths(self, samples: Samples) -> torch.Tensor:
        """(N,) each row's history length in ``sequence``: its events before the cut, at most
        L (under ``slices`` all events, labelled or not, for a model reading labels)."""
        return self.sequences.count_before(samples.user, samples.cut).clamp(
            max=self.sequence_len)

    def rows(self, samples: Samples, idx: torch.Tensor) -> Batch:
        """The batch of rows ``idx`` (indices into ``samples``)."""
        return self.build(samples.user[idx], samples.cut[idx], samples.candidates[idx],
                          samples.target_label[idx])

    def batches(self, samples: Samples, rows: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        """Batches over ``rows`` (indices into ``samples``) in the given order."""
        for start in range(0, len(rows), batch_size):
            yield self.rows(samples, rows[start:start + batch_size])


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


def length_batches(rows: torch.Tensor, lengths: torch.Tensor, batch_size: int, epoch: int,
                   seed: int, chunk_batches: int = 64) -> torch.Tensor:
    """Reorder a shuffled epoch so each batch holds histories of similar length
    (``train.batch_order: by_length``; a bucketing iterator).

    The rows are cut into chunks of ``chunk_batches`` batches; each chunk is sorted by
    length and split into batches; the batches of all chunks are then shuffled (seeded by
    seed and epoch), the one partial batch, if any, kept last so the loop's consecutive
    slices of ``batch_size`` are exactly these batches. Every row stays once; only which
    rows share a batch changes, so a ``variable_length`` model's cut
    (:class:`BatchBuilder`) is short for most batches.

    Args:
        rows: (n,) this worker's shuffled rows (:func:`epoch_rows`).
        lengths: (n,) the history length of each of ``rows``.
    Returns:
        (n,) the same rows, batch by batch.
    """
    n = len(rows)
    chunk = chunk_batches * batch_size
    ordered = torch.cat([rows[start:start + chunk][lengths[start:start + chunk].argsort(
        stable=True)] for start in range(0, n, chunk)])
    full = n // batch_size
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 104_729)
    order = torch.randperm(full, generator=g).to(rows.device)
    batches = ordered[:full * batch_size].view(full, batch_size)[order].reshape(-1)
    return torch.cat([batches, ordered[full * batch_size:]])


def shard_rows(n: int, rank: int, world_size: int, device: torch.device | str = "cpu"
               ) -> torch.Tensor:
    """Contiguous, unpadded share of ``n`` evaluation rows (each row counted exactly once)."""
    bounds = np.linspace(0, n, world_size + 1).round().astype(int)
    return torch.arange(bounds[rank], bounds[rank + 1], device=device)


class ItemDistribution:
    """The distribution sampled negatives follow (``index.negative_sampling``): uniform over
    items 1..I, or proportional to popularity weights.

    Args:
        num_items: I (item_idx in 1..I).
        weights: (I+1,) non-negative weights, or None for uniform. Index 0 (padding) is
            never drawn.
        device: where the draws are returned.

    Raises:
        ValueError: weights of the wrong length, negative, or all zero.
    """

    def __init__(self, num_items: int, weights: torch.Tensor | None,
                 device: torch.device | str) -> None:
        self.num_items, self.device = num_items, device
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

    def draw(self, n: int | tuple[int, ...], generator: torch.Generator | None = None
             ) -> torch.Tensor:
        """``n`` (or shape ``n``) int64 item ids; ``generator`` None uses torch's global RNG."""
        shape = (n,) if isinstance(n, int) else n
        if self.cdf is None:
            return torch.randint(1, self.num_items + 1, shape, generator=generator).to(self.device)
        u = torch.rand(shape, generator=generator, dtype=torch.float64).to(self.device)
        # Inverse CDF: the first item whose cumulative weight exceeds u.
        return torch.searchsorted(self.cdf, u, right=True).clamp(max=self.num_items)


class NegativeSampler:
    """Fresh training negatives each epoch (``index.resample_train_negatives``).

    Same rules as the index stage's sampler (spark_jobs/negatives.py): a drawn item is
    rejected and redrawn when ``user * (I + 1) + item`` is in ``forbidden``, or when it is
    already in the row (a real negative or an earlier draw). ``forbidden`` is, by protocol,
    :func:`target_keys` (``slices``: every target-slice item of the user, the row's own
    target included) or :meth:`EventSequences.touched_keys` (``leave_one_out``,
    ``feedback``: every item the user ever touched, so a negative is never an item the user
    saw, whatever its feedback). Membership is tested on the sorted keys with
    ``searchsorted``, so rejection is vectorised over rows; only the K columns are a loop.
    Real negative feedback columns (the first ``real_negatives`` after the target) are kept.

    Args:
        forbidden: sorted unique int64 keys ``user * (I + 1) + item``.
        num_items: I (item_idx in 1..I).
        weights: (I+1,) non-negative sampling weights for ``popularity`` sampling, or None
            for uniform over 1..I. Index 0 (padding) is never drawn.

    Raises:
        ValueError: weights of the wrong length, negative, or all zero.
    """

    def __init__(self, forbidden: torch.Tensor, num_items: int,
                 weights: torch.Tensor | None) -> None:
        self.num_items = num_items
        self.forbidden = forbidden
        self.items = ItemDistribution(num_items, weights, forbidden.device)

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
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_919)
        for col in range(1, new.shape[1]):
            rows = (samples.real_negatives < col).nonzero(as_tuple=True)[0]  # sampled here
            users = samples.user[rows]
            items = self.items.draw(len(rows), g)
            for _ in range(_MAX_REJECTION_ROUNDS):
                bad = self._interacted(users, items) | (new[rows, :col] == items[:, None]).any(1)
                if not bad.any():
                    break
                items[bad] = self.items.draw(int(bad.sum()), g)
            else:
                raise RuntimeError(
                    f"no valid negative item found for users {users[bad].unique()[:5].tolist()} "
                    f"after {_MAX_REJECTION_ROUNDS} redraws")
            new[rows, col] = items
        return samples.with_candidates(new)
