"""SASRec (Kang & McAuley, ICDM 2018, "Self-Attentive Sequential Recommendation"): causal
self-attention over the user's item sequence.

Implemented (equation numbers of the paper):
  * Embedding layer, Section III-A: Ê_t = M_{s_t} + P_t with a learned positional embedding P
    (Eq. 1 area); positions are absolute slots of the left-padded window, so the newest item
    always sits at slot L-1 as in the paper's right-aligned input.
  * Self-attention block, Section III-B/C: S = SA(Ê) = softmax(QKᵀ/√d)V with causal masking
    (Eq. 2-3), point-wise two-layer FFN F = ReLU(S W1 + b1) W2 + b2 (Eq. 4), each sub-layer
    wrapped as g(x) = x + Dropout(g(LayerNorm(x))) (Section III-D), b stacked blocks.
  * Prediction layer, Section III-E: r_{i,t} = F_t · M_i with the item embedding M shared
    between input and output (Eq. 6 with the shared-embedding choice the paper recommends).
  * Loss, Section III-F: binary cross-entropy over every position (Eq. 7). The last
    position scores the target's candidates (positive + real and sampled negatives); in
    training every earlier position t scores the next history item o_t against one sampled
    negative (trainers/models/next_item.py), and the loss averages over all those predictions.

Beyond the paper (trainers/models/next_item.py says why):
  * ``params.loss``: ``bce`` (Eq. 7) by default; ``ce``, ``sampled_softmax`` or ``gbce`` train the
    same predictions with that objective instead (trainers/models/objectives.py).
  * Feedback labels: with ``sequence_label`` in the batch (an optional input), a label
    embedding is added to each input item, Ê_t = M_{s_t} + P_t + Y_{y_t}, so the encoder
    reads the same (item, label) history as DFAR (issue 14); the history loss then treats a
    negative-feedback next item as a negative target (real negatives, issue 15).
  * The history positions' negatives are the batch's ``next_negatives``, drawn as the
    candidates' sampled negatives are (uniform or by popularity).
  * Empty history: the final LayerNorm is applied without re-masking, as the authors' code
    does, so a user with no history gets its learned shift (a trained "no history" state)
    instead of a zero state that scores every candidate 0 and, with pessimistic ties,
    ranks the positive last; the padding slot before the first item predicts that item.

SASRec as FMLP-Rec's released code runs it (settings beyond the paper; issue 23): that code,
whose data and negatives DualRec's Table 2 uses, ships a SASRec (its ``--no_filters``
model), which differs from the paper in two ways, each a setting:
  * ``block: post_ln``: E = Drop(LN(M_{s_t} + P_t)); each sub-layer LN(x + Drop(g(x)))
    (the BERT layer, trainers/models/transformer.py), the FFN GELU(x W1 + b1) W2 + b2 of
    inner size ``ffn_dim`` (the code: 4d), no final LayerNorm; padding states are 0, so
    there is no empty-history state and the padding slot before the first item predicts
    nothing (the code does train one: its all-padding input still carries LN(P) through
    uniform attention; keep ``pre_ln`` where users may have no history, as under
    ``slices``). ``pre_ln`` (default) is Section III-D's block with Eq. 4's d x d FFN.
  * ``training: prefixes``: every prediction reads its own prefix, right-aligned in the
    window, scored at its last slot, so in training as in scoring the newest item sits at
    the last positional row (the code trains one prefix per sample). ``positions``
    (default, Eq. 7) reads the whole window once; position t then predicts from the slot
    L-1-(n-1-t) of an n-event window, a row that scoring never puts the newest item on.
    Both make the same predictions against the same sampled negatives.
  ``sasrec:block=post_ln:ffn_dim=256:num_heads=2:dropout=0.5:training=prefixes`` is the
  code's SASRec on d = 64 (its 2 heads, dropout 0.5 on attention weights and hidden states).

Initialisation (the paper gives none): attention and FFN weights start as N(0, 0.02²) with
zero biases (``params.init_std``), as RecBole's SASRec and the S3-Rec / FMLP-Rec
reimplementations whose SASRec numbers DualRec's and FMLP-Rec's tables print. With torch's
defaults (``init_std: null``; xavier / kaiming-uniform, ~4x larger at d = 64) each block's
output outweighs the 0.02-0.1 item rows on the residual path, so the last item's identity
is drowned and SASRec sits on popularity's plateau for tens of epochs on sparse data
(issue 23: real Amazon Toys HR@10 0.29 after 20 epochs against the published 0.50; the
Toys-shaped ``sample-loo`` 0.26 flat, 0.33 and rising after 8 epochs with the 0.02 start).

Simplifications, and why:
  * Padding keys are masked and padding rows are zeroed after every block (the paper's code
    does the same); a padding query may attend to itself only, so no softmax row is empty.

Shapes: B batch, C candidates, L sequence length, d embedding.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from trainers.embedding import RowSparseEmbedding
from trainers.models.item_scoring import score_rows
from trainers.models.next_item import HistoryParams, HistoryScores, bce_with_history, \
    history_pairs, prefix_rows
from trainers.models.objectives import (ObjectiveParams, Predictions, draw_negatives,
                                        objective_loss, sequence_predictions)
from trainers.models.transformer import LAYER_NORM_EPS, TransformerLayer, init_weights
from trainers.registry import Batch, DataSizes, ModelParams, Output, register


class SASRecParams(ObjectiveParams, HistoryParams):
    embed_dim: int = Field(gt=0)  # d (paper: 50)
    embed_init_std: float = Field(gt=0)  # embedding rows start as N(0, std²)
    # attention and FFN weights N(0, std²), biases 0 (RecBole's and the S3-Rec / FMLP-Rec
    # reimplementations' initializer_range); None: torch's defaults (issue 23: SASRec then
    # stays on popularity's plateau on sparse data)
    init_std: float | None = Field(gt=0)
    num_blocks: int = Field(ge=1)  # b (paper: 2)
    num_heads: int = Field(ge=1)  # paper: 1 (more heads did not help)
    dropout: float = Field(ge=0.0, lt=1.0)  # paper: 0.2 dense data, 0.5 sparse data
    block: Literal["pre_ln", "post_ln"]  # pre_ln: III-D; post_ln: FMLP-Rec's code (docstring)
    ffn_dim: int | None = Field(gt=0)  # FFN inner size; None: d (Eq. 4's d x d W1)
    training: Literal["positions", "prefixes"]  # positions: Eq. 7 in one pass; prefixes: code
    loss: Literal["bce", "ce", "sampled_softmax", "gbce"]  # bce: Eq. 7 (objectives.py)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> SASRecParams:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by "
                             f"num_heads {self.num_heads}")
        return self


class _Block(nn.Module):
    """One self-attention block of the paper: x + Drop(SA(LN(x))), then x + Drop(FFN(LN(x)))
    with FFN = ReLU(x W1 + b1) W2 + b2 (Eq. 4; inner size ``ffn_dim``)."""

    def __init__(self, d: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.ln_attn = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ln_ffn = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn_dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, d))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, blocked: torch.Tensor, keep: torch.Tensor
                ) -> tuple[torch.Tensor, None]:
        """Args: x (B, L, d); blocked (B, 1, L, L) bool, True = may not attend; keep (B, L, 1)
        float, 0 on padding. Returns (B, L, d), 0 on padding, and None (no per-head output,
        as :class:`TransformerLayer` gives)."""
        h = self.ln_attn(x)
        mask = blocked.squeeze(1).repeat_interleave(self.attn.num_heads, dim=0)  # (B*h, L, L)
        x = x + self.dropout(self.attn(h, h, h, attn_mask=mask, need_weights=False)[0])
        return (x + self.dropout(self.ffn(self.ln_ffn(x)))) * keep, None


@register("sasrec")
class SASRec(nn.Module):
    Params: ClassVar[type[ModelParams]] = SASRecParams
    inputs: ClassVar[frozenset[str]] = frozenset({"sequence"})
    optional_inputs: ClassVar[frozenset[str]] = frozenset({"sequence_label", "next_negatives"})
    variable_length: ClassVar[bool] = True  # left padding never reaches an output

    def __init__(self, params: SASRecParams, sizes: DataSizes):
        super().__init__()
        self.params = params
        d = params.embed_dim
        # M: input and output (Eq. 6)
        self.item = RowSparseEmbedding(sizes.num_items + 1, d, params.embed_init_std)
        self.position = nn.Embedding(sizes.sequence_len, d)  # P (Eq. 1)
        self.label = nn.Embedding(2, d)  # Y: 0 negative, 1 positive feedback
        for table in (self.position, self.label):  # as M's rows, not N(0, 1) (issue 23)
            nn.init.normal_(table.weight, std=params.embed_init_std)
        self.dropout = nn.Dropout(params.dropout)
        ffn_dim = params.ffn_dim or d
        post = params.block == "post_ln"
        self.blocks = nn.ModuleList(
            TransformerLayer(d, params.num_heads, ffn_dim, params.dropout, "none",
                             sizes.sequence_len, ffn_dropout=False) if post
            else _Block(d, params.num_heads, ffn_dim, params.dropout)
            for _ in range(params.num_blocks))
        # post_ln: LN on the embedding sum (the code's); pre_ln: the final LN of III-D
        self.ln_in = nn.LayerNorm(d, eps=LAYER_NORM_EPS) if post else nn.Identity()
        self.ln_out = nn.Identity() if post else nn.LayerNorm(d)
        if params.init_std is not None:
            init_weights(self.blocks, params.init_std)

    def position_states(self, sequence: torch.Tensor,
                        sequence_label: torch.Tensor | None = None) -> torch.Tensor:
        """F_t for every position of a left-padded sequence.

        Args:
            sequence: (B, L) item ids, left-padded with 0; L <= sizes.sequence_len.
            sequence_label: (B, L) int64 feedback labels, or None (no label embedding).
        Returns:
            (B, L, d); position t depends on events at positions <= t only; on padding,
            the empty history's state (the final LayerNorm's shift).
        """
        B, L = sequence.shape
        if L > self.position.num_embeddings:
            raise ValueError(f"sequence length {L} exceeds the model's "
                             f"{self.position.num_embeddings} positions")
        # The window's newest slot is the last positional row, whatever L is.
        slots = torch.arange(self.position.num_embeddings - L, self.position.num_embeddings,
                             device=sequence.device)
        keep = (sequence != 0).unsqueeze(-1)  # (B, L, 1)
        x = self.item(sequence) + self.position(slots)  # (B, L, d)
        if sequence_label is not None:
            x = x + self.label(sequence_label)
        x = self.dropout(self.ln_in(x)) * keep
        causal = torch.ones(L, L, dtype=torch.bool, device=sequence.device).triu(1)  # j > t
        blocked = causal | (sequence == 0).unsqueeze(1)  # (B, L, L): future or padding keys
        blocked = blocked & ~torch.eye(L, dtype=torch.bool, device=sequence.device)
        blocked = blocked.unsqueeze(1)  # (B, 1, L, L): the same for every head
        for block in self.blocks:
            x = block(x, blocked, keep.to(x.dtype))[0]
        return self.ln_out(x)  # pre_ln: padding rows are 0 here, LN(0) = its learned shift

    def forward(self, batch: Batch) -> Output:
        """Args: batch with ``sequence`` (B, L), ``items`` (B, C) and optionally
        ``sequence_label`` (B, L). Returns (B, C) logits.

        In training (grad enabled) it also scores each history position's next item and a
        sampled negative (Eq. 7): the output's ``terms`` (:class:`HistoryScores`).
        """
        sequence, items = batch["sequence"], batch["items"]
        sequence_label = batch.get("sequence_label")
        states = self.position_states(sequence, sequence_label)  # (B, L, d): F_t
        terms = None
        if self.training and torch.is_grad_enabled():
            num_items = self.item.weight.shape[0] - 1
            targets, labels, negatives, valid = history_pairs(
                sequence, num_items, sequence_label, batch.get("next_negatives"),
                enabled=self.params.history_targets)
            if self.params.block == "post_ln":  # no empty-history state: padding's is 0
                valid = valid & (sequence[:, :-1] != 0)
            if self.params.training == "prefixes":
                states = self._prefix_states(sequence, sequence_label, valid, states)
            if self.params.loss == "bce":
                pairs = torch.stack([targets, negatives], dim=-1)  # (B, L-1, 2)
                history = score_rows(states[:, :-1], self.item(pairs))  # r_{o_t,t}, r_{j,t}
                terms = HistoryScores(history, labels, valid)  # (B, L-1, 2), (B, L-1) x2
            else:  # the same predictions for another objective (objectives.py)
                terms = Predictions(
                    *sequence_predictions(states, targets, labels, valid, items[:, 0],
                                          batch["label"][:, 0]),
                    draw_negatives(self.params.loss, num_items, self.params.loss_negatives,
                                   sequence.device, states.shape[-1],
                                   self.params.softmax_max_logits))
        return Output(score_rows(states[:, -1], self.item(items)), terms)  # Eq. 6

    def _prefix_states(self, sequence: torch.Tensor, sequence_label: torch.Tensor | None,
                       valid: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """``states`` with each valid history position's state read from its own prefix
        (``training: prefixes``): sequence[:t+1] right-aligned in the window, its last slot.

        A prefix's left padding changes none of its states (padding keys are masked), so
        each prefix runs on its newest w slots alone, w the power of two (at most L) that
        holds its items: most prefixes of a sparse log are a few items long.

        Args: sequence, sequence_label (or None): (B, L); valid: (B, L-1) bool, the
        positions that predict; states: (B, L, d) of the whole window.
        Returns: (B, L, d); the last slot (the candidates' state) is the window's own.
        """
        if not valid.any():  # nothing predicts (a batch of one-event rows under post_ln)
            return states
        prefixes, b, t = prefix_rows(sequence, valid)  # (M, L)
        labels = None if sequence_label is None else prefix_rows(sequence_label, valid)[0]
        L = sequence.shape[1]
        items = (prefixes != 0).sum(1).clamp(min=1)  # (M,); an empty history reads 1 slot
        width = (2 ** torch.ceil(torch.log2(items.float()))).long().clamp(max=L)  # (M,)
        rows, outs = [], []
        for w in width.unique().tolist():
            r = (width == w).nonzero(as_tuple=True)[0]
            rows.append(r)
            outs.append(self.position_states(
                prefixes[r, -w:], None if labels is None else labels[r, -w:])[:, -1])
        h = torch.cat(outs)[torch.cat(rows).argsort()]  # (M, d) in prefix order
        return states.index_put((b, t), h)

    def encode_users(self, batch: Batch) -> torch.Tensor:
        """F_t at the last position, which scores the candidates: (B, d)."""
        return self.position_states(batch["sequence"], batch.get("sequence_label"))[:, -1]

    def item_table(self) -> tuple[torch.Tensor, None]:
        """M (Eq. 6), (I+1, d); no item bias."""
        return self.item.weight, None

    def loss(self, output: Output, batch: Batch) -> torch.Tensor:
        """Binary cross-entropy of Eq. 7: over the candidates (scores (B, C), positive at
        column 0) and, after a training forward, over every history position; or, with
        ``params.loss`` another objective, that objective's mean over the same predictions
        (trainers/models/objectives.py; a training forward's output only).

        Raises:
            RuntimeError: another objective than ``bce`` without a training forward.
        """
        if self.params.loss == "bce":
            return bce_with_history(output.scores, batch["label"], output.terms)
        p = self.params
        return objective_loss(p.loss, output.terms, lambda ids: (self.item(ids), None),
                              self.item.weight.shape[0] - 1, p.softmax_max_logits, p.gbce_t)

    def regularization(self) -> torch.Tensor:
        """1/2 ||θ||² over the dense parameters (the loop multiplies by λ, as for SCoRe)."""
        return sum(p.pow(2).sum() for p in self.parameters() if p.requires_grad) / 2
