"""Ranking metrics shared by every model (SCoRe paper, Section 4.1.2, Eq. 26-28; DFAR
paper, Section 4.1.3, for the ``feedback`` protocol).

Every metric is a function of the positive's rank, so ties decide results; here ties are
PESSIMISTIC everywhere: a negative that scores the same as the positive ranks above it. A
constant scorer therefore gets the worst rank (C of C) instead of a lucky first place (the
original code's argsort let ties count as hits).

Two evaluation modes:
  * candidate lists: ``scores (B, C)`` with the positive at column 0 and C-1 sampled
    negatives; :func:`ranking_metrics` or, chunk by chunk, :class:`RankingAccumulator`.
  * full ranking: the positive against every item, scored chunk by chunk over the items;
    sum :func:`items_ranked_above` over the chunks, rank = 1 + that sum, and feed the ranks
    to :class:`RankHistogram`.

Two families (trainers/protocols.py picks one per protocol): :class:`RankingAccumulator`
(HR@1/5/10/20, NDCG@5/10/20, MRR, AUC, GAUC over the lists) and :class:`FeedbackAccumulator` (AUC
and GAUC over every candidate row with its label, MRR@10 and NDCG@10 within the groups whose
real target is positive, and ``auc_pos``); :func:`ranking_random_floor` and
:func:`feedback_random_floor` give a uniformly random scorer's expected metrics.

Accumulators keep integer histograms (of ranks, of negatives below the positive) rather
than running float sums, so a chunked evaluation returns bit-for-bit the numbers of one big
call whatever the chunk sizes. Inputs may be torch tensors or numpy arrays; outputs are
torch tensors (per-list values) or plain floats (metric dicts).
"""

from __future__ import annotations

import numpy as np
import torch

HR_AT = (1, 5, 10, 20)
NDCG_AT = (5, 10, 20)
FEEDBACK_AT = 10  # MRR@10, NDCG@10 (DFAR, Section 4.1.3)


def _as_tensor(values, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(values) if not torch.is_tensor(values) else values)
    if tensor.is_floating_point() and torch.isnan(tensor).any():
        raise ValueError(f"{name} contains NaN: a NaN score cannot be ranked")
    return tensor.detach().cpu()


def rank_of_positive(scores) -> torch.Tensor:
    """Rank of the positive (column 0) in each candidate list, pessimistic ties.

    Args:
        scores: (B, C) scores, higher is better, positive at column 0.
    Returns:
        (B,) int64 ranks in 1..C: ``1 + #(negatives with score >= positive)``.
    Raises:
        ValueError: not 2-D, fewer than 2 columns, or NaN scores.
    """
    scores = _as_tensor(scores, "scores")
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (B, C) with C >= 2, got shape {tuple(scores.shape)}")
    return 1 + (scores[:, 1:] >= scores[:, :1]).sum(dim=1)


def items_ranked_above(pos_score, item_scores, exclude) -> torch.Tensor:
    """Full-ranking helper: how many items of one chunk rank at or above the positive.

    Sum the result over all item chunks; the positive's rank is ``1 + sum``. Ties are
    pessimistic (an item scoring exactly the positive's score counts as above). Items in
    ``exclude`` never rank: pass padding id 0 and the positive item itself (which would
    otherwise tie with itself), and, if wanted, items the user already interacted with.

    Args:
        pos_score: (B,) score of each user's positive item.
        item_scores: (B, N) scores of one chunk of N items for the same users.
        exclude: (B, N) or (N,) bool, True where an item must not rank.
    Returns:
        (B,) int64 count of non-excluded items with score >= the positive's.
    Raises:
        ValueError: shape mismatch or NaN scores.
    """
    pos = _as_tensor(pos_score, "pos_score")
    items = _as_tensor(item_scores, "item_scores")
    mask = _as_tensor(exclude, "exclude").bool()
    if items.dim() != 2 or pos.shape != (items.shape[0],):
        raise ValueError(
            f"pos_score must be (B,) and item_scores (B, N); got {tuple(pos.shape)} and "
            f"{tuple(items.shape)}"
        )
    if mask.shape not in {items.shape, items.shape[1:]}:
        raise ValueError(f"exclude must be (B, N) or (N,), got {tuple(mask.shape)}")
    return ((items >= pos[:, None]) & ~mask).sum(dim=1)


