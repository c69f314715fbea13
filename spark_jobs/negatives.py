"""Candidate lists: the slices protocol's (SCoRe Section 4.1.1, 0-based slices), and the
negatives of items a user never touched that leave_one_out and feedback draw.

Slices: each (user, target slice) gets one list ``[positive, real negatives..., sampled
negatives...]`` of 1 + N items, all distinct, for a seeded positive of the slice (Section
4.1.1 evaluates "one positive item ... for each user", and Eq. 26-28 average over users);
``index.lists_per_user: every_positive`` gives every distinct (user, positive) pair its own
list instead. In both:

* real negatives: the user's negative-feedback items (label 0) of the target slice that are
  not among the user's positives there (CCMR ratings 1-3), in a seeded random order, at most
  N; the same for every list of that user and slice;
* sampled negatives fill the rest: uniform over items 1..num_items, or proportional to
  1 + (positive interactions of the item in slices 0..target) for ``popularity`` (add-one,
  so every item stays possible and both schemes share one candidate universe), rejecting
  the user's target-slice positives, the list's real negatives and repeats.

Sampling runs per Arrow batch in Python workers (``mapInArrow``), vectorised with numpy, and
is counter-based: every draw is ``splitmix64`` of (seed, split, user, target slice, position
of the positive among the user's sorted positives, draw number), so a list depends on nothing
but its own key, whatever the partitioning or batch boundaries. The positive of a one-list
user is ``splitmix64`` of (seed, split, user, slice) modulo its number of positives.

Unseen negatives (``unseen_negatives``): uniform or weighted draws over 1..num_items that
reject every item of the user's whole sequence, keyed by (seed, split salt, user, a list
number the caller gives), for leave_one_out's and feedback's lists.

Users are not filtered by history: the paper does not filter, and a user with no earlier
interaction still has item-side signal (the candidates' sets) and a user embedding to learn.
``index.max_eval_users`` keeps, for valid/test, the users with the smallest
``xxhash64(seed, user)`` among those with a positive in the target slice.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

SPLITS = {"train": 3, "valid": 2, "test": 1}  # split -> target slice is T - this
SAMPLE_SCHEMA = ("user int, cut int, candidates array<int>, real_negatives short, "
                 "target_label byte")  # index/samples/<split> of every protocol
_MAX_ROUNDS = 40  # width doubles each round; 40 rounds only fail on a truly tiny universe
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_PICK_SALT = np.uint64(0x5EED0F0E)  # the stream choosing a one-list user's positive


def target_slice(split: str, num_slices: int) -> int:
    """0-based target slice of a split: train T-3, valid T-2, test T-1."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return num_slices - SPLITS[split]


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _mix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return splitmix64(a ^ splitmix64(b.astype(np.uint64)))


class NegativeSampler:
    """Draws the sampled negatives of many lists at once.

    Args:
        num_items: items are 1..num_items.
        negatives: N, negatives per list (real + sampled).
        seed: index.seed.
        split_salt: distinguishes the splits' streams.
        weights: None for uniform, else (num_items+1,) float64 item weights (index 0 unused).
    """

    def __init__(self, num_items: int, negatives: int, seed: int, split_salt: int,
                 weights: np.ndarray | None) -> None:
        self.num_items = num_items
        self.negatives = negatives
        self.base = splitmix64(np.array([seed * 7919 + split_salt], dtype=np.uint64))[0]
        self.cdf = None if weights is None else np.cumsum(weights[1:], dtype=np.float64)
        # items that can be drawn (a zero weight never is: ``active`` sampling)
        self.pool = num_items if weights is None else int(np.count_nonzero(weights[1:]))

    def _items(self, bits: np.ndarray) -> np.ndarray:
        """Map random 64-bit words to item ids 1..num_items (int64)."""
        if self.cdf is None:
            return (bits % np.uint64(self.num_items)).astype(np.int64) + 1
        u = (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)) * self.cdf[-1]
        return np.minimum(np.searchsorted(self.cdf, u, side="right"), self.num_items - 1) + 1

    def sample(self, keys: np.ndarray, need: np.ndarray, excl_keys: np.ndarray,
               list_group: np.ndarray, group_size: np.ndarray, users: np.ndarray,
               where: str) -> np.ndarray:
        """Sampled negatives for ``n`` lists.

        Args:
            keys: (n,) uint64 per-list stream keys.
            need: (n,) int64 negatives still missing per list (N minus its real negatives).
            excl_keys: sorted int64 ``group * (num_items+1) + item`` of excluded items.
            list_group: (n,) int64 group (user row) of each list, indexing ``excl_keys``.
            group_size: (n,) int64 excluded items per list's group (for the feasibility check).
            users, where: for error messages (the lists' users; e.g. "in slice 7").

        Returns:
            (n, N) int32; row i holds need[i] sampled items left-aligned, zeros after.

        Raises:
            ValueError: a list cannot be filled (fewer non-excluded items than needed).
        """
        n = len(keys)
        out = np.zeros((n, self.negatives), dtype=np.int32)
        # every excluded item may be drawable, so this bounds what is left from below
        short = need > self.pool - group_size
        if short.any():
            i = int(np.argmax(short))
            raise ValueError(
                f"user {users[i]} {where}: as few as {self.pool - group_size[i]} drawable "
                f"items may be left after the user's exclusions but {need[i]} sampled "
                f"negatives are needed; lower index.eval_negatives / index.train_negatives "
                f"(or index.active_min_slices under active sampling)")
        todo = np.flatnonzero(need > 0)
        width = 2 * self.negatives + 16
        offset = np.uint64(0)
        stride = np.uint64(self.num_items + 1)
        for _ in range(_MAX_ROUNDS):
            if len(todo) == 0:
                return out
            cols = np.arange(width, dtype=np.uint64) + offset
            draws = self._items(splitmix64(keys[todo, None] ^ splitmix64(cols[None, :])))
            grp = list_group[todo, None]
            flat = (grp.astype(np.uint64) * stride + draws.astype(np.uint64)).astype(np.int64)
            pos = np.searchsorted(excl_keys, flat)
            excluded = excl_keys[np.minimum(pos, len(excl_keys) - 1)] == flat
            # A repeat is a later draw equal to an earlier one of the same row: a stable sort
            # puts the earliest first, so every equal successor in sorted order is a repeat.
            order = np.argsort(draws, axis=1, kind="stable")
            srt = np.take_along_axis(draws, order, axis=1)
            dup_sorted = np.zeros_like(srt, dtype=bool)
            dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
            repeat = np.zeros_like(dup_sorted)
            np.put_along_axis(repeat, order, dup_sorted, axis=1)
            valid = ~excluded & ~repeat
            rank = np.cumsum(valid, axis=1)
            take = valid & (rank <= need[todo, None])
            done = rank[:, -1] >= need[todo]
            rows, cols_taken = np.nonzero(take & done[:, None])
            out[todo[rows], rank[rows, cols_taken] - 1] = draws[rows, cols_taken]
            todo = todo[~done]
            offset += np.uint64(width)
            width *= 2
        raise ValueError(f"negative sampling did not converge for {len(todo)} lists {where}")


