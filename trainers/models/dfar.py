"""DFAR (Lin et al., WWW 2023, "Dual-interest Factorization-heads Attention for Sequential
Recommendation") and THA4Rec, its Table 2 talking-heads baseline.

Implemented (equation numbers of the paper):
  * Feedback-aware encoding, Eq. 1-12: E^f = E + L, no position term (Eq. 1; ``positions:
    learned`` adds the released code's learned position embedding);
    S = FFHA(E^f, E^f, E^f) with ``attention`` = fha | tha | mha and ``label_mask`` = MO
    (trainers/models/feedback_attention.py says what is taken from the paper, what from the
    code and what from neither).
  * Dual-interest disentangling, Eq. 13-18: S^P = S ⊙ y, S^N = S ⊙ (1-y) (Eq. 13), each
    through its own attention (Eq. 14) whose keys are that feedback's positions only (the
    "sequences with solely positive or negative feedback" of Section 3.2); target attention
    A^P = MLP((E_{t+1}+L_1) ‖ S^P_j) ∈ R^{t×D}, softmax over t per dimension (Eq. 15-16),
    f^P = Σ_j F^P_j (Eq. 17), and the twin with L_0. L^D = cos(f^P, f^N) (Eq. 18) is
    MINIMISED, so the two interests repel (the released code's sign attracts them).
  * Towers, Eq. 19-20: logit^P = MLP(s ‖ s^P ‖ f^P ‖ E_{t+1}+L_1), logit^N its twin, each an
    MLP between two LayerNorms (Appendix A.3).
  * Losses, Eq. 21-23: BCE on σ(logit^P) over every candidate row (Eq. 22, the prediction);
    BPR between the towers signed by the row's label (Eq. 21); L^J = L + λ^BPR L^BPR + λ^D L^D
    (+ λ||Θ||, the loop's ``train.l2`` times :meth:`regularization`). λ^BPR = λ^D = 1e-3 as
    the paper picks for Amazon; the released code's λ^BPR = 0 is a defect, not a default.
  * Table 3 ablations are settings: without FHA = ``attention: mha``; without MO =
    ``label_mask: false``; without IDL = ``lambda_d: 0``; without IBL = ``lambda_bpr: 0``.
  * THA4Rec = ``attention: tha`` with ``dual_interest: false``: the encoder feeds one tower
    MLP(s ‖ E_{t+1}) and the loss is BCE alone (Eq. 13-21 do not exist).

Choices where the paper is silent: each stack is one attention exactly as Eq. 12 and 14
write it (no residual, FFN or LayerNorm around it; "one block per stack"); dropout on E^f
and inside the towers; the widths of Eq. 15's MLP and of the towers are settings.

Each candidate is scored on its own against the whole history (no causal mask needed: every
history item precedes the target). Shapes: B batch, C candidates, L history, D embedding.
"""

from __future__ import annotations

from typing import ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from trainers.models.feedback_attention import FeedbackAttention, masked_softmax
from trainers.models.feedback_layers import FeedbackEmbedding, Tower, TowerParams, dense_l2
from trainers.registry import Batch, DataSizes, ModelParams, Output, register