class RankHistogram:
    """Counts of positive ranks; HR@k, NDCG@k (Eq. 26-27, log base 2) and MRR (Eq. 28)."""

    def __init__(self) -> None:
        self.counts = torch.zeros(1, dtype=torch.int64)  # counts[r] = lists with rank r

    def add(self, ranks) -> None:
        """Add (B,) int ranks (>= 1)."""
        ranks = _as_tensor(ranks, "ranks").long().reshape(-1)
        if ranks.numel() == 0:
            return
        if ranks.min() < 1:
            raise ValueError(f"ranks start at 1, got {int(ranks.min())}")
        add = torch.bincount(ranks)
        if add.numel() > self.counts.numel():
            grow = add.numel() - self.counts.numel()
            self.counts = torch.cat([self.counts, self.counts.new_zeros(grow)])
        self.counts[: add.numel()] += add

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def metrics(self) -> dict[str, float]:
        """Returns hr@1/5/10/20, ndcg@5/10/20, mrr averaged over all lists added.

        Raises:
            ValueError: nothing was added.
        """
        n = self.total
        if n == 0:
            raise ValueError("no ranks were added: cannot average over zero lists")
        ranks = torch.arange(self.counts.numel(), dtype=torch.float64)
        counts = self.counts.double()
        out = {f"hr@{k}": float(counts[1 : k + 1].sum() / n) for k in HR_AT}
        # Eq. 27 with I = 1 inside the top k: (2^1 - 1) / log2(R + 1).
        gain = 1.0 / torch.log2(ranks[1:] + 1.0)
        for k in NDCG_AT:
            out[f"ndcg@{k}"] = float((counts[1 : k + 1] * gain[:k]).sum() / n)
        out["mrr"] = float((counts[1:] / ranks[1:]).sum() / n)
        return out


class RankingAccumulator:
    """Chunked evaluation of candidate lists: ``update`` per batch, ``compute`` at the end.

    AUC is per list: the fraction of negatives scoring strictly below the positive (a tie
    counts 0, pessimistic like the ranks), averaged over lists. GAUC pools each user's lists:
    AUC_u is over all (positive, negative) pairs of that user's lists, so a positive is also
    compared with the negatives of the user's other lists; users are weighted by their
    number of lists (with one list per user, GAUC = AUC). Pooling needs every score, so the
    accumulator keeps the (B, C) score chunks until ``compute``: memory O(lists x C).
    """

    def __init__(self) -> None:
        self.ranks = RankHistogram()
        self.below: torch.Tensor | None = None  # below[k] = lists with k negatives below
        self.users: list[torch.Tensor] = []
        self.scores: list[torch.Tensor] = []

    def update(self, scores, users, target_label=None) -> None:
        """Add one chunk.

        Args:
            scores: (B, C) scores, positive at column 0; C fixed across chunks.
            users: (B,) user ids of the lists.
            target_label: (B,) labels of column 0, all 1 under the ranking protocols (the
                argument lets every protocol's accumulator be fed alike); None = all 1.
        Raises:
            ValueError: bad shapes, NaN, C differs from earlier chunks, or a target label 0.
        """
        if target_label is not None and (_as_tensor(target_label, "target_label") != 1).any():
            raise ValueError("a ranking protocol's lists need a positive target (label 1) in "
                             "column 0; negative targets belong to the feedback protocol")
        ranks = rank_of_positive(scores)
        scores = _as_tensor(scores, "scores").float()
        users = _as_tensor(users, "users").long().reshape(-1)
        if users.shape[0] != scores.shape[0]:
            raise ValueError(f"users has {users.shape[0]} rows, scores {scores.shape[0]}")
        num_neg = scores.shape[1] - 1
        if self.below is None:
            self.below = torch.zeros(num_neg + 1, dtype=torch.int64)
        elif self.below.numel() != num_neg + 1:
            raise ValueError(
                f"every chunk needs the same candidates per list: got {num_neg + 1}, "
                f"earlier {self.below.numel()}"
            )
        self.ranks.add(ranks)
        below = (scores[:, 1:] < scores[:, :1]).sum(dim=1)
        self.below += torch.bincount(below, minlength=num_neg + 1)
        self.users.append(users)
        self.scores.append(scores)

    def compute(self) -> dict[str, float]:
        """Returns hr@1/5/10/20, ndcg@5/10/20, mrr, auc, gauc.

        Raises:
            ValueError: nothing was added.
        """
        out = self.ranks.metrics()
        num_neg = self.below.numel() - 1
        k = torch.arange(num_neg + 1, dtype=torch.float64)
        out["auc"] = float((self.below.double() * k).sum() / num_neg / self.ranks.total)
        out["gauc"] = _pooled_gauc(torch.cat(self.users), torch.cat(self.scores))
        return out

    def per_user(self) -> dict[str, torch.Tensor]:
        """Each user's metrics, the mean over the user's lists (issue 26: tests pair models
        by user): ``user`` (U,) sorted ids, then hr@k, ndcg@k, mrr (U,) float64.

        Raises:
            ValueError: nothing was added.
        """
        if not self.scores:
            raise ValueError("no lists were added: no user has a metric")
        users, ranks = torch.cat(self.users), rank_of_positive(torch.cat(self.scores))
        return _user_means(users, _rank_metrics(ranks.double()))


