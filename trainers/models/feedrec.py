"""FeedRec (Wu et al., WWW 2022, "FeedRec: News Feed Recommendation with Various User
Feedbacks"), as a baseline of DFAR's Table 2 on the (item, label) history.

FeedRec models a feed of behaviours with many feedback types (click, skip, finish, share,
dislike, dwell time) and has (by the paper's section names; its text is not in
../shared/papers, so no equation numbers are quoted):
  * heterogeneous feedback modelling: every behaviour is its item plus an embedding of its
    feedback type; a Transformer over the merged sequence relates all feedbacks — the
    "shared vanilla Transformer" DFAR's introduction contrasts with FHA;
  * homogeneous feedback modelling: a Transformer per feedback type over that type's
    behaviours only, then attentive pooling into one vector per type;
  * a strong-to-weak attention network: strong feedbacks (finish, dislike) select the
    positive and the negative part of the weak ones (click, skip);
  * disentangling of the weak positive and weak negative interests (a regulariser that
    makes the two user vectors orthogonal), and multi-feedback training (click, finish,
    dwell time).

With the two feedback types of this protocol (y = 1 positive, y = 0 negative), the positive
history plays the weak positive feedback and the negative history the weak negative one, as
DFAR's summary of FeedRec reads it ("performs disentanglement on the weak positive and
negative feedback"). Implemented: the heterogeneous Transformer (item + label + position,
one block of multi-head attention and FFN), the two homogeneous Transformers (keys of one
feedback only), attentive pooling to u^P and u^N, the disentangling regulariser |cos(u^P,
u^N)| (zero when orthogonal), and a prediction MLP between two LayerNorms over [u^P, u^N,
E_target] (the DFAR authors' tower for every baseline, App. A.3). What FeedRec loses:
  * the strong-to-weak attention (there is no stronger feedback than the two labels);
  * multi-feedback training (no finish or dwell time): BCE over the candidate rows only.

Shapes: B batch, C candidates, L history length, D embedding.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from trainers.models.feedback_attention import FeedbackAttention, masked_softmax
from trainers.models.feedback_layers import FeedbackEmbedding, Tower, TowerParams, dense_l2
from trainers.registry import Batch, DataSizes, ModelParams, Output, register


class FeedRecParams(TowerParams):
    embed_dim: int = Field(gt=0)  # D (DFAR's comparison: 32 for every model)
    embed_init_std: float = Field(gt=0)
    num_heads: int = Field(ge=1)  # vanilla multi-head attention, head width D / heads
    pool_hidden: int = Field(gt=0)  # width of the attentive pooling's query network
    dropout: float = Field(ge=0.0, lt=1.0)
    lambda_disentangle: float = Field(ge=0)  # weight of |cos(u^P, u^N)|

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> FeedRecParams:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads "
                             f"{self.num_heads}")
        return self


class FeedRecTerms(NamedTuple):
    """The disentangling regulariser's input, for :meth:`FeedRec.loss`."""

    disentangle: torch.Tensor  # (B,) |cos(u^P, u^N)|


class _Block(nn.Module):
    """One Transformer block (post-norm): LN(x + MHA(x)), LN(x + FFN(x)), over kept keys."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = FeedbackAttention(dim, heads, dim // heads, "mha", label_mask=False,
                                      logit_heads=heads, tha_weights="softmax")
        self.ln_attn, self.ln_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: x (B, L, D); keep (B, L) the positions of this sequence. Returns (B, L, D),
        zero elsewhere."""
        x = self.ln_attn(x + self.dropout(self.attn(x, keep, labels)))
        return self.ln_ffn(x + self.dropout(self.ffn(x))) * keep.unsqueeze(-1)


class _AttentivePooling(nn.Module):
    """u = Σ_j softmax_j(qᵀ tanh(W x_j + b)) x_j over the kept positions (zero if none)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.query = nn.Linear(hidden, 1, bias=False)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Args: x (B, L, D); keep (B, L). Returns (B, D)."""
        w = masked_softmax(self.query(torch.tanh(self.proj(x))).squeeze(-1), keep)  # (B, L)
        return (w.unsqueeze(-1) * x).sum(dim=1)


@register("feedrec")
class FeedRec(nn.Module):
    Params: ClassVar[type[ModelParams]] = FeedRecParams
    inputs: ClassVar[frozenset[str]] = frozenset({"sequence", "sequence_label"})
    variable_length: ClassVar[bool] = True  # padding is masked everywhere: no output reads it

    def __init__(self, params: FeedRecParams, sizes: DataSizes):
        super().__init__()
        self.params = params
        D, H = params.embed_dim, params.num_heads
        self.embed = FeedbackEmbedding(sizes.num_items, D, params.embed_init_std,
                                       sizes.sequence_len, labels=True)
        self.dropout = nn.Dropout(params.dropout)
        self.heterogeneous = _Block(D, H, params.dropout)
        self.homogeneous_p, self.homogeneous_n = (_Block(D, H, params.dropout),
                                                  _Block(D, H, params.dropout))
        self.pool_p = _AttentivePooling(D, params.pool_hidden)
        self.pool_n = _AttentivePooling(D, params.pool_hidden)
        self.tower = Tower(3, D, params, params.dropout)  # [u^P, u^N, target]

    def forward(self, batch: Batch) -> Output:
        """Args: batch with ``sequence``, ``sequence_label`` (B, L), ``items`` (B, C).
        Returns an Output with (B, C) logits and |cos(u^P, u^N)| per row as its terms."""
        y = batch["sequence_label"]
        history, keep, target = self.embed(batch["sequence"], y, batch["items"])
        x = self.heterogeneous(self.dropout(history), keep, y)  # (B, L, D) all feedback
        pos, neg = keep & (y == 1), keep & (y == 0)
        u_p = self.pool_p(self.homogeneous_p(x, pos, y), pos)  # (B, D) positive interest
        u_n = self.pool_n(self.homogeneous_n(x, neg, y), neg)  # (B, D) negative interest
        terms = FeedRecTerms(F.cosine_similarity(u_p, u_n, dim=-1).abs())  # (B,)
        C = target.shape[1]
        users = torch.cat([u_p, u_n], dim=-1).unsqueeze(1).expand(-1, C, -1)  # (B, C, 2D)
        return Output(self.tower(torch.cat([users, target], dim=-1)), terms)

    def loss(self, output: Output, batch: Batch) -> torch.Tensor:
        """Mean BCE over the (B, C) candidate rows + λ · mean |cos(u^P, u^N)|."""
        scores = output.scores
        bce = F.binary_cross_entropy_with_logits(scores, batch["label"].to(scores.dtype))
        return bce + self.params.lambda_disentangle * output.terms.disentangle.mean()

    def regularization(self) -> torch.Tensor:
        """1/2 ||θ||² over the dense parameters (the loop multiplies by ``train.l2``)."""
        return dense_l2(self)
