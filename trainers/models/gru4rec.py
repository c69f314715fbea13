"""GRU4Rec (Hidasi et al., ICLR 2016, "Session-based Recommendations with Recurrent Neural
Networks"): a GRU reads the user's item sequence; the final hidden state scores candidates.

Implemented:
  * Section 3.1: embedding of each input item -> GRU layer(s) -> hidden state h_t (GRU
    update Eq. 1-4 of the paper, ``nn.GRU``).
  * Section 3.1.2, sampled output: only the candidates are scored,
    r̂_i = h_t · W_i + b_i, with an output item table W separate from the input one.
  * Section 3.1.1, every event is a target: in training the state after each history item
    also scores the next history item, and the loss averages over all those predictions and
    the candidate list of the last state.
  * Section 3.1.2, mini-batch negatives (``params.ranking_negatives: in_batch``): each
    history prediction ranks its next item above the mini-batch's other targets, B-1 of
    them for a batch of B rows, as a session-parallel batch of B events gives
    (:func:`in_batch_negatives`; popularity-proportional by construction). A negative
    equal to the position's own next item is not counted.
  * Section 3.1.3 ranking losses over the candidates (positive vs. each negative):
    BPR  L = -1/N_S Σ_j log σ(r̂_i - r̂_j)
    TOP1 L =  1/N_S Σ_j σ(r̂_j - r̂_i) + σ(r̂_j²)
    The paper reports both, far ahead of pointwise cross-entropy; ``params.loss`` picks one.

Beyond the paper (trainers/models/next_item.py says why):
  * ``params.loss``: ``top1`` or ``bpr`` (Section 3.1.3; preset: top1); ``ce``,
    ``sampled_softmax`` or ``gbce`` train the same predictions with that objective instead
    (trainers/models/objectives.py).
  * Feedback labels: with ``sequence_label`` in the batch (an optional input) the GRU reads
    item + label embeddings, so it sees the same (item, label) history as DFAR (issue 14).
    A history position whose next event is negative feedback ranks that disliked item
    below the sampled one (the pair's roles swap), and so does a candidate list whose
    target has label 0: liked > unobserved > disliked, the order the candidate lists' real
    negatives are judged by (issue 15).
  * Empty history: the padding slot before the first item predicts it from h_0 = 0 (the
    scores are then the biases b_i), so a user without history is scored by trained biases.
  * ``params.tied_embedding`` (the authors' released code's ``constrained_embedding``,
    hidasib/GRU4Rec; all six of its published best parameter files set it): the GRU reads
    the output table's rows, x_t = W_{i_t}, instead of a separate input table, so an item
    seen only as input or only as a target still trains one shared row (needs d = k). The
    paper's separate tables are the default. On the full-size Toys-shaped generated log
    with ``loss: ce`` and dropout 0.5, untied tables had valid MRR 0.17 after 10 epochs,
    tied ones 0.30 after 5 and test HR@10 0.518 (2.18x popularity; the TOP1 preset 0.379,
    1.59x; GRU4Rec on the real Toys in DualRec's Table 2: 1.99x; issue 23).

Simplifications, and why:
  * No session-parallel mini-batches (Section 3.1.1). Here a sample is one user's whole
    sequence before the target slice, so each sequence is read from the start in one call
    and all its positions are targets at once; the parallel-session trick only exists to
    avoid padding when streaming many sessions.
  * The preset ranks each history target against one sampled item
    (``ranking_negatives: sampled``, the batch's ``next_negatives``, trainers/batches.py),
    not the paper's mini-batch negatives. Under the leave-one-out protocol's uniform
    candidates (DualRec's tables, whose GRU4Rec rows are reimplementations), the mini-batch
    way, whose negatives share the positives' popularity, learns less: on ML-100K at the
    preset's lr 1e-2 it reached test HR@10 0.533 after 80 epochs against one sampled item's
    0.654 (popularity 0.368); at lr 1e-3 it was still at random level when early stopping
    (patience 10, 4 steps an epoch) ended it after 11 epochs (issue 23).
  * The last state's negatives are the index's train candidates (as for every model); the
    mini-batch negatives are drawn from the batch's history targets with replacement (a
    sample of B-1, not all of a batch's ~B x L events).
  * Learning rate (conf/models/gru4rec.yaml ``train.lr``): 1e-2 with Adam, not the 1e-3 the
    other next-item presets use. At 1e-3 it stays near popularity for ~20 epochs (one
    window per user an epoch: 4 steps on ML-100K, 45 on the Toys-shaped sample), so early
    stopping ends it there: ML-100K test HR@10 0.502 at 1e-3 vs 0.654 at 1e-2 after 80
    epochs (popularity 0.368); the session-rec benchmark's GRU4Rec tunings (Adagrad) chose
    0.02-0.09 (issue 23). A paper's recipe for its whole table (``table.train``: DFAR's 1e-4) wins.
  * The sequence is the last L items (``index.sequence_max_len``), left-padded with 0;
    the GRU reads the real items from h_0 = 0, so the padding length never leaks into h_t.

Shapes: B batch, C candidates, L sequence length, d embedding, k hidden size.
"""