class DFARParams(TowerParams):
    embed_dim: int = Field(gt=0)  # D (paper: 32)
    embed_init_std: float = Field(gt=0)  # item, label (and position) rows start N(0, std²)
    positions: Literal["none", "learned"]  # none: Eq. 1; learned: the released code's
    num_heads: int = Field(ge=1)  # H (paper: 2)
    head_dim: int = Field(gt=0)  # d of Eq. 4 (W_h ∈ R^{D×D}: d = D)
    attention: Literal["mha", "tha", "fha"]  # Eq. 2 / 5 / 8
    label_mask: bool  # MO, Eq. 10-11 (fha only)
    logit_heads: int = Field(ge=1)  # H' of Eq. 6-7 (tha only)
    tha_weights: Literal["softmax", "tanh"]  # Eq. 7's softmax, or the released code's tanh
    dual_interest: bool  # Eq. 13-21; false: one tower over the encoder (THA4Rec)
    attention_hidden: int = Field(gt=0)  # hidden width of the MLP of Eq. 15
    dropout: float = Field(ge=0.0, lt=1.0)  # on E^f and the towers' layers
    lambda_bpr: float = Field(ge=0)  # λ^BPR of Eq. 23 (paper, Amazon: 1e-3)
    lambda_d: float = Field(ge=0)  # λ^D of Eq. 23 (paper, Amazon: 1e-3)

    @model_validator(mode="after")
    def _consistent(self) -> DFARParams:
        if self.label_mask and self.attention != "fha":
            raise ValueError("label_mask (MO) acts on FHA's head pairs: set attention: fha, "
                             "or label_mask: false")
        if self.label_mask and self.num_heads % 2:
            raise ValueError(f"label_mask splits heads into a negative and a positive half: "
                             f"num_heads must be even, got {self.num_heads}")
        if not self.dual_interest and (self.lambda_bpr or self.lambda_d):
            raise ValueError("lambda_bpr and lambda_d weigh the dual-interest losses: with "
                             "dual_interest: false set both to 0")
        return self


class DFARTerms(NamedTuple):
    """The negative tower and L^D per row, for :meth:`DFAR.loss` (Eq. 21, 18)."""

    logit_n: torch.Tensor  # (B, C) Eq. 20
    disentangle: torch.Tensor  # (B, C) cos(f^P, f^N), Eq. 18


class _TargetAttention(nn.Module):
    """Eq. 15-17: f = Σ_j softmax_j(MLP(target ‖ S_j)) ⊙ S_j, per dimension."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        # MLP((t ‖ S_j)) with its first layer split in a target and a history half, so the
        # (B, C, L, 2D) concatenation is never built.
        self.w_target = nn.Linear(dim, hidden)
        self.w_history = nn.Linear(dim, hidden, bias=False)
        self.w_out = nn.Linear(hidden, dim)

    def forward(self, target: torch.Tensor, S: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Args: target (B, C, D); S (B, L, D); keep (B, L) bool. Returns f (B, C, D)."""
        hidden = torch.relu(self.w_target(target).unsqueeze(2)
                            + self.w_history(S).unsqueeze(1))  # (B, C, L, hidden)
        A = self.w_out(hidden)  # (B, C, L, D): A ∈ R^{t×D} per candidate (Eq. 15)
        weights = masked_softmax(A, keep[:, None, :, None], dim=2)  # softmax over t (Eq. 16)
        return (weights * S.unsqueeze(1)).sum(dim=2)  # Σ_j F_j (Eq. 17)


