"""Caser (Tang & Wang, WSDM 2018, "Personalized Top-N Sequential Recommendation via
Convolutional Sequence Embedding"): horizontal and vertical convolutions over the embedding
matrix of the user's last L' items.

Implemented (equation numbers of the paper):
  * Embedding look-up: E ∈ R^{L'×d}, the last L' items stacked (Eq. 1).
  * Horizontal convolutions: n_h filters of each height h ∈ {1..L'} and width d,
    c_i = φ_c(E_{i:i+h-1} ⊙ F) (Eq. 2), max-pooled over i (Eq. 3): union-level and
    point-level sequential patterns.
  * Vertical convolutions: n_v filters F̃ ∈ R^{L'×1}, c̃ = Σ_l F̃_l E_l (Eq. 4-5): a learned
    weighted sum of the L' embeddings.
  * Fully-connected layer: z = φ_a(W [o; õ] + b) (Eq. 6), with dropout on [o; õ] as in the
    authors' code.
  * Prediction: y_i = W'_i · [z; P_u] + b'_i (Eq. 7): the user's general taste P_u is added
    after the convolutions; W' is a separate output item table of width 2d.
  * Loss: binary cross-entropy over the positive and sampled negatives (Eq. 10-11): each
    window target i against n = ``negatives`` sampled items j. Eq. 11's Σ_j runs over every
    j ≠ i, which a sample of n stands for only up to a scale the paper does not give; the
    released code (``neg_samples`` = 3) averages a target's n terms
    (``negatives_reduction: mean``, the preset), ``sum`` adds them.
    φ_c = φ_a = ReLU (the paper's best setting).
  * Training windows (Section 3.5): every window of the sequence is a training instance.
    The last window scores the target slice's candidates; in training each earlier window
    scores the next T history items ("skip" targets, Eq. 10-11: the T items after the
    window, T = ``targets_ahead``, paper: 3), each against its n sampled items
    (trainers/models/next_item.py), and the loss averages over all those predictions.
    These windows are Caser's training set, so it has no ``history_targets`` setting (the
    feedback tables turn it off for GRU4Rec and SASRec): trained on each row's target
    alone it fit its rows (train loss 4.0 -> 2.6) at valid AUC 0.55 on the generated
    feedback log, and lost 0.016 AUC on MovieLens-100K (issue 23).

Beyond the paper (trainers/models/next_item.py says why):
  * ``params.loss``: ``bce`` (Eq. 11) by default; ``ce``, ``sampled_softmax`` or ``gbce`` train the
    same predictions with that objective instead (trainers/models/objectives.py).
  * Feedback labels: with ``sequence_label`` in the batch (an optional input) each row of E
    is item + label embedding, the same (item, label) history DFAR reads (issue 14); the
    history loss treats a negative-feedback next item as a negative target (issue 15).
  * The history positions' negatives are the batch's ``next_negatives``, drawn as the
    candidates' sampled negatives are (uniform or by popularity); a target's n - 1 further
    items are drawn from the batch's draws (trainers/models/next_item.py
    ``more_negatives``), so they follow the same distribution. The released code draws
    them uniformly from the items the user never rated.
  * Empty history: the all-padding window before the first item predicts that item, so the
    state of a user without history is trained.

Simplifications, and why:
  * The last window's skip targets beyond the candidate row's target do not exist (the
    row ends there); earlier windows' targets stop at the history's end.
  * Windows reaching before the first item are zero-padded.
  * The last window (the candidate row) is scored against the index's sampled candidates
    (``index.train_negatives``), not against n items of its own.

Shapes: B batch, C candidates, L sequence length, W = window L', d embedding.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainers.embedding import RowSparseEmbedding
from trainers.models.item_scoring import score_rows
from trainers.models.next_item import (HistoryScores, bce_with_history, history_pairs,
                                       more_negatives)
from trainers.models.objectives import (ObjectiveParams, Predictions, draw_negatives,
                                        objective_loss, sequence_predictions)
from trainers.registry import Batch, DataSizes, ModelParams, Output, register


class CaserParams(ObjectiveParams):
    embed_dim: int = Field(gt=0)  # d (paper: 50)
    embed_init_std: float = Field(gt=0)  # embedding rows start as N(0, std²)
    window: int = Field(gt=0)  # L': items the convolutions see (paper: 5)
    horizontal_filters: int = Field(gt=0)  # n_h per height (paper: 16)
    vertical_filters: int = Field(gt=0)  # n_v (paper: 4)
    dropout: float = Field(ge=0.0, lt=1.0)  # paper: 0.5
    loss: Literal["bce", "ce", "sampled_softmax", "gbce"]  # bce: Eq. 11 (objectives.py)
    personalized: bool  # P_u in Eq. 7; false: the paper's Caser without p (Sec. 4.5)
    targets_ahead: int = Field(ge=1)  # T: items after each window (paper: 3)
    negatives: int = Field(ge=1)  # sampled items per window target in Eq. 11 (code: 3)
    negatives_reduction: Literal["sum", "mean"]  # of a target's n terms (code: mean)


def skip_targets(sequence: torch.Tensor, pairs: tuple[torch.Tensor, ...],
                 T: int) -> list[tuple[torch.Tensor, ...]]:
    """The T items after each window (Eq. 10-11's D_u: "skip" targets), block k = 1..T.

    Args:
        sequence: (B, L) item ids, left-padded with 0.
        pairs: :func:`history_pairs` of the sequence: block 1 (the next item, (B, L-1)),
            whose labels (feedback, or all 1) and negatives the later blocks reuse.
        T: targets per window.
    Returns:
        [(targets, labels, negatives, valid)] for k = 1..min(T, L-1), each (B, L-k): window
        p's k-th target is the item at p+k, valid where it is a real event and the window
        ends on a real event (block 1 also trains the empty history, as ``history_pairs``);
        its negatives (one per column of ``pairs``' negatives: (B, L-1) or (B, L-1, n)) are
        the ones drawn against that same item, so never it.
    """
    blocks = [tuple(pairs)]
    _, labels, negatives, _ = pairs
    for k in range(2, min(T, sequence.shape[1] - 1) + 1):
        targets = sequence[:, k:]  # (B, L-k)
        valid = (targets != 0) & (sequence[:, :-k] != 0)
        blocks.append((targets, labels[:, k - 1:], negatives[:, k - 1:], valid))
    return blocks


@register("caser")
class Caser(nn.Module):
    Params: ClassVar[type[ModelParams]] = CaserParams
    inputs: ClassVar[frozenset[str]] = frozenset({"sequence"})
    optional_inputs: ClassVar[frozenset[str]] = frozenset({"sequence_label", "next_negatives"})

    def __init__(self, params: CaserParams, sizes: DataSizes):
        super().__init__()
        self.params = params
        d, W = params.embed_dim, params.window
        std = params.embed_init_std
        self.item = RowSparseEmbedding(sizes.num_items + 1, d, std)  # input E (Eq. 1)
        self.label = nn.Embedding(2, d)  # added to E's rows: 0 negative, 1 positive feedback
        nn.init.normal_(self.label.weight, std=std)  # as E's rows, not N(0, 1) (issue 23)
        # P_u (Eq. 7); without personalization W' has only z's d columns
        self.user = (RowSparseEmbedding(sizes.num_users + 1, d, std)
                     if params.personalized else None)
        width = 2 * d if params.personalized else d
        self.item_out = RowSparseEmbedding(sizes.num_items + 1, width, std)  # W' (Eq. 7)
        self.item_bias = RowSparseEmbedding(sizes.num_items + 1, 1, std)  # b' (Eq. 7)
        self.horizontal = nn.ModuleList(
            nn.Conv2d(1, params.horizontal_filters, (h, d)) for h in range(1, W + 1))
        self.vertical = nn.Conv2d(1, params.vertical_filters, (W, 1))
        self.fc = nn.Linear(W * params.horizontal_filters + params.vertical_filters * d, d)
        self.dropout = nn.Dropout(params.dropout)

    def position_states(self, sequence: torch.Tensor,
                        sequence_label: torch.Tensor | None = None) -> torch.Tensor:
        """z of Eq. 6 for the window of the last L' items ending at each position.

        Every window at once: a horizontal filter of height h is convolved over the whole
        (left zero-padded) sequence once, and its max over each window (Eq. 3) is a sliding
        max of width L'-h+1; the vertical filters (Eq. 4-5) are a convolution of height L'.
        Same values as convolving each window separately, without copying every window.

        Args:
            sequence: (B, L) item ids, left-padded with 0.
            sequence_label: (B, L) int64 feedback labels, or None (no label embedding).
        Returns:
            (B, L, d): position t sees items t-L'+1..t only (causal by construction).
        """
        B, L = sequence.shape
        W = self.params.window
        padded = F.pad(sequence, (W - 1, 0))  # (B, L+W-1): windows before the first item
        E = self.item(padded)  # (B, L+W-1, d)
        if sequence_label is not None:
            E = E + self.label(F.pad(sequence_label, (W - 1, 0)))
        # Padding slots are zero rows, as the paper's zero-padding.
        E = (E * (padded != 0).unsqueeze(-1)).unsqueeze(1)  # (B, 1, L+W-1, d)
        o = []
        for h, conv in enumerate(self.horizontal, start=1):
            c = F.relu(conv(E)).squeeze(3)  # (B, n_h, L+W-h): Eq. 2 at every offset
            o.append(F.max_pool1d(c, W - h + 1, stride=1))  # (B, n_h, L): Eq. 3 per window
        o_h = torch.cat(o, dim=1).transpose(1, 2)  # (B, L, W*n_h)
        o_v = self.vertical(E).permute(0, 2, 1, 3).reshape(B, L, -1)  # (B, L, n_v*d)
        return F.relu(self.fc(self.dropout(torch.cat([o_h, o_v], dim=-1))))  # (B, L, d)

    def forward(self, batch: Batch) -> Output:
        """Args: batch with ``sequence`` (B, L), ``user`` (B,), ``items`` (B, C) and
        optionally ``sequence_label`` (B, L). Returns: (B, C) logits y_i of Eq. 7.

        In training (grad enabled) every earlier window of the sequence is also scored
        against its next item and a sampled negative: the output's ``terms``
        (:class:`HistoryScores`).
        """
        sequence, items = batch["sequence"], batch["items"]
        sequence_label = batch.get("sequence_label")
        P_u = self._user(batch)  # (B, d), or (B, 0) without personalization
        states = self.position_states(sequence, sequence_label)  # (B, L, d)
        L = states.shape[1]
        terms = None
        if self.training and torch.is_grad_enabled():
            num_items = self.item.weight.shape[0] - 1
            pairs = history_pairs(sequence, num_items, sequence_label,
                                  batch.get("next_negatives"))
            zp = torch.cat([states, P_u.unsqueeze(1).expand(-1, L, -1)], dim=-1)  # (B, L, 2d)
            if self.params.loss == "bce":
                targets, labels, negatives, valid = pairs
                negatives = more_negatives(targets, negatives, self.params.negatives,
                                           num_items, "next_negatives" in batch)  # (B, L-1, n)
                skips = skip_targets(sequence, (targets, labels, negatives, valid),
                                     self.params.targets_ahead)
                # window p's k-th target sits at column p of block k: states [:, :L-k]
                zs = torch.cat([zp[:, :L - k] for k in range(1, len(skips) + 1)], dim=1)
                targets, labels, negatives, valid = (torch.cat(x, dim=1) for x in zip(*skips))
                history = self._predict(zs, torch.cat([targets.unsqueeze(-1), negatives], -1))
                terms = HistoryScores(history, labels, valid)  # (B, N, 1+n), (B, N) x2
            else:  # the same predictions for another objective (objectives.py)
                skips = skip_targets(sequence, pairs, self.params.targets_ahead)
                targets, labels, _, valid = pairs
                states_m, targets_m = sequence_predictions(
                    zp, targets, labels, valid, items[:, 0], batch["label"][:, 0])
                for k, (t_k, l_k, _, v_k) in enumerate(skips[1:], start=2):
                    keep = v_k & (l_k > 0)  # (B, L-k): positive skip targets only
                    states_m = torch.cat([states_m, zp[:, :L - k][keep]])
                    targets_m = torch.cat([targets_m, t_k[keep]])
                terms = Predictions(
                    states_m, targets_m,
                    draw_negatives(self.params.loss, num_items, self.params.loss_negatives,
                                   sequence.device, zp.shape[-1],
                                   self.params.softmax_max_logits))
        return Output(self._predict(torch.cat([states[:, -1], P_u], dim=1), items), terms)

    def _predict(self, zp: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """y_i = W'_i · [z; P_u] + b'_i (Eq. 7): zp (..., 2d), items (..., n) -> (..., n)."""
        return score_rows(zp, self.item_out(items), self.item_bias(items).squeeze(-1))

    def _user(self, batch: Batch) -> torch.Tensor:
        """P_u of Eq. 7: (B, d); (B, 0) without personalization, so [z; P_u] is z."""
        if self.user is None:
            return batch["sequence"].new_zeros((batch["sequence"].shape[0], 0), dtype=torch.float)
        return self.user(batch["user"])

    def encode_users(self, batch: Batch) -> torch.Tensor:
        """[z; P_u] of Eq. 7 for the last window, which scores the candidates: (B, 2d), or
        (B, d) without personalization."""
        z = self.position_states(batch["sequence"], batch.get("sequence_label"))[:, -1]
        return torch.cat([z, self._user(batch)], dim=1)

    def item_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W' and b' of Eq. 7: (I+1, 2d) or (I+1, d), (I+1,)."""
        return self.item_out.weight, self.item_bias.weight.squeeze(-1)

    def loss(self, output: Output, batch: Batch) -> torch.Tensor:
        """Binary cross-entropy of Eq. 11 over the candidates (scores (B, C), positive at
        column 0) and, after a training forward, over every earlier window's next item; or,
        with ``params.loss`` another objective, that objective's mean over the same
        predictions (trainers/models/objectives.py; a training forward's output only).

        Raises:
            RuntimeError: another objective than ``bce`` without a training forward.
        """
        if self.params.loss == "bce":
            weight = 1.0 if self.params.negatives_reduction == "sum" else 1 / self.params.negatives
            return bce_with_history(output.scores, batch["label"], output.terms, weight)
        p = self.params
        return objective_loss(
            p.loss, output.terms,
            lambda ids: (self.item_out(ids), self.item_bias(ids).squeeze(-1)),  # W', b'
            self.item.weight.shape[0] - 1, p.softmax_max_logits, p.gbce_t)

    def regularization(self) -> torch.Tensor:
        """1/2 ||θ||² over the dense parameters (the loop multiplies by λ, as for SCoRe)."""
        return sum(p.pow(2).sum() for p in self.parameters() if p.requires_grad) / 2
