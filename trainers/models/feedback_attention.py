"""The three self-attentions of DFAR (Lin et al., WWW 2023, Section 3.1) over an (item, label)
history: multi-heads (MHA, Eq. 2-4), talking-heads (THA, Eq. 5-7) and factorization-heads
(FHA, Eq. 8-9) with the label mask MO (FFHA, Eq. 10-11).

Implemented as the paper writes them, not as the released code computes them:
  * Eq. 4 gives every head its own projections W_h^Q, W_h^K, W_h^V; their width d is
    ``head_dim`` (the paper's W_h ∈ R^{D×D}: d = D). No biases: the equations have none.
  * FHA (Eq. 8-9): for every head pair (h1, h2) a softmax over the KEY positions of
    Q_{h1} K_{h2}ᵀ/√d; the pair mixes the values of its key head, V_{h2} (the appendix's
    pseudocode tiles V so that pair (h1, h2) reads head h2); the H² outputs are concatenated
    and projected back to D by W_0 ∈ R^{H²d×D}. The released code's softmax jointly over
    keys and heads, its mask after the softmax and its reshape that mixes positions are NOT
    copied: query i's output depends on query i and the set of keys only.
  * MO (Eq. 10-11): pair (h1, h2) at (i, j) is kept iff h1 is in the half of heads of y_i and
    h2 in the half of y_j (the first H/2 heads negative). Eq. 11 multiplies logits by M; here a
    masked logit is -inf before the softmax (PROTOCOLS §5), so a masked pair weighs exactly 0.
  * THA (Eq. 6-7): logits mixed across heads by W_THA (H'×H), a softmax per mixed head over
    key positions, weights mixed back by W^S_THA (H×H'). ``tha_weights="tanh"`` is the
    released code's choice (tanh instead of the softmax; padding keys then weigh 0).
  * A key that is padding (or outside the stack's feedback, for the disentangling stacks of
    Eq. 14) is never attended. A query with no key left outputs zeros, never NaN.
  * No causal mask: a row predicts one target after its whole history (PROTOCOLS §5).

Shapes: B batch, L history length, D model width, H heads, H' mixed heads (THA), d head width.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

Variant = Literal["mha", "tha", "fha"]


def masked_softmax(logits: torch.Tensor, allowed: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` where only ``allowed`` entries take part.

    Masked entries are -inf before the softmax (weight exactly 0); a slice with no allowed
    entry gives all-zero weights and a finite gradient (its logits are replaced by 0 first,
    so no 0/0 appears in the forward or the backward).

    Args:
        logits: (..., N, ...) scores; allowed: bool with as many dimensions, broadcastable
            to ``logits`` (kept unexpanded: the masks stay as small as their real shape).
    Returns:
        weights shaped like ``logits``; each allowed slice sums to 1, an empty one to 0.
    """
    assert allowed.ndim == logits.ndim, (f"mask of {allowed.ndim} dims for logits of "
                                         f"{logits.ndim}: add the broadcast dimensions")
    any_allowed = allowed.any(dim=dim, keepdim=True)
    logits = logits.masked_fill(~allowed, float("-inf")).masked_fill(~any_allowed, 0.0)
    return torch.softmax(logits, dim=dim) * any_allowed