def sample_batch(batch: pa.RecordBatch, sampler: NegativeSampler,
                 one_per_user: bool) -> pa.RecordBatch:
    """Candidate lists of one batch of (user, slice) rows.

    Args:
        batch: user int32, slice int16, positives list<int32> (sorted, distinct),
            real list<int32> (real negatives, already ordered and cut to N).
        sampler: the split's sampler.
        one_per_user: one list per row for a seeded positive, else one per positive.

    Returns:
        RecordBatch of SAMPLE_SCHEMA (cut = the target slice, target_label 1), candidates
        (1 + N,).
    """
    n_neg = sampler.negatives
    users = batch.column("user").to_numpy().astype(np.int64)
    slices = batch.column("slice").to_numpy()
    pos_col, real_col = batch.column("positives"), batch.column("real")
    pos_len = np.diff(pos_col.offsets.to_numpy()).astype(np.int64)
    real_len = np.diff(real_col.offsets.to_numpy()).astype(np.int64)
    all_pos = pos_col.flatten().to_numpy().astype(np.int64)
    real_items = real_col.flatten().to_numpy().astype(np.int64)
    n_groups = len(users)
    user_key = _mix(_mix(np.full(n_groups, sampler.base, dtype=np.uint64), users),
                    slices.astype(np.uint64))  # (groups,) stream of (user, slice)
    # Position of each positive among its user's positives: part of its stream key.
    first = np.repeat(np.cumsum(pos_len) - pos_len, pos_len)
    within, pos_items = np.arange(len(all_pos)) - first, all_pos
    list_group = np.repeat(np.arange(n_groups), pos_len)  # (n,) user row of each list
    if one_per_user:
        chosen = (splitmix64(user_key ^ _PICK_SALT) % pos_len.astype(np.uint64)).astype(np.int64)
        list_group, within = np.arange(n_groups), chosen
        pos_items = all_pos[np.cumsum(pos_len) - pos_len + chosen]
    n = len(list_group)

    stride = sampler.num_items + 1
    excl = np.concatenate([np.repeat(np.arange(n_groups), pos_len) * stride + all_pos,
                           np.repeat(np.arange(n_groups), real_len) * stride + real_items])
    excl = np.unique(excl)
    group_size = (pos_len + real_len)[list_group]
    keys = _mix(user_key[list_group], within.astype(np.uint64))
    need = n_neg - real_len[list_group]
    where = f"in slice {int(slices[0])}" if n_groups else ""
    sampled = sampler.sample(keys, need, excl, list_group, group_size, users[list_group], where)

    cand = np.empty((n, 1 + n_neg), dtype=np.int32)
    cand[:, 0] = pos_items
    # Real negatives go right after the positive; sampled ones fill the remaining columns.
    real_start = (np.cumsum(real_len) - real_len)[list_group]
    col = np.arange(n_neg)[None, :]
    is_real = col < real_len[list_group, None]
    real_idx = np.minimum(real_start[:, None] + col, max(len(real_items) - 1, 0))
    real_part = real_items[real_idx] if len(real_items) else np.zeros_like(real_idx)
    shifted = np.take_along_axis(sampled, np.maximum(col - real_len[list_group, None], 0), axis=1)
    cand[:, 1:] = np.where(is_real, real_part, shifted)
    return sample_table(users[list_group], slices[list_group], cand, real_len[list_group],
                        np.ones(n, dtype=np.int8))