def _rank_metrics(ranks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per list, from (N,) float ranks: hr@k, ndcg@k (Eq. 26-27) and the reciprocal rank."""
    out = {f"hr@{k}": (ranks <= k).double() for k in HR_AT}
    gain = 1.0 / torch.log2(ranks + 1.0)
    out.update({f"ndcg@{k}": torch.where(ranks <= k, gain, 0.0) for k in NDCG_AT})
    out["mrr"] = 1.0 / ranks
    return out


def _user_means(users: torch.Tensor, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``user`` (U,) sorted distinct ids and, per value, the mean over each user's rows
    (NaN rows left out of the mean; a user with none gets NaN)."""
    ids, user = torch.unique(users, return_inverse=True)
    out = {"user": ids}
    for name, value in values.items():
        value = value.double()
        real = ~torch.isnan(value)
        total = torch.zeros(len(ids), dtype=torch.float64).index_add_(
            0, user[real], value[real])
        count = torch.bincount(user[real], minlength=len(ids)).double()
        out[name] = total / count  # 0/0 = NaN: no row of that user has the metric
    return out


def _pooled_gauc(users: torch.Tensor, scores: torch.Tensor) -> float:
    """GAUC over users, each user's AUC pooled over all pairs of their lists.

    Args:
        users: (B,) user ids; scores: (B, C), positive at column 0.
    Returns:
        sum_u n_u * AUC_u / sum_u n_u with n_u the user's number of lists.
    """
    num_neg = scores.shape[1] - 1
    _, user = torch.unique(users, return_inverse=True)  # (B,) dense user index
    num_users = int(user.max()) + 1
    # Replace scores by their dense rank among all scores so (user, score) packs exactly
    # into one int64 key: sorting keys sorts negatives by user, then by score.
    levels, score_rank = torch.unique(scores, return_inverse=True)
    span = levels.numel()
    pos_key = user * span + score_rank[:, 0]  # (B,)
    neg_key = (user[:, None] * span + score_rank[:, 1:]).reshape(-1).sort().values
    # Negatives of the same user strictly below the positive: keys in [user*span, pos_key).
    below = torch.searchsorted(neg_key, pos_key) - torch.searchsorted(neg_key, user * span)
    lists = torch.bincount(user, minlength=num_users).double()  # n_u
    below_u = torch.zeros(num_users, dtype=torch.float64).index_add_(0, user, below.double())
    auc_u = below_u / (lists * lists * num_neg)  # pairs: n_u positives x n_u*(C-1) negatives
    return float((lists * auc_u).sum() / lists.sum())


def _pessimistic_auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(positive scores strictly above negative) over all pairs; a tie counts 0.

    Raises:
        ValueError: no positive or no negative.
    """
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError(f"AUC needs both classes: {pos.numel()} positive and {neg.numel()} "
                         "negative rows")
    below = torch.searchsorted(neg.double().sort().values, pos.double())  # negatives < pos
    return float(below.double().sum() / (pos.numel() * neg.numel()))


class FeedbackAccumulator:
    """Chunked evaluation of ``feedback`` groups (DFAR, Section 4.1.3; PROTOCOLS.md §5).

    A group is one row: its real next interaction at column 0 with the feedback label
    ``target_label`` and C-1 sampled unseen items (label 0). Pessimistic ties everywhere.

    * ``auc``: pooled over every candidate row of every group: the share of (label-1 row,
      label-0 row) pairs whose positive scores strictly higher.
    * ``gauc``: per user the same AUC over the user's candidate rows, averaged with weights
      = the user's groups (rows of the split; every group has C candidates, so weighting by
      candidate rows is the same). Users whose rows hold one class only (every target
      negative) have no AUC and are skipped; :attr:`gauc_skipped_users` says how many.
    * ``mrr@10``, ``ndcg@10``: rank of the target within its group (as
      :func:`rank_of_positive`), over the groups whose target is positive; 0 beyond 10.
    * ``auc_pos``: pooled AUC over the positive-target groups only (what the released DFAR
      code's Table 2 measures).

    Keeps the (B, C) score chunks until ``compute``: memory O(groups x C).
    """

    def __init__(self) -> None:
        self.users: list[torch.Tensor] = []
        self.scores: list[torch.Tensor] = []
        self.target_label: list[torch.Tensor] = []
        self.gauc_users = 0  # users with an AUC (set by compute)
        self.gauc_skipped_users = 0  # users with one class only (set by compute)

    def update(self, scores, users, target_label) -> None:
        """Add one chunk.

        Args:
            scores: (B, C) scores, the real target at column 0; C fixed across chunks.
            users: (B,) user ids; target_label: (B,) 0/1 label of column 0.
        Raises:
            ValueError: bad shapes, NaN, labels not 0/1, or C differs from earlier chunks.
        """
        scores = _as_tensor(scores, "scores").float()
        users = _as_tensor(users, "users").long().reshape(-1)
        label = _as_tensor(target_label, "target_label").long().reshape(-1)
        if scores.dim() != 2 or scores.shape[1] < 2:
            raise ValueError(f"scores must be (B, C) with C >= 2, got shape {tuple(scores.shape)}")
        if not users.shape[0] == label.shape[0] == scores.shape[0]:
            raise ValueError(f"users ({users.shape[0]}), target_label ({label.shape[0]}) and "
                             f"scores ({scores.shape[0]}) must have the same rows")
        if ((label != 0) & (label != 1)).any():
            raise ValueError("target_label must be 0 or 1")
        if self.scores and self.scores[0].shape[1] != scores.shape[1]:
            raise ValueError(f"every chunk needs the same candidates per list: got "
                             f"{scores.shape[1]}, earlier {self.scores[0].shape[1]}")
        self.scores.append(scores)
        self.users.append(users)
        self.target_label.append(label)

    def compute(self) -> dict[str, float]:
        """Returns auc, gauc, mrr@10, ndcg@10, auc_pos.

        Raises:
            ValueError: nothing was added, or no group has a positive target.
        """
        if not self.scores:
            raise ValueError("no groups were added: cannot average over zero lists")
        scores, users = torch.cat(self.scores), torch.cat(self.users)  # (N, C), (N,)
        target = torch.cat(self.target_label)  # (N,)
        labels = torch.zeros_like(scores, dtype=torch.int64)
        labels[:, 0] = target  # (N, C): sampled candidates are label 0
        positive_groups = target == 1
        if not positive_groups.any():
            raise ValueError("no group has a positive target: MRR@10 / NDCG@10 are undefined")
        out = {"auc": _pessimistic_auc(scores[labels == 1], scores[labels == 0])}
        out["gauc"] = self._gauc(users, scores, labels)
        hist = RankHistogram()
        hist.add(rank_of_positive(scores[positive_groups]))
        n, counts = hist.total, hist.counts.double()
        r = torch.arange(1, min(counts.numel() - 1, FEEDBACK_AT) + 1, dtype=torch.float64)
        top = counts[1:r.numel() + 1]
        out[f"mrr@{FEEDBACK_AT}"] = float((top / r).sum() / n)
        out[f"ndcg@{FEEDBACK_AT}"] = float((top / torch.log2(r + 1.0)).sum() / n)
        pos_scores, pos_labels = scores[positive_groups], labels[positive_groups]
        out["auc_pos"] = _pessimistic_auc(pos_scores[pos_labels == 1],
                                          pos_scores[pos_labels == 0])
        return out

    def per_user(self) -> dict[str, torch.Tensor]:
        """Each user's ``auc`` (pessimistic, over all the user's candidate rows: GAUC's
        AUC_u; NaN for a user with one class only) and ``mrr@10`` (mean over the user's
        positive-target groups; NaN without one), with ``user`` (U,) sorted ids: what tests
        pair by user under ``feedback``, whose pooled AUC has no per-user value (issue 26).

        Raises:
            ValueError: nothing was added.
        """
        if not self.scores:
            raise ValueError("no groups were added: no user has a metric")
        scores, users = torch.cat(self.scores), torch.cat(self.users)  # (N, C), (N,)
        target = torch.cat(self.target_label)
        ids, user = torch.unique(users, return_inverse=True)
        auc = torch.full((len(ids),), float("nan"), dtype=torch.float64)
        for u in range(len(ids)):  # per user: a few groups each
            rows = scores[user == u]
            labels = torch.zeros_like(rows, dtype=torch.int64)
            labels[:, 0] = target[user == u]
            if (labels == 1).any() and (labels == 0).any():
                auc[u] = _pessimistic_auc(rows[labels == 1], rows[labels == 0])
        ranks = rank_of_positive(scores).double()
        reciprocal = torch.where(ranks <= FEEDBACK_AT, 1.0 / ranks, 0.0)
        reciprocal = torch.where(target == 1, reciprocal, float("nan"))
        out = _user_means(users, {f"mrr@{FEEDBACK_AT}": reciprocal})
        return {"user": ids, "auc": auc, f"mrr@{FEEDBACK_AT}": out[f"mrr@{FEEDBACK_AT}"]}

    def _gauc(self, users: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> float:
        """sum_u n_u AUC_u / sum_u n_u over users with both classes (n_u: the user's groups)."""
        N, C = scores.shape
        _, user = torch.unique(users, return_inverse=True)  # (N,) dense user index
        num_users = int(user.max()) + 1
        user_c = user[:, None].expand(N, C).reshape(-1)  # (N*C,)
        flat_labels = labels.reshape(-1)
        # Dense score ranks pack (user, score) exactly into one sortable int64 key.
        levels, score_rank = torch.unique(scores.reshape(-1), return_inverse=True)
        key = user_c * levels.numel() + score_rank  # (N*C,)
        is_pos = flat_labels == 1
        neg_key = key[~is_pos].sort().values
        # Negatives of the same user strictly below each positive: keys in [u*span, key).
        start = user_c[is_pos] * levels.numel()
        below = torch.searchsorted(neg_key, key[is_pos]) - torch.searchsorted(neg_key, start)
        below_u = torch.zeros(num_users, dtype=torch.float64).index_add_(
            0, user_c[is_pos], below.double())
        pos_u = torch.bincount(user_c[is_pos], minlength=num_users).double()
        neg_u = torch.bincount(user_c[~is_pos], minlength=num_users).double()
        groups_u = torch.bincount(user, minlength=num_users).double()
        both = (pos_u > 0) & (neg_u > 0)
        self.gauc_users = int(both.sum())
        self.gauc_skipped_users = num_users - self.gauc_users
        if not both.any():
            raise ValueError("GAUC needs a user with both positive and negative rows")
        auc_u = below_u[both] / (pos_u[both] * neg_u[both])
        return float((groups_u[both] * auc_u).sum() / groups_u[both].sum())


def _random_ranks(candidates: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1/r, 1/log2(r+1)) for the equally likely ranks r = 1..C of a random scorer."""
    if candidates < 2:
        raise ValueError(f"a list needs at least 2 candidates, got {candidates}")
    r = torch.arange(1, candidates + 1, dtype=torch.float64)
    return 1.0 / r, 1.0 / torch.log2(r + 1.0)


def ranking_random_floor(candidates: int) -> dict[str, float]:
    """Expected ranking metrics of a scorer drawing i.i.d. continuous random scores (no
    ties): the target's rank is uniform on 1..C and every AUC is 1/2.

    Returns:
        the :class:`RankingAccumulator` keys (hr@k, ndcg@k, mrr, auc, gauc).
    """
    recip, dcg = _random_ranks(candidates)
    out = {f"hr@{k}": min(k, candidates) / candidates for k in HR_AT}
    out.update({f"ndcg@{k}": float(dcg[:k].sum() / candidates) for k in NDCG_AT})
    out["mrr"] = float(recip.sum() / candidates)
    out["auc"] = out["gauc"] = 0.5
    return out


def feedback_random_floor(candidates: int) -> dict[str, float]:
    """The same for feedback groups: with C = 10, MRR@10 = H_10 / 10 = .2929 and
    NDCG@10 = .4544 (the floor PROTOCOLS.md §1 quotes); GAUC is 1/2 for every user with both
    classes.

    Returns:
        the :class:`FeedbackAccumulator` keys (auc, gauc, mrr@10, ndcg@10, auc_pos).
    """
    recip, dcg = _random_ranks(candidates)
    return {"auc": 0.5, "gauc": 0.5,
            f"mrr@{FEEDBACK_AT}": float(recip[:FEEDBACK_AT].sum() / candidates),
            f"ndcg@{FEEDBACK_AT}": float(dcg[:FEEDBACK_AT].sum() / candidates), "auc_pos": 0.5}


def ranking_metrics(scores, users) -> dict[str, float]:
    """All candidate-list metrics in one call (same numbers as chunked accumulation).

    Args:
        scores: (B, C) scores, positive at column 0.
        users: (B,) user ids (for GAUC).
    Returns:
        dict with hr@1, hr@5, hr@10, ndcg@5, ndcg@10, mrr, auc, gauc.
    """
    acc = RankingAccumulator()
    acc.update(scores, users)
    return acc.compute()
