"""Each user's top-K next items from a trained model and a history :class:`Snapshot`: the
one scorer behind ``seqrec recommend`` (trainers/recommend.py) and the registered model's
pyfunc (trainers/served_model.py).

"Next" is after the user's last event (``leave_one_out``, ``feedback``: ``cut`` = the
sequence's length) or the slice after the last one (``slices``: ``cut`` = T, the history
the last H = T - 1 slices), built by the same :class:`~trainers.batches.BatchBuilder` as
training and evaluation.

* A next-item model (``NextItemRecommender``) encodes each user once and scores every item
  by a matmul with its item table, as full ranking does (trainers/evaluate.py).
* Any other (target-aware) model reranks candidates: the ``candidates`` most popular items
  (unseen ones under ``exclude_seen``) scored through ``forward``.
* A user the model never saw (idx > its ``num_users``, see trainers/snapshot.py; or
  :attr:`TopK.nobody`, a user without history) gets the popularity ranking
  (:meth:`Snapshot.popularity`), score = the item's count.
* ``exclude_seen``: items of the user's history (liked or not) are never returned.

Shapes: B users, I items, K top items, N candidates.
"""

from __future__ import annotations

import warnings

import torch

from trainers.batches import BatchBuilder, EventSequences, ItemDistribution, SliceSequences
from trainers.models.item_scoring import all_item_scores
from trainers.protocols import protocol_named
from trainers.registry import NextItemRecommender, Recommender, variable_length
from trainers.snapshot import Snapshot, load
from trainers.split_data import declared_inputs

CANDIDATES_PER_FORWARD = 4096  # (user, candidate) pairs one target-aware forward scores
ITEMS_PER_CHUNK = 65536  # items scored at once by the next-item path (B x this scores)


