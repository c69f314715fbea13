"""DFN (Xie et al., IJCAI 2020, "Deep Feedback Network for Recommendation"; DFAR cites it as
2021), as a baseline of DFAR's Table 2 on the (item, label) history.

DFN reads three behaviour sequences of a user: clicks (implicit positive), unclicks (implicit
negative: shown, not clicked) and dislikes (explicit negative), and has (by the paper's
section names; its text is not in ../shared/papers, so no equation numbers are quoted):
  * an internal feedback interaction component: one Transformer per feedback sequence, with
    the target item t joined to the sequence, giving that feedback's feature f_c, f_u, f_d
    (here one layer: multi-head self-attention over [t; sequence], residual + LayerNorm,
    position-wise FFN, residual + LayerNorm). The authors' code (qqxiaochongqq/DFN,
    ``transformer``) sums the layer's outputs over all its positions: ``readout: sum``, the
    preset; ``readout: target`` keeps the output at t alone;
  * an external feedback interaction component: the precise feedbacks purify the noisy
    unclicks, f_uc = Σ_j softmax_j(f_cᵀ W u_j) u_j and f_ud from f_d alike;
  * Wide, FM and Deep feature-interaction components over [f_c, f_u, f_d, f_uc, f_ud] and
    the other features; a loss weighing click, unclick and dislike samples.

With the two feedback types of this protocol (y = 1 positive, y = 0 negative) the positive
history plays the click sequence and the negative history the unclick sequence — the
DFAR paper's reading of DFN ("purifies unclick (weak feedback) by click"), and what a skip
is in its Micro-video data. What DFN loses here:
  * the dislike sequence, so f_d and the dislike-guided purification f_ud do not exist;
  * Wide (first-order weights of the candidate and the user's features) and FM (pairwise
    products of all fields, the candidate and the feedback features included, in the
    authors' code): the Deep part alone, as the MLP between two normalizations the DFAR
    authors gave every baseline (DFAR App. A.3), over the fields [f_c, f_u, f_uc, t];
  * the per-behaviour loss weights: one BCE over every candidate row (real targets carry
    their feedback label, sampled items label 0).

Shapes: B batch, C candidates, L history length, D embedding, H heads, d = D/H.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from trainers.models.feedback_attention import masked_softmax
from trainers.models.feedback_layers import FeedbackEmbedding, Tower, TowerParams, dense_l2
from trainers.registry import Batch, DataSizes, ModelParams, Output, register


Readout = Literal["sum", "target"]


class DFNParams(TowerParams):
    embed_dim: int = Field(gt=0)  # D (DFAR's comparison: 32 for every model)
    embed_init_std: float = Field(gt=0)
    num_heads: int = Field(ge=1)  # heads of each internal Transformer
    readout: Readout  # the internal Transformer's output: summed over its positions | at t
    dropout: float = Field(ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> DFNParams:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads "
                             f"{self.num_heads}")
        return self


class _TargetTransformer(nn.Module):
    """Internal feedback interaction: one Transformer layer over [t; one feedback's behaviours]
    (multi-head self-attention, residual + LayerNorm, FFN, residual + LayerNorm), read out
    as the sum of its outputs over t and the kept behaviours (``sum``, the authors' code:
    reduce_sum over the layer's positions) or as the output at t alone (``target``).

    ``target`` reads the behaviours only through t's attention weights, under t's own
    residual: on the full-size generated feedback log DFN then ranked no row's candidates
    apart (train loss at the label base rate for 16 epochs under a joint tower norm, 7 under
    a per-field one; issue 23). ``sum`` with the per-field tower norm left random AUC at
    epoch 7 (``sum`` summed features, ~4.6 a dimension, drown t under the joint norm)."""

    def __init__(self, dim: int, heads: int, dropout: float, readout: Readout):
        super().__init__()
        self.heads, self.head_dim, self.readout = heads, dim // heads, readout
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.ln_attn, self.ln_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, target: torch.Tensor, history: torch.Tensor, keep: torch.Tensor
                ) -> torch.Tensor:
        """Args: target (B, C, D); history (B, L, D); keep (B, L) this feedback's positions.
        Returns the feedback's feature per candidate, (B, C, D).

        A behaviour's query sees the same behaviours under every candidate; only t differs.
        Its attention is therefore computed once a row: over [t; kept behaviours] the weight
        on t is a = σ(s_t − logsumexp_l s_l) and the behaviours share 1 − a in their own
        softmax proportions, so the mix is a·v_t + (1 − a)·m, m the behaviours-only mix."""
        B, C, D = target.shape
        L, H, d = history.shape[1], self.heads, self.head_dim
        q_t, k_t, v_t = (f(target).view(B, C, H, d) for f in (self.q, self.k, self.v))
        k_h, v_h = self.k(history).view(B, L, H, d), self.v(history).view(B, L, H, d)
        # t's query over [t; kept behaviours]
        logits = torch.cat([(q_t * k_t).sum(-1, keepdim=True),
                            torch.einsum("bchd,blhd->bchl", q_t, k_h)],
                           dim=-1) / math.sqrt(d)  # (B, C, H, 1+L)
        allowed = torch.cat([keep.new_ones(B, 1), keep], dim=1)  # (B, 1+L)
        w = masked_softmax(logits, allowed[:, None, None, :])  # (B, C, H, 1+L)
        mixed_t = w[..., :1] * v_t + torch.einsum("bchl,blhd->bchd", w[..., 1:], v_h)
        out_t = self._block(target, mixed_t.reshape(B, C, D))  # (B, C, D)
        if self.readout == "target":
            return out_t
        # every behaviour's query: its behaviours-only attention once a row, then t's share
        q_h = self.q(history).view(B, L, H, d)
        s_hh = torch.einsum("blhd,bmhd->blhm", q_h, k_h) / math.sqrt(d)  # (B, L, H, L)
        kept = keep[:, None, None, :]  # (B, 1, 1, L)
        m = torch.einsum("blhm,bmhd->blhd", masked_softmax(s_hh, kept), v_h)  # (B, L, H, d)
        lse = s_hh.masked_fill(~kept, -1e9).logsumexp(dim=-1)  # (B, L, H); none kept: ~-1e9
        s_ht = torch.einsum("blhd,bchd->bclh", q_h, k_t) / math.sqrt(d)  # (B, C, L, H)
        a = torch.sigmoid(s_ht - lse.unsqueeze(1)).unsqueeze(-1)  # (B, C, L, H, 1) on t
        mixed_h = a * v_t.unsqueeze(2) + (1 - a) * m.unsqueeze(1)  # (B, C, L, H, d)
        out_h = self._block(history.unsqueeze(1).expand(B, C, L, D),
                            mixed_h.reshape(B, C, L, D))  # (B, C, L, D)
        return out_t + (out_h * keep[:, None, :, None]).sum(dim=2)  # over t and the kept

    def _block(self, x: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        """The attention output projection and the rest of the layer: residual + LayerNorm,
        FFN, residual + LayerNorm. x, mixed: (..., D) -> (..., D)."""
        x = self.ln_attn(x + self.dropout(self.out(mixed)))
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
        self.click = _TargetTransformer(D, params.num_heads, params.dropout,
                                        params.readout)  # f_c
        self.unclick = _TargetTransformer(D, params.num_heads, params.dropout,
                                          params.readout)  # f_u
        self.purify = nn.Linear(D, D, bias=False)  # W of f_uc = Σ softmax(f_cᵀ W u_j) u_j
        self.tower = Tower(4, D, params, params.dropout)  # [f_c, f_u, f_uc, t]

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