@register("dfar")
class DFAR(nn.Module):
    Params: ClassVar[type[ModelParams]] = DFARParams
    inputs: ClassVar[frozenset[str]] = frozenset({"sequence", "sequence_label"})
    variable_length: ClassVar[bool] = True  # padding is masked everywhere: no output reads it

    def __init__(self, params: DFARParams, sizes: DataSizes):
        super().__init__()
        self.params = params
        D = params.embed_dim

        def attention(mask: bool) -> FeedbackAttention:
            return FeedbackAttention(D, params.num_heads, params.head_dim, params.attention,
                                     mask, params.logit_heads, params.tha_weights)

        positions = sizes.sequence_len if params.positions == "learned" else 0
        self.embed = FeedbackEmbedding(sizes.num_items, D, params.embed_init_std, positions,
                                       labels=True)
        self.dropout = nn.Dropout(params.dropout)
        self.encoder = attention(params.label_mask)  # Eq. 12
        if params.dual_interest:
            # Eq. 14 writes FHA (no MO): within one feedback every label is the same.
            self.encoder_p, self.encoder_n = attention(False), attention(False)
            self.target_p = _TargetAttention(D, params.attention_hidden)
            self.target_n = _TargetAttention(D, params.attention_hidden)
            self.tower_p = Tower(4, D, params, params.dropout)  # Eq. 19
            self.tower_n = Tower(4, D, params, params.dropout)  # Eq. 20
        else:
            self.tower_p = Tower(2, D, params, params.dropout)  # [s, target]

    def forward(self, batch: Batch) -> Output:
        """Args: batch with ``sequence``, ``sequence_label`` (B, L) and ``items`` (B, C).

        Returns:
            Output with (B, C) logit^P (Eq. 19), the prediction being σ(logit^P) (Eq. 22),
            and, with dual interest, logit^N and L^D per row as its terms (:class:`DFARTerms`).
        """
        y, items = batch["sequence_label"], batch["items"]
        history, keep, target = self.embed(batch["sequence"], y, items)  # (B,L,D) (B,L) (B,C,D)
        S = self.encoder(self.dropout(history), keep, y)  # (B, L, D) Eq. 12
        s = S.sum(dim=1, keepdim=True).expand(-1, items.shape[1], -1)  # (B, C, D)
        if not self.params.dual_interest:
            return Output(self.tower_p(torch.cat([s, target], dim=-1)))  # THA4Rec
        L0, L1 = self.embed.label.weight  # (D,), (D,)
        pos, neg = keep & (y == 1), keep & (y == 0)  # (B, L)
        S_p = self.encoder_p(S * pos.unsqueeze(-1), pos, y)  # (B, L, D) Eq. 13-14
        S_n = self.encoder_n(S * neg.unsqueeze(-1), neg, y)
        t_p, t_n = target + L1, target + L0  # (B, C, D) the two assumed labels (Eq. 15)
        f_p, f_n = self.target_p(t_p, S_p, pos), self.target_n(t_n, S_n, neg)  # (B, C, D)
        C = items.shape[1]
        s_p = S_p.sum(dim=1, keepdim=True).expand(-1, C, -1)  # (B, C, D)
        s_n = S_n.sum(dim=1, keepdim=True).expand(-1, C, -1)
        logit_p = self.tower_p(torch.cat([s, s_p, f_p, t_p], dim=-1))  # (B, C) Eq. 19
        logit_n = self.tower_n(torch.cat([s, s_n, f_n, t_n], dim=-1))  # (B, C) Eq. 20
        disentangle = F.cosine_similarity(f_p, f_n, dim=-1)  # (B, C) Eq. 18
        return Output(logit_p, DFARTerms(logit_n, disentangle))

    def loss(self, output: Output, batch: Batch) -> torch.Tensor:
        """L + λ^BPR L^BPR + λ^D L^D (Eq. 21-23), each a mean over the (B, C) candidate rows."""
        scores, terms = output
        label = batch["label"].to(scores.dtype)
        bce = F.binary_cross_entropy_with_logits(scores, label)  # Eq. 22
        if not self.params.dual_interest:
            return bce
        sign = 2.0 * label - 1.0  # +1: logit^P above logit^N (y = 1); -1: below (y = 0)
        bpr = -F.logsigmoid(sign * (scores - terms.logit_n)).mean()  # Eq. 21
        disentangle = terms.disentangle.mean()  # Eq. 18, minimised: f^P and f^N repel
        return bce + self.params.lambda_bpr * bpr + self.params.lambda_d * disentangle

    def regularization(self) -> torch.Tensor:
        """1/2 ||Θ||² over the dense parameters (λ||Θ|| of Eq. 23, λ = ``train.l2``)."""
        return dense_l2(self)


class THA4RecParams(DFARParams):
    @model_validator(mode="after")
    def _talking_heads_only(self) -> THA4RecParams:
        if self.attention != "tha" or self.dual_interest:
            raise ValueError("THA4Rec is talking-heads attention without the dual-interest "
                             "layers: set attention: tha and dual_interest: false (or use dfar)")
        return self


@register("tha4rec")
class THA4Rec(DFAR):
    """Table 2's THA4Rec: talking-heads attention over the (item, label) history, one tower.
    The same model as DFAR with ``attention: tha`` and ``dual_interest: false``
    (conf/models/tha4rec.yaml); registered apart so it is its own row of the comparison."""

    Params: ClassVar[type[ModelParams]] = THA4RecParams