class TopK:
    """Top-K scorer over one snapshot (held as tensors on ``device``).

    Args:
        model: the trained model (eval mode), built for ``model_users`` users.
        snapshot: histories in the model's ids (users past ``model_users`` are cold).
        sequence_len: L, the history length the model was trained with.
    """

    def __init__(self, model: Recommender, snapshot: Snapshot, model_users: int,
                 sequence_len: int, device: torch.device | str = "cpu") -> None:
        self.model, self.snapshot, self.device = model.eval(), snapshot, device
        self.model_users = model_users
        self.num_items = snapshot.num_items
        protocol = protocol_named(snapshot.protocol)
        required, optional = declared_inputs(type(model))
        build = protocol.fed(required, optional)
        T = snapshot.num_slices
        if protocol.sliced:
            sequences = SliceSequences.from_csr(
                snapshot.offsets, snapshot.items, snapshot.slices, snapshot.labels, T,
                positives_only="sequence_label" not in build, device=device)
        else:
            sequences = EventSequences.from_csr(snapshot.offsets, snapshot.items,
                                                snapshot.labels, device)

        def tensor(array):  # read-only arrays (Ray's object store) are only read here
            if array is None:
                return None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return torch.as_tensor(array, device=device)

        negatives = (ItemDistribution(self.num_items, None, device)
                     if "next_negatives" in build else None)
        self.builder = BatchBuilder(protocol, build, tensor(snapshot.user_sets),
                                    tensor(snapshot.item_sets), T, sequences, sequence_len,
                                    negatives)
        self.builder.trim_padding = variable_length(model)
        self.sliced = protocol.sliced
        offsets = torch.as_tensor(snapshot.offsets, device=device)
        self.offsets = torch.cat([offsets, offsets[-1:]])  # + one empty user:
        self.nobody = snapshot.num_users + 1  # the idx to ask for a user with no history
        self.items = torch.as_tensor(snapshot.items.astype("int64"), device=device)
        self.popularity = torch.as_tensor(snapshot.popularity(), device=device).double()
        self.by_popularity = torch.argsort(self.popularity[1:], descending=True,
                                           stable=True) + 1  # (I,) items, most popular first

    @classmethod
    def from_weights(cls, saved: dict, snapshot: Snapshot, device: torch.device | str = "cpu"
                     ) -> TopK:
        """From a logged model's ``weights.pt`` payload (trainers/tracking.py: state dict,
        model name and module, params, sizes): the model as trained, over ``snapshot``."""
        import importlib

        from trainers.registry import DataSizes, build_model

        importlib.import_module(saved["module"])  # registers the model's name
        sizes = DataSizes(**saved["sizes"])
        model = build_model(saved["name"], saved["params"], sizes)
        model.load_state_dict(saved["state_dict"])
        return cls(model.to(device), snapshot, sizes.num_users, sizes.sequence_len, device)

    @classmethod
    def from_files(cls, weights: str, snapshot: str, device: torch.device | str = "cpu") -> TopK:
        """From a logged model's ``weights.pt`` and ``snapshot.npz``."""
        from trainers.checkpoints import load_weights

        return cls.from_weights(load_weights(weights), load(snapshot), device)

    def _cut(self, user: torch.Tensor) -> torch.Tensor:
        if self.sliced:
            return torch.full_like(user, self.snapshot.num_slices)
        return self.offsets[user + 1] - self.offsets[user]

    def _seen(self, user: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, item) of every event of these users (row indexes ``user``)."""
        start, end = self.offsets[user], self.offsets[user + 1]
        counts = end - start
        row = torch.repeat_interleave(torch.arange(len(user), device=user.device), counts)
        first = torch.cumsum(counts, 0) - counts
        position = torch.arange(len(row), device=user.device) - first[row]
        return row, self.items[start[row] + position]

    @torch.no_grad()
    def top(self, user: torch.Tensor, k: int, exclude_seen: bool, candidates: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """The top ``k`` items of each user, best first.

        Args:
            user: (B,) user idx in the snapshot.
            candidates: N, the popular items a target-aware model reranks.

        Returns:
            ((B, K) int64 items, (B, K) float64 scores), K = min(k, I); an item a user cannot
            be given (every item seen) has score -inf.
        """
        user = user.to(self.device)
        seen_row, seen_item = self._seen(user) if exclude_seen else (None, None)
        if isinstance(self.model, NextItemRecommender):
            return self._top_of_all_items(user, min(k, self.num_items), seen_row, seen_item)
        return self._rerank(user, k, seen_row, seen_item, candidates)

    def _warm(self, user: torch.Tensor) -> torch.Tensor:
        return user <= self.model_users

    def _batch(self, user: torch.Tensor, candidates: torch.Tensor):
        ones = torch.ones(len(user), dtype=torch.int64, device=user.device)
        return self.builder.build(user, self._cut(user), candidates, ones)

    def _top_of_all_items(self, user: torch.Tensor, k: int, seen_row, seen_item
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every item scored (the model's score; popularity for cold users), ``ITEMS_PER_CHUNK``
        items at a time, keeping each user's running top ``k``: memory is B x chunk, not
        B x I (4M items on Taobao)."""
        warm = self._warm(user)
        states = table = bias = None
        if warm.any():
            u = user[warm]
            table, bias = self.model.item_table()  # (I+1, d), (I+1,) or None
            states = self.model.encode_users(self._batch(u, u[:, None] * 0 + 1))  # (B', d)
        best_items = torch.empty(len(user), 0, dtype=torch.int64, device=user.device)
        best_scores = torch.empty(len(user), 0, dtype=torch.float64, device=user.device)
        for lo in range(1, self.num_items + 1, ITEMS_PER_CHUNK):
            hi = min(lo + ITEMS_PER_CHUNK, self.num_items + 1)
            scores = self.popularity[lo:hi].expand(len(user), -1).clone()  # (B, N)
            if states is not None:
                scores[warm] = all_item_scores(states, table, bias, lo, hi).double()  # (B', N)
            if seen_row is not None:
                inside = (seen_item >= lo) & (seen_item < hi)
                scores[seen_row[inside], seen_item[inside] - lo] = float("-inf")
            kept = best_scores.shape[1]  # columns 0..kept-1: the running top, then this chunk
            merged = scores if kept == 0 else torch.cat([best_scores, scores], 1)
            top = torch.topk(merged, min(k, merged.shape[1]), dim=1)
            chunk_items = top.indices - kept + lo
            if kept:
                earlier = torch.gather(best_items, 1, top.indices.clamp(max=kept - 1))
                chunk_items = torch.where(top.indices < kept, earlier, chunk_items)
            best_items, best_scores = chunk_items, top.values
        return best_items, best_scores

    def _rerank(self, user: torch.Tensor, k: int, seen_row, seen_item, n: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target-aware models: the ``n`` most popular items (unseen ones when ``seen_row``
        is given) scored through ``forward``, ``CANDIDATES_PER_FORWARD`` at a time."""
        B = len(user)
        most_seen = 0 if seen_row is None else int(torch.bincount(seen_row, minlength=B).max())
        most = self.by_popularity[:min(self.num_items, n + most_seen)]  # (M,)
        cand = most.expand(B, -1)  # (B, M)
        hidden = torch.zeros(B, len(most) + 1, dtype=torch.bool, device=user.device)
        if seen_row is not None:
            rank_of = torch.full((self.num_items + 1,), len(most), dtype=torch.int64,
                                 device=user.device)
            rank_of[most] = torch.arange(len(most), device=user.device)
            hidden[seen_row, rank_of[seen_item]] = True  # column M: seen but not popular
        hidden = hidden[:, :-1]
        order = torch.argsort(hidden.to(torch.int8), dim=1, stable=True)[:, :n]  # unseen first
        cand, hidden = torch.gather(cand, 1, order), torch.gather(hidden, 1, order)  # (B, N)
        scores = self.popularity[cand]
        warm = self._warm(user).nonzero(as_tuple=True)[0]
        step = max(1, CANDIDATES_PER_FORWARD // cand.shape[1])
        for lo in range(0, len(warm), step):
            rows = warm[lo:lo + step]
            scores[rows] = self.model(self._batch(user[rows], cand[rows])).scores.double()
        scores[hidden] = float("-inf")
        best = torch.topk(scores, min(k, cand.shape[1]), dim=1)
        return torch.gather(cand, 1, best.indices), best.values
