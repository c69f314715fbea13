"""BERT4Rec (Sun et al., CIKM 2019, "BERT4Rec: Sequential Recommendation with Bidirectional
Encoder Representations from Transformer"): a bidirectional Transformer trained on the
Cloze task.

Implemented (equation numbers of the paper):
  * Embedding, Section 3.4: h^0_i = Drop(LN(v_i + p_i)), item embedding v (one extra row for
    [mask]) plus learned absolute positions p over the L slots.
  * Transformer layers, Eq. 1-5: multi-head self-attention over every real slot (no causal
    mask; padding keys blocked), post-LayerNorm, GELU FFN without dropout between its two
    layers (Eq. 4-5; trainers/models/transformer.py).
  * Output, Eq. 7: P(v) = softmax(LN(GELU(h W^P + b^P)) Eᵀ + b^O), E the input item
    embedding (shared), b^O a per-item bias.
  * Cloze training, Section 3.6: the training sequence (``sequence`` then the target,
    its newest L items) has each real item replaced by [mask] with probability ρ
    (``mask_prob``); the loss is the mean negative log-likelihood of the masked items
    (Eq. 8) with the full softmax over all items (trainers/models/softmax.py, chunked).
    With probability ``mask_last_prob`` a row masks only its last item instead, the paper's
    extra samples "that only mask the last item" to match the next-item task.
  * Inference, Section 3.6: [mask] is appended to the history (the oldest slot drops out)
    and its output scores the candidates.
  * Slots that are padding in every row are cropped first (exact: positions are aligned to
    the newest slot, padding keys are blocked).

The two LN above are BERT's, which the paper builds on (Section 3) and its released code
runs (BERT's ``embedding_postprocessor`` and the masked-LM head's ``transform``); the paper's
Section 3.4 and Eq. 7 print neither. ``embed_norm: false`` / ``head_norm: false`` give the
printed forms. Without the head's LN, GELU(h W^P + b^P) starts at ~0.09 a dimension (the
LN makes it 1), so the logits start at a tenth of their scale and an Adam step of the item
rows moves them a tenth as far: BERT4Rec then learns slowly. On the generated Toys-shaped
log of ≤ 500 users it reached 1.22-1.29x popularity's HR@10 in 100 epochs (seeds 0, 1,
2024); with both LN 1.70-1.78x, and 1.57-1.60x in 60 (issue 23).

``params.loss``: ``ce`` (Eq. 8's full softmax) by default; ``sampled_softmax`` or ``gbce``
score the masked positions against sampled items instead (trainers/models/objectives.py).

The item table is a dense ``nn.Embedding``: the full softmax touches every row each step.

Shapes: B batch, C candidates, L sequence length, d embedding, M masked positions.
"""

from __future__ import annotations

from typing import ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainers.models.dual import crop_padding
from trainers.models.item_scoring import score_rows
from trainers.models.objectives import (ObjectiveParams, Predictions, draw_negatives,
                                        prediction_losses)
from trainers.models.transformer import LAYER_NORM_EPS, TransformerLayer, init_weights
from trainers.registry import Batch, DataSizes, ModelParams, Output, register


class Cloze(NamedTuple):
    """A training forward's masked positions, the ``terms`` its loss reads (Eq. 8)."""

    states: torch.Tensor  # (M, d) encoder states at the masked slots
    targets: torch.Tensor  # (M,) the items they hide
    negatives: torch.Tensor | None = None  # (G, K) sampled sets (sampled_softmax, gbce)


class BERT4RecParams(ObjectiveParams):
    embed_dim: int = Field(gt=0)  # d (paper: 64)
    init_std: float = Field(gt=0)  # weights start as N(0, std²) (paper: truncated, 0.02)
    num_layers: int = Field(ge=1)  # paper: 2
    num_heads: int = Field(ge=1)  # paper: 2
    ffn_dim: int = Field(gt=0)  # paper: 4d
    dropout: float = Field(ge=0.0, lt=1.0)  # paper: 0.1
    mask_prob: float = Field(gt=0.0, le=1.0)  # ρ (paper: 0.6 Beauty, 0.4 Steam, 0.2 ML)
    mask_last_prob: float = Field(ge=0.0, le=1.0)  # rows masking only their last item
    loss: Literal["ce", "sampled_softmax", "gbce"]  # ce: Eq. 8's full softmax (objectives.py)
    embed_norm: bool  # LN over v + p (released code, BERT's); false: Section 3.4's v + p
    head_norm: bool  # LN after GELU(h W^P + b^P) (released code, BERT's); false: Eq. 7 as printed


def norm(d: int) -> nn.LayerNorm:
    """BERT's LayerNorm (epsilon 1e-12)."""
    return nn.LayerNorm(d, eps=LAYER_NORM_EPS)