def sample_table(users: np.ndarray, cut: np.ndarray, cand: np.ndarray, real: np.ndarray,
                 target_label: np.ndarray) -> pa.RecordBatch:
    """A RecordBatch of SAMPLE_SCHEMA from (n,) users, cuts, real-negative counts, target
    labels and (n, C) candidates (target in column 0)."""
    n, width = cand.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width)
    return pa.RecordBatch.from_arrays(
        [pa.array(users.astype(np.int32)), pa.array(cut.astype(np.int32)),
         pa.ListArray.from_arrays(offsets, pa.array(cand.astype(np.int32).ravel())),
         pa.array(real.astype(np.int16)), pa.array(target_label.astype(np.int8))],
        names=["user", "cut", "candidates", "real_negatives", "target_label"],
    )


def unseen_negatives(sampler: NegativeSampler, users: np.ndarray, offsets: np.ndarray,
                     items: np.ndarray, list_group: np.ndarray, list_key: np.ndarray,
                     where: str) -> np.ndarray:
    """N sampled items per list that its user never interacted with (all distinct).

    Args:
        sampler: the split's sampler (its salt tells the splits apart).
        users: (g,) int64 users of the batch.
        offsets: (g+1,) int64 offsets of each user's events in ``items``.
        items: (e,) int64 every event's item (repeats allowed).
        list_group: (n,) int64 user row of each list.
        list_key: (n,) int64 a number telling a user's lists apart (e.g. the cut).
        where: for the error message.

    Returns:
        (n, N) int32 negatives.
    """
    n_groups = len(users)
    stride = sampler.num_items + 1
    owner = np.repeat(np.arange(n_groups), np.diff(offsets))
    excl = np.unique(owner * stride + items)
    group_size = np.bincount(excl // stride, minlength=n_groups)[list_group]
    keys = _mix(_mix(np.full(len(list_group), sampler.base, dtype=np.uint64),
                     users[list_group]), list_key.astype(np.uint64))
    need = np.full(len(list_group), sampler.negatives, dtype=np.int64)
    return sampler.sample(keys, need, excl, list_group, group_size, users[list_group], where)


def split_lists(pos: DataFrame, negatives_df: DataFrame, target: int, n_neg: int,
                seed: int, max_users: int | None) -> DataFrame:
    """Per (user, target slice): sorted positives and ordered real negatives (<= N).

    Args:
        pos: distinct positive (user, item, slice) triples.
        negatives_df: (user, item, slice) rows with negative feedback (label 0).
        target: the split's target slice.
        n_neg: N of this split.
        seed: index.seed (orders the real negatives, picks evaluation users).
        max_users: keep only this many users (seeded), or None for all.

    Returns:
        DataFrame[user int, slice short, positives array<int>, real array<int>].
    """
    tpos = pos.where(F.col("slice") == target).groupBy("user", "slice").agg(
        F.array_sort(F.collect_list("item")).alias("positives"))
    if max_users is not None:
        keep = tpos.select("user").orderBy(F.xxhash64(F.lit(seed), "user"), "user").limit(max_users)
        tpos = tpos.join(F.broadcast(keep), "user", "left_semi")
    tneg = negatives_df.where(F.col("slice") == target).groupBy("user", "slice").agg(
        F.array_sort(F.collect_set(
            F.shiftleft(F.xxhash64(F.lit(seed), "user", "item"), 32).bitwiseOR(
                F.col("item").cast("long")))).alias("neg_packed"))
    joined = tpos.join(tneg, ["user", "slice"], "left")
    real = F.transform(F.coalesce("neg_packed", F.array().cast("array<long>")),
                       lambda x: x.bitwiseAND(F.lit(0xFFFFFFFF)).cast("int"))
    real = F.slice(F.array_except(real, F.col("positives")), 1, n_neg)
    return joined.select("user", "slice", "positives", real.alias("real"))


def split_salt(split: str) -> int:
    """The sampler salt of a split (train 1, valid 2, test 3)."""
    return list(SPLITS).index(split) + 1


def build_samples(lists: DataFrame, num_items: int, n_neg: int, seed: int, split: str,
                  weights: np.ndarray | None, one_per_user: bool) -> DataFrame:
    """Run the sampler over ``split_lists`` output.

    Returns:
        DataFrame of SAMPLE_SCHEMA, one row per (user, target slice), or per (user, positive)
        of the target slice without ``one_per_user``.
    """
    salt = split_salt(split)
    spark = lists.sparkSession
    shared = spark.sparkContext.broadcast(weights) if weights is not None else None

    def run(batches):
        sampler = NegativeSampler(num_items, n_neg, seed, salt,
                                  None if shared is None else shared.value)
        for batch in batches:
            if batch.num_rows:
                yield sample_batch(batch, sampler, one_per_user)

    return lists.mapInArrow(run, SAMPLE_SCHEMA)
