"""DFN (Xie et al., IJCAI 2020, "Deep Feedback Network for Recommendation"; DFAR cites it as
2021), as a baseline of DFAR's Table 2 on the (item, label) history.

DFN reads three behaviour sequences of a user: clicks (implicit positive), unclicks (implicit
negative: shown, not clicked) and dislikes (explicit negative), and has (by the paper's
section names; its text is not in ../shared/papers, so no equation numbers are quoted):
  * an internal feedback interaction component: one Transformer per feedback sequence, with
    the target item t joined to the sequence; the output at t is that feedback's feature
    f_c, f_u, f_d (here one multi-head attention block whose query is t and whose keys are
    t and the sequence, + residual, position-wise FFN and LayerNorm: the only output of a
    one-layer Transformer that the feature uses);
  * an external feedback interaction component: the precise feedbacks purify the noisy
    unclicks, f_uc = Σ_j softmax_j(f_cᵀ W u_j) u_j and f_ud from f_d alike;
  * Wide, FM and Deep feature-interaction components over [f_c, f_u, f_d, f_uc, f_ud] and
    the other features; a loss weighing click, unclick and dislike samples.

With the two feedback types of this protocol (y = 1 positive, y = 0 negative) the positive
history plays the click sequence and the negative history the unclick sequence — the
DFAR paper's reading of DFN ("purifies unclick (weak feedback) by click"), and what a skip
is in its Micro-video data. What DFN loses here:
  * the dislike sequence, so f_d and the dislike-guided purification f_ud do not exist;
  * Wide and FM over the other features (there are no other features): the Deep part alone,
    as the MLP between two LayerNorms the DFAR authors gave every baseline (DFAR App. A.3),
    over [f_c, f_u, f_uc, t];
  * the per-behaviour loss weights: one BCE over every candidate row (real targets carry
    their feedback label, sampled items label 0).

Shapes: B batch, C candidates, L history length, D embedding, H heads, d = D/H.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from trainers.models.feedback_attention import masked_softmax
from trainers.models.feedback_layers import FeedbackEmbedding, Tower, dense_l2
from trainers.registry import Batch, DataSizes, ModelParams, Output, register


class DFNParams(ModelParams):
    embed_dim: int = Field(gt=0)  # D (DFAR's comparison: 32 for every model)
    embed_init_std: float = Field(gt=0)
    num_heads: int = Field(ge=1)  # heads of each internal Transformer
    tower_hidden: list[int]  # Deep component widths
    dropout: float = Field(ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> DFNParams:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads "
                             f"{self.num_heads}")
        return self


class _TargetTransformer(nn.Module):
    """Internal feedback interaction: the target attends over itself and one feedback's
    behaviours (multi-head), then residual + LayerNorm, FFN, residual + LayerNorm."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.ln_attn, self.ln_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, target: torch.Tensor, history: torch.Tensor, keep: torch.Tensor
                ) -> torch.Tensor:
        """Args: target (B, C, D); history (B, L, D); keep (B, L) this feedback's positions.
        Returns the feature at the target, (B, C, D)."""
        B, C, D = target.shape
        L, H, d = history.shape[1], self.heads, self.head_dim
        q = self.q(target).view(B, C, H, d)
        k_t, v_t = self.k(target).view(B, C, H, d), self.v(target).view(B, C, H, d)
        k_h, v_h = self.k(history).view(B, L, H, d), self.v(history).view(B, L, H, d)
        logits = torch.cat([(q * k_t).sum(-1, keepdim=True),  # (B, C, H, 1): t itself
                            torch.einsum("bchd,blhd->bchl", q, k_h)], dim=-1) / math.sqrt(d)
        allowed = torch.cat([keep.new_ones(B, 1), keep], dim=1)[:, None, None, :]  # (B,1,1,1+L)
        w = masked_softmax(logits, allowed)  # (B, C, H, 1+L)
        mixed = w[..., :1] * v_t + torch.einsum("bchl,blhd->bchd", w[..., 1:], v_h)  # (B,C,H,d)
        x = self.ln_attn(target + self.dropout(self.out(mixed.reshape(B, C, D))))
        return self.ln_ffn(x + self.dropout(self.ffn(x)))


@register("dfn")
class DFN(nn.Module):
    Params: ClassVar[type[ModelParams]] = DFNParams
    inputs: ClassVar[frozenset[str]] = frozenset({"sequence", "sequence_label"})
    variable_length: ClassVar[bool] = True  # padding is masked everywhere: no output reads it

    def __init__(self, params: DFNParams, sizes: DataSizes):
        super().__init__()
        D = params.embed_dim
        # Item + position: which sequence a behaviour is in says its feedback already.
        self.embed = FeedbackEmbedding(sizes.num_items, D, params.embed_init_std,
                                       sizes.sequence_len, labels=False)
        self.click = _TargetTransformer(D, params.num_heads, params.dropout)  # f_c
        self.unclick = _TargetTransformer(D, params.num_heads, params.dropout)  # f_u
        self.purify = nn.Linear(D, D, bias=False)  # W of f_uc = Σ softmax(f_cᵀ W u_j) u_j
        self.tower = Tower(4 * D, params.tower_hidden, params.dropout)

    def forward(self, batch: Batch) -> Output:
        """Args: batch with ``sequence``, ``sequence_label`` (B, L), ``items`` (B, C).
        Returns an Output with (B, C) logits."""
        y = batch["sequence_label"]
        history, keep, target = self.embed(batch["sequence"], y, batch["items"])  # (B, L, D)
        click, unclick = keep & (y == 1), keep & (y == 0)  # (B, L)
        f_c = self.click(target, history, click)  # (B, C, D) internal interaction
        f_u = self.unclick(target, history, unclick)
        scores = torch.einsum("bcd,bld->bcl", self.purify(f_c), history)  # f_cᵀ W u_j
        w = masked_softmax(scores, unclick.unsqueeze(1), dim=-1)  # (B, C, L); none: zeros
        f_uc = torch.einsum("bcl,bld->bcd", w, history)  # external interaction
        return Output(self.tower(torch.cat([f_c, f_u, f_uc, target], dim=-1)))

    def loss(self, output: Output, batch: Batch) -> torch.Tensor:
        """Mean binary cross-entropy over the (B, C) candidate rows."""
        scores = output.scores
        return F.binary_cross_entropy_with_logits(scores, batch["label"].to(scores.dtype))

    def regularization(self) -> torch.Tensor:
        """1/2 ||θ||² over the dense parameters (the loop multiplies by ``train.l2``)."""
        return dense_l2(self)