from __future__ import annotations

from typing import ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from trainers.embedding import RowSparseEmbedding
from trainers.models.item_scoring import score_rows
from trainers.models.next_item import HistoryParams, HistoryScores, combined_mean, \
    history_pairs
from trainers.models.objectives import (ObjectiveParams, Predictions, draw_negatives,
                                        objective_loss, sequence_predictions)
from trainers.registry import Batch, DataSizes, ModelParams, Output, register


def align_left_padded(lengths: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather indices that move the real items of left-padded rows to the front and back.

    Args:
        lengths: (B,) real items per row; row b holds them at positions L-lengths[b]..L-1.
        L: padded length.
    Returns:
        to_front, to_back: (B, L) int64; ``x.gather(1, to_front)`` is right-padded and
        ``y.gather(1, to_back)`` undoes it (a per-row rotation by the padding count).
    """
    pos = torch.arange(L, device=lengths.device).unsqueeze(0)  # (1, L)
    pad = (L - lengths).unsqueeze(1)  # (B, 1)
    return (pos + pad) % L, (pos - pad) % L


class InBatchHistory(NamedTuple):
    """The history positions' scores against the mini-batch's other targets (Section 3.1.2)."""

    scores: torch.Tensor  # (B, L-1, 1+N): the next item, then the N shared negatives
    labels: torch.Tensor  # (B, L-1) 1.0 positive / 0.0 negative feedback of the next item
    valid: torch.Tensor  # (B, L-1) bool: a real position with at least one counted negative
    counted: torch.Tensor  # (B, L-1, N) bool: a real position's negative, not its next item


def in_batch_negatives(targets: torch.Tensor, valid: torch.Tensor, n: int) -> torch.Tensor:
    """N = ``n`` negatives shared by every history position of a mini-batch: the targets of
    its other predictions (Section 3.1.2: "the other training examples of the mini-batch";
    a session-parallel batch of B events gives each B-1), drawn uniformly over its valid
    targets, so an item comes up as often as it is an event there (popularity sampling).

    Args:
        targets: (B, L-1) next items; valid: (B, L-1) bool, the real predictions.
        n: how many (B-1 for a batch of B rows); none when the batch has no valid target.
    Returns:
        (n,) item ids (repeats allowed, as in a session-parallel batch), or (0,).
    """
    pool = targets[valid]  # (P,)
    if pool.numel() == 0 or n <= 0:
        return pool[:0]
    return pool[torch.randint(pool.numel(), (n,), device=pool.device)]


class GRU4RecParams(ObjectiveParams, HistoryParams):
    embed_dim: int = Field(gt=0)  # d: input item embedding
    embed_init_std: float = Field(gt=0)  # embedding rows start as N(0, std²)
    hidden_dim: int = Field(gt=0)  # k: GRU hidden size (paper: 100 units, one layer)
    num_layers: int = Field(ge=1)
    dropout: float = Field(ge=0.0, lt=1.0)  # on the input embeddings
    # top1 | bpr: the paper's two ranking losses (Section 3.1.3); ce | sampled_softmax |
    # gbce: trainers/models/objectives.py over the same predictions
    loss: Literal["bpr", "top1", "ce", "sampled_softmax", "gbce"]
    # top1 / bpr on the history positions: each prediction against the mini-batch's other
    # targets (in_batch: Section 3.1.2, B-1 of them) or against one sampled item (sampled)
    ranking_negatives: Literal["in_batch", "sampled"]
    # the GRU reads the output rows W (released code's constrained_embedding); needs d = k
    tied_embedding: bool

    @model_validator(mode="after")
    def _tied_widths(self) -> GRU4RecParams:
        if self.tied_embedding and self.embed_dim != self.hidden_dim:
            raise ValueError(f"tied_embedding reads the output rows W (hidden_dim "
                             f"{self.hidden_dim} wide) as inputs: set embed_dim = hidden_dim, "
                             f"got {self.embed_dim}")
        return self


@register("gru4rec")
class GRU4Rec(nn.Module):
    Params: ClassVar[type[ModelParams]] = GRU4RecParams
    inputs: ClassVar[frozenset[str]] = frozenset({"sequence"})
    optional_inputs: ClassVar[frozenset[str]] = frozenset({"sequence_label", "next_negatives"})
    variable_length: ClassVar[bool] = True  # left padding never reaches an output

    def __init__(self, params: GRU4RecParams, sizes: DataSizes):
        super().__init__()
        self.params = params
        rows, std = sizes.num_items + 1, params.embed_init_std
        item_in = (None if params.tied_embedding
                   else RowSparseEmbedding(rows, params.embed_dim, std))
        self.item_out = RowSparseEmbedding(rows, params.hidden_dim, std)  # W of 3.1.2
        self.item_in = item_in if item_in is not None else self.item_out  # x_t = W_{i_t}
        self.item_bias = RowSparseEmbedding(rows, 1, std)  # b of 3.1.2
        self.label = nn.Embedding(2, params.embed_dim)  # 0 negative, 1 positive feedback
        nn.init.normal_(self.label.weight, std=std)  # as the item rows, not N(0, 1) (issue 23)
        self.dropout = nn.Dropout(params.dropout)
        self.gru = nn.GRU(params.embed_dim, params.hidden_dim, params.num_layers, batch_first=True)

    def position_states(self, sequence: torch.Tensor,
                        sequence_label: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden state after each position of a left-padded sequence.

        Args:
            sequence: (B, L) item ids, left-padded with 0.
            sequence_label: (B, L) int64 feedback labels, or None (no label embedding).
        Returns:
            (B, L, k): row b, position p holds h after reading items up to p; 0 on padding.
        """
        B, L = sequence.shape
        lengths = (sequence != 0).sum(dim=1)  # (B,)
        # Left padding would run the GRU over zeros before the first item. Moving the real
        # items to the front instead puts the padding after them, where it can only touch
        # states that are thrown away: exact, and cheaper than packed sequences on CPU.
        to_front, to_back = align_left_padded(lengths, L)  # (B, L) gather indices each
        x = self.item_in(sequence.gather(1, to_front))  # (B, L, d)
        if sequence_label is not None:
            x = x + self.label(sequence_label.gather(1, to_front))
        x = self.dropout(x)
        out, _ = self.gru(x)  # (B, L, k): real items first
        out = out.gather(1, to_back.unsqueeze(-1).expand_as(out))  # back to the input's slots
        return out * (sequence != 0).unsqueeze(-1)

    def forward(self, batch: Batch) -> Output:
        """Args: batch with ``sequence`` (B, L), ``items`` (B, C) and optionally
        ``sequence_label`` (B, L). Returns (B, C) logits.

        In training (grad enabled) it also scores each history position's next item and a
        sampled negative: the output's ``terms`` (:class:`HistoryScores`).
        """
        sequence, items = batch["sequence"], batch["items"]
        sequence_label = batch.get("sequence_label")
        states = self.position_states(sequence, sequence_label)  # (B, L, k)
        h = states[:, -1]  # (B, k): newest item is last
        if not (self.training and torch.is_grad_enabled()):
            return Output(self._score(h, items))
        num_items = self.item_out.weight.shape[0] - 1
        targets, labels, negatives, valid = history_pairs(
            sequence, num_items, sequence_label, batch.get("next_negatives"),
            enabled=self.params.history_targets)
        if self.params.loss not in ("bpr", "top1"):  # another objective (objectives.py)
            predicted = sequence_predictions(states, targets, labels, valid, items[:, 0],
                                             batch["label"][:, 0])
            negatives = draw_negatives(self.params.loss, num_items,
                                       self.params.loss_negatives, sequence.device,
                                       states.shape[-1], self.params.softmax_max_logits)
            return Output(self._score(h, items), Predictions(*predicted, negatives))
        if self.params.ranking_negatives == "sampled":
            history = self._score(states[:, :-1],
                                  torch.stack([targets, negatives], dim=-1))  # (B, L-1, 2)
            return Output(self._score(h, items), HistoryScores(history, labels, valid))
        shared = in_batch_negatives(targets, valid, sequence.shape[0] - 1)  # (N,)
        w, b = self._rows(shared)  # (N, k), (N,)
        positive = self._score(states[:, :-1], targets.unsqueeze(-1))  # (B, L-1, 1)
        history = torch.cat([positive, states[:, :-1] @ w.T + b], dim=-1)  # (B, L-1, 1+N)
        # (B, L-1, N): a real position's negatives, less its own next item
        counted = (shared != targets.unsqueeze(-1)) & valid.unsqueeze(-1)
        return Output(self._score(h, items),
                      InBatchHistory(history, labels, counted.any(-1), counted))

    def _score(self, h: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """r̂ = h · W_i + b_i: h (..., k), items (..., n) -> (..., n)."""
        w, b = self.item_out(items), self.item_bias(items)  # (..., n, k), (..., n, 1)
        return score_rows(h, w, b.squeeze(-1))

    def _rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """W_i and b_i of ids (...,): (..., k), (...,)."""
        return self.item_out(ids), self.item_bias(ids).squeeze(-1)

    def encode_users(self, batch: Batch) -> torch.Tensor:
        """h after the newest item, which scores the candidates: (B, k)."""
        return self.position_states(batch["sequence"], batch.get("sequence_label"))[:, -1]

    def item_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W and b of Section 3.1.2: (I+1, k), (I+1,)."""
        return self.item_out.weight, self.item_bias.weight.squeeze(-1)

    def loss(self, output: Output, batch: Batch) -> torch.Tensor:
        """Ranking loss of Section 3.1.3 over the candidates (``output.scores`` (B, C), target
        at column 0) and, after a training forward, over every history position.

        Column 0 is ranked above the others when its label is 1; a negative-feedback
        target (label 0, ``feedback`` protocol) or next item is ranked below them instead.
        With ``params.loss`` ``ce``, ``sampled_softmax`` or ``gbce``: that objective's mean
        over the same predictions (trainers/models/objectives.py; a training forward's
        output only).

        Raises:
            RuntimeError: another objective than top1 / bpr without a training forward.
        """
        if self.params.loss not in ("bpr", "top1"):
            p = self.params
            return objective_loss(p.loss, output.terms, self._rows,
                                  self.item_out.weight.shape[0] - 1, p.softmax_max_logits,
                                  p.gbce_t)
        liked = batch["label"][:, 0] > 0  # (B,)
        candidates = self._ranking(output.scores, liked).mean(dim=1)  # (B,)
        if output.terms is None:
            return candidates.mean()
        if isinstance(output.terms, InBatchHistory):
            scores_h, labels, valid, counted = output.terms  # (B, L-1, 1+N), .., (B, L-1, N)
            ranked = self._ranking(scores_h, labels > 0) * counted  # (B, L-1, N)
            history = ranked.sum(-1) / counted.sum(-1).clamp(min=1)  # 1/N_S Σ_j
            return combined_mean(candidates, history, valid)
        scores_h, labels, valid = output.terms  # (B, L-1, 2), (B, L-1), (B, L-1)
        return combined_mean(candidates, self._ranking(scores_h, labels > 0).squeeze(-1), valid)

    def _ranking(self, scores: torch.Tensor, liked: torch.Tensor) -> torch.Tensor:
        """BPR or TOP1 of index 0 of the last axis against each other index, (..., 1 + n)
        -> (..., n): index 0 is the pair's preferred item where ``liked`` (...,) is True,
        the other items are where it is False."""
        first, rest = scores[..., :1], scores[..., 1:]
        liked = liked.unsqueeze(-1)
        pos, neg = torch.where(liked, first, rest), torch.where(liked, rest, first)
        if self.params.loss == "bpr":
            return -F.logsigmoid(pos - neg)
        return torch.sigmoid(neg - pos) + torch.sigmoid(neg**2)

    def regularization(self) -> torch.Tensor:
        """1/2 ||θ||² over the dense parameters (the loop multiplies by λ, as for SCoRe)."""
        return sum(p.pow(2).sum() for p in self.parameters() if p.requires_grad) / 2