@register("bert4rec")
class BERT4Rec(nn.Module):
    Params: ClassVar[type[ModelParams]] = BERT4RecParams
    inputs: ClassVar[frozenset[str]] = frozenset({"sequence"})
    optional_inputs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: BERT4RecParams, sizes: DataSizes):
        super().__init__()
        self.params = params
        d, L = params.embed_dim, sizes.sequence_len
        self.num_items = sizes.num_items
        self.mask_id = sizes.num_items + 1  # rows: 0 padding, 1..N items, N+1 [mask]
        self.item = nn.Embedding(sizes.num_items + 2, d, padding_idx=0)  # v / E
        self.position = nn.Embedding(L, d)  # p
        self.embed_norm = norm(d) if params.embed_norm else nn.Identity()
        self.dropout = nn.Dropout(params.dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(d, params.num_heads, params.ffn_dim, params.dropout, "none", L,
                             ffn_dropout=False)
            for _ in range(params.num_layers))
        self.project = nn.Linear(d, d)  # W^P, b^P of Eq. 7
        self.head_norm = norm(d) if params.head_norm else nn.Identity()
        self.item_bias = nn.Parameter(torch.zeros(sizes.num_items + 1))  # b^O (0: padding)
        init_weights(self, params.init_std)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Bidirectional states: tokens (B, L) ids (0 padding, N+1 [mask]) -> (B, L, d)."""
        B, L = tokens.shape
        keep = tokens != 0
        mask = keep.unsqueeze(-1).to(self.item.weight.dtype)  # (B, L, 1)
        x = self.item(tokens) + self.position.weight[-L:]  # newest last
        x = self.dropout(self.embed_norm(x)) * mask
        blocked = ~keep[:, None, None, :]  # (B, 1, 1, L): padding keys; every row has a real one
        for layer in self.layers:
            x, _ = layer(x, blocked, mask)
        return x

    def output(self, states: torch.Tensor) -> torch.Tensor:
        """LN(GELU(h W^P + b^P)) of Eq. 7: (..., d) -> (..., d)."""
        return self.head_norm(F.gelu(self.project(states)))

    def cloze(self, full: torch.Tensor) -> torch.Tensor:
        """Which real items of the training sequences become [mask] (Section 3.6).

        Args:
            full: (B, L) training sequences, left-padded.
        Returns:
            (B, L) bool.
        """
        real = full != 0
        masked = (torch.rand(full.shape, device=full.device) < self.params.mask_prob) & real
        last_only = torch.rand(full.shape[0], device=full.device) < self.params.mask_last_prob
        only_last = torch.zeros_like(masked)
        only_last[:, -1] = real[:, -1]
        return torch.where(last_only[:, None], only_last, masked)

    def with_mask(self, sequence: torch.Tensor) -> torch.Tensor:
        """The inference input (Section 3.6): [mask] appended to the history, the oldest slot
        dropped, all-padding slots cropped: (B, L) -> (B, L')."""
        append = torch.full_like(sequence[:, :1], self.mask_id)
        return crop_padding(torch.cat([sequence[:, 1:], append], dim=1))

    def forward(self, batch: Batch) -> Output:
        """Args: batch with ``sequence`` (B, L) and ``items`` (B, C). Returns (B, C) logits of
        the last slot (at inference the appended [mask]).

        In training (grad enabled) it masks the training sequence; the masked states and
        items are the output's ``terms`` (:class:`Cloze`).
        """
        sequence, items = batch["sequence"], batch["items"]
        terms = None
        if self.training and torch.is_grad_enabled():
            full = crop_padding(torch.cat([sequence, items[:, :1]], dim=1)[:, 1:])  # newest L
            masked = self.cloze(full)
            states = self.encode(torch.where(masked, self.mask_id, full))
            negatives = draw_negatives(self.params.loss, self.num_items,
                                       self.params.loss_negatives, sequence.device,
                                       self.params.embed_dim, self.params.softmax_max_logits)
            terms = Cloze(states[masked], full[masked], negatives)  # (M, d), (M,), (G, K)|None
        else:
            states = self.encode(self.with_mask(sequence))
        h = self.output(states[:, -1])  # (B, d)
        return Output(score_rows(h, self.item(items), self.item_bias[items]), terms)

    def encode_users(self, batch: Batch) -> torch.Tensor:
        """LN(GELU(h W^P + b^P)) of Eq. 7 at the appended [mask]: (B, d)."""
        return self.output(self.encode(self.with_mask(batch["sequence"]))[:, -1])

    def item_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """E and b^O of Eq. 7 without the [mask] row: (I+1, d), (I+1,)."""
        return self.item.weight[:self.num_items + 1], self.item_bias

    def loss(self, output: Output, batch: Batch) -> torch.Tensor:
        """Eq. 8: mean −log P(v = masked item) over the masked positions (full softmax,
        ``params.loss: ce``), or the mean of ``sampled_softmax`` / ``gbce`` over them
        (trainers/models/objectives.py).

        Raises:
            RuntimeError: no training forward made ``output``.
        """
        if output.terms is None:
            raise RuntimeError("loss needs a training forward's output (model.train(), grad on)")
        states, targets, negatives = output.terms
        p = self.params
        losses = prediction_losses(p.loss, Predictions(self.output(states), targets, negatives),
                                   lambda ids: (self.item(ids), self.item_bias[ids]),
                                   self.num_items, p.softmax_max_logits, p.gbce_t)
        return losses.sum() / max(1, targets.numel())

    def regularization(self) -> torch.Tensor:
        """1/2 ||θ||² over every parameter, which the loop adds times ``train.l2`` (0 in the
        preset: the paper's decay is ``train.weight_decay``)."""
        return sum(p.pow(2).sum() for p in self.parameters() if p.requires_grad) / 2