def label_pair_mask(labels: torch.Tensor, heads: int) -> torch.Tensor:
    """The label mask M of Eq. 11: M[b, h1, h2, i, j] = 1 iff h1 ∈ half(y_i), h2 ∈ half(y_j).

    Args:
        labels: (B, L) int64 feedback, 1 positive / 0 negative (0 on padding; padding keys
            are masked separately).
        heads: H, even; heads 0..H/2-1 are the negative half, H/2..H-1 the positive half.
    Returns:
        (B, H, H, L, L) bool.
    """
    if heads % 2:
        raise ValueError(f"the label mask needs an even number of heads, got {heads}")
    half = (torch.arange(heads, device=labels.device) >= heads // 2).long()  # (H,) 0 neg, 1 pos
    own = half.view(1, heads, 1) == labels.unsqueeze(1)  # (B, H, L): head h serves y_i's half
    return own[:, :, None, :, None] & own[:, None, :, None, :]  # (B, H1, H2, L_i, L_j)


class FeedbackAttention(nn.Module):
    """S = MHA | THA | FHA(X, X, X) over one history (Eq. 2, 5, 8; Eq. 10 with ``label_mask``).

    Args:
        dim: D. heads: H. head_dim: d (Eq. 4). variant: ``mha`` | ``tha`` | ``fha``.
        label_mask: apply MO (Eq. 10-11); FHA only.
        logit_heads: H' of Eq. 6-7 (THA only).
        tha_weights: ``softmax`` (Eq. 7) or ``tanh`` (released code), THA only.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, variant: Variant, label_mask: bool,
                 logit_heads: int, tha_weights: Literal["softmax", "tanh"]):
        super().__init__()
        if label_mask and variant != "fha":
            raise ValueError(f"the label mask MO (Eq. 10-11) acts on head pairs: it needs "
                             f"attention 'fha', got {variant!r}")
        if label_mask and heads % 2:
            raise ValueError(f"the label mask MO splits heads in halves: heads must be even, "
                             f"got {heads}")
        self.heads, self.head_dim, self.variant = heads, head_dim, variant
        self.label_mask, self.tha_weights = label_mask, tha_weights
        self.q = nn.Linear(dim, heads * head_dim, bias=False)  # W_h^Q for every h (Eq. 4)
        self.k = nn.Linear(dim, heads * head_dim, bias=False)  # W_h^K
        self.v = nn.Linear(dim, heads * head_dim, bias=False)  # W_h^V
        outputs = heads * heads if variant == "fha" else heads  # H² pairs (Eq. 8) or H heads
        self.out = nn.Linear(outputs * head_dim, dim, bias=False)  # W_0
        if variant == "tha":
            self.logit_mix = nn.Parameter(torch.randn(logit_heads, heads) / math.sqrt(heads))
            self.weight_mix = nn.Parameter(torch.randn(heads, logit_heads)
                                           / math.sqrt(logit_heads))

    def heads_out(self, x: torch.Tensor, keep: torch.Tensor, labels: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention weights and the per-head (per-pair for FHA) outputs before W_0.

        Args:
            x: (B, L, D) inputs; keep: (B, L) bool, the keys that may be attended (and the
                queries whose output is kept); labels: (B, L) int64 feedback y.
        Returns:
            weights: FHA (B, H, H, L, L) [b, h1, h2, i, j]; MHA/THA (B, H, L, L);
            outputs: FHA (B, H, H, L, d); MHA/THA (B, H, L, d); zero at queries not kept.
        """
        B, L, _ = x.shape
        H, d = self.heads, self.head_dim
        q = self.q(x).view(B, L, H, d).transpose(1, 2)  # (B, H, L, d)
        k = self.k(x).view(B, L, H, d).transpose(1, 2)  # (B, H, L, d)
        v = self.v(x).view(B, L, H, d).transpose(1, 2)  # (B, H, L, d)
        key_ok = keep[:, None, None, :]  # (B, 1, 1, L_j)
        if self.variant == "fha":
            logits = torch.einsum("bgid,bhjd->bghij", q, k) / math.sqrt(d)  # (B, H1, H2, L, L)
            allowed = key_ok.unsqueeze(1)  # (B, 1, 1, 1, L_j)
            if self.label_mask:
                allowed = allowed & label_pair_mask(labels, H)  # Eq. 11
            weights = masked_softmax(logits, allowed)  # Eq. 9 / 11: softmax over key positions
            outputs = torch.einsum("bghij,bhjd->bghid", weights, v)  # A_{h1,h2} V_{h2}
            return weights, outputs * keep[:, None, None, :, None]
        logits = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, H, L, L): Q_h K_hᵀ/√d
        if self.variant == "mha":
            weights = masked_softmax(logits, key_ok)  # Eq. 3
        else:
            mixed = torch.einsum("gh,bhij->bgij", self.logit_mix, logits)  # (B, H', L, L) Eq. 6
            if self.tha_weights == "softmax":
                mixed = masked_softmax(mixed, key_ok)  # Eq. 7
            else:
                mixed = torch.tanh(mixed) * key_ok
            weights = torch.einsum("hg,bgij->bhij", self.weight_mix, mixed)  # (B, H, L, L)
        outputs = weights @ v  # (B, H, L, d)
        return weights, outputs * keep[:, None, :, None]

    def forward(self, x: torch.Tensor, keep: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args as :meth:`heads_out`. Returns S (B, L, D), zero at queries not kept."""
        B, L, _ = x.shape
        _, outputs = self.heads_out(x, keep, labels)
        if self.variant == "fha":
            outputs = outputs.permute(0, 3, 1, 2, 4)  # (B, L, H1, H2, d): pairs per position
        else:
            outputs = outputs.transpose(1, 2)  # (B, L, H, d)
        return self.out(outputs.reshape(B, L, -1))  # concat over heads/pairs, W_0 (Eq. 2/5/8)
