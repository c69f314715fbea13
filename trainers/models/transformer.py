"""Transformer blocks shared by DualRec and BERT4Rec: multi-head self-attention with an
explicit per-head mask and optional relative positions, and the post-LayerNorm layer.

  * Attention, DualRec Eq. 4-5 (BERT4Rec Eq. 2-3): head_i = softmax(Q_i K_iᵀ/√(d/h)) V_i,
    MSA = Concat(head_1..head_h) W^O. The per-head outputs (before W^O) are returned too:
    DualRec's transfer (Eq. 10) compares them.
  * Relative positions, DualRec Eq. 3: ``learned`` adds p(i, j) = E^P[i - j] to head scores,
    E^P ∈ R^{(2n-1) x h}, one table per layer; ``sinusoidal`` is the released code's
    XLNet-style form: score = ((q + u)·k + (q + v)·W_r R_{i-j})/√(d/h) with R sinusoidal
    in the distance i - j, u, v learned per head; ``none`` for absolute-position models.
  * Layer, DualRec Eq. 6-7 (BERT4Rec Eq. 4-5): H = LN(X + Drop(MSA(X))),
    X' = LN(H + Drop(PFF(H))), PFF = FC(GELU(FC(·))); the released DualRec code also drops
    out between the two FCs (``ffn_dropout``), BERT4Rec's paper and code do not.
  * :func:`direction_mask`: causal masks both ways (DualRec 3.3.2) with optional per-head
    windows (Eq. 9).

Shapes: B batch, L sequence length, d model size, h heads, e = d/h head size.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

RelativePositions = Literal["none", "learned", "sinusoidal"]
LAYER_NORM_EPS = 1e-12  # the released DualRec configs' layer_norm_eps


def direction_mask(L: int, direction: Literal["past", "future"],
                   windows: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Keys a query may not attend to (True = blocked).

    Past: key j is blocked when j > i; future: when j < i (DualRec 3.3.2, Figure 2c-d). With
    windows, head k also blocks keys at distance >= windows[k] on the visible side, so it
    sees windows[k] keys including itself (Eq. 9, Figure 2c-d's multi-scale masks).

    Args:
        L: sequence length.
        direction: "past" or "future".
        windows: (h,) int window per head, or None (plain causal mask).
        device: where to build it.
    Returns:
        (h, L, L) bool with windows, else (1, L, L).
    """
    i = torch.arange(L, device=device)[:, None]
    j = torch.arange(L, device=device)[None, :]
    behind = i - j if direction == "past" else j - i  # distance on the visible side
    blocked = (behind < 0)[None]  # (1, L, L)
    if windows is not None:
        blocked = blocked | (behind[None] >= windows[:, None, None])  # (h, L, L)
    return blocked


def sinusoid(distances: torch.Tensor, d: int) -> torch.Tensor:
    """[sin(r·f), cos(r·f)] with f = 1/10000^(2k/d) (XLNet / the DualRec code): (R,) -> (R, d)."""
    freq = 1 / torch.pow(10000, torch.arange(0, d, 2.0, device=distances.device) / d)  # (d/2,)
    angles = distances.float()[:, None] * freq[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class MultiHeadAttention(nn.Module):
    """Self-attention with a per-head mask and optional relative positions.

    Args:
        d: model size; heads: h (d divisible by h); dropout: on attention weights;
        relative: "none" | "learned" | "sinusoidal"; max_len: n, longest sequence.
    """

    def __init__(self, d: int, heads: int, dropout: float, relative: RelativePositions,
                 max_len: int):
        super().__init__()
        if d % heads:
            raise ValueError(f"model size {d} is not divisible by {heads} heads")
        self.heads, self.relative, self.max_len = heads, relative, max_len
        self.qkv = nn.Linear(d, 3 * d)  # W^Q, W^K, W^V of every head (Eq. 4)
        self.out = nn.Linear(d, d)  # W^O (Eq. 5)
        self.dropout = nn.Dropout(dropout)
        e = d // heads
        if relative == "learned":
            self.position_bias = nn.Parameter(torch.zeros(2 * max_len - 1, heads))  # E^P
        elif relative == "sinusoidal":
            self.position_key = nn.Linear(d, d, bias=False)  # W_r
            self.content_bias = nn.Parameter(torch.zeros(heads, e))  # u
            self.position_query_bias = nn.Parameter(torch.zeros(heads, e))  # v

    def forward(self, x: torch.Tensor, blocked: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: x (B, L, d); blocked (B|1, h|1, L, L) bool, True = may not attend (every
        query must keep at least one key).

        Returns:
            (B, L, d) attention output after W^O, and (B, h, L, e) the heads before it.
        """
        B, L, d = x.shape
        h, e = self.heads, d // self.heads
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds the {self.max_len} positions")
        q, k, v = self.qkv(x).view(B, L, 3, h, e).permute(2, 0, 3, 1, 4)  # (B, h, L, e) each
        i = torch.arange(L, device=x.device)
        distance = i[:, None] - i[None, :]  # (L, L): i - j
        if self.relative == "sinusoidal":
            content = (q + self.content_bias[:, None]) @ k.transpose(-1, -2)  # (B, h, L, L)
            rows = torch.arange(L - 1, -L, -1, device=x.device)  # distances L-1 .. -(L-1)
            r = self.position_key(sinusoid(rows, d)).view(2 * L - 1, h, e)  # (2L-1, h, e)
            by_row = torch.einsum("bhie,rhe->bhir", q + self.position_query_bias[:, None], r)
            position = by_row.gather(-1, (L - 1 - distance).expand(B, h, L, L))  # (B, h, L, L)
            scores = (content + position) / math.sqrt(e)
        else:
            scores = q @ k.transpose(-1, -2) / math.sqrt(e)  # (B, h, L, L)
            if self.relative == "learned":
                bias = self.position_bias[distance + self.max_len - 1]  # (L, L, h): Eq. 3
                scores = scores + bias.permute(2, 0, 1)
        scores = scores.masked_fill(blocked, float("-inf"))
        weights = self.dropout(torch.softmax(scores, dim=-1))
        heads = weights @ v  # (B, h, L, e)
        return self.out(heads.transpose(1, 2).reshape(B, L, d)), heads


class TransformerLayer(nn.Module):
    """Post-LayerNorm Transformer layer (DualRec Eq. 6-7, BERT4Rec Eq. 4-5), GELU inside.

    Args:
        d: model size; heads: h; ffn_dim: PFF inner size; dropout: on attention weights and
        after each sub-layer; relative: relative positions; max_len: n; layer_norm,
        residual: False drops the LayerNorms / the residual connections (DualRec Table 3);
        ffn_dropout: dropout between the PFF's two FCs too (the DualRec code's
        PointWiseFeedForward; not in BERT's layer).
    """

    def __init__(self, d: int, heads: int, ffn_dim: int, dropout: float,
                 relative: RelativePositions, max_len: int, layer_norm: bool = True,
                 residual: bool = True, ffn_dropout: bool = True):
        super().__init__()
        self.attn = MultiHeadAttention(d, heads, dropout, relative, max_len)
        # DualRec Table 3's "w/o LN" and "w/o RC": LN(x + f(x)) becomes x + f(x), f(x)
        self.ln_attn = nn.LayerNorm(d, eps=LAYER_NORM_EPS) if layer_norm else nn.Identity()
        inner = nn.Dropout(dropout) if ffn_dropout else nn.Identity()  # keeps index 3: FC 2
        self.ffn = nn.Sequential(nn.Linear(d, ffn_dim), nn.GELU(), inner, nn.Linear(ffn_dim, d))
        self.ln_ffn = nn.LayerNorm(d, eps=LAYER_NORM_EPS) if layer_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.residual = residual

    def forward(self, x: torch.Tensor, blocked: torch.Tensor, keep: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: x (B, L, d); blocked (B|1, h|1, L, L); keep (B, L, 1) float, 0 on padding.

        Returns:
            (B, L, d) layer output (0 on padding), (B, h, L, e) attention heads.
        """
        a, heads = self.attn(x, blocked)
        skip = 1.0 if self.residual else 0.0
        x = self.ln_attn(skip * x + self.dropout(a))  # H^(l)
        x = self.ln_ffn(skip * x + self.dropout(self.ffn(x)))  # X^(l)
        return x * keep, heads


def init_weights(module: nn.Module, std: float) -> None:
    """N(0, std²) weights and zero biases for linear layers (torch's multi-head attention's
    packed projections too), N(0, std²) embeddings and relative-position parameters (the
    released DualRec and FMLP-Rec codes' ``_init_weights``, RecBole's too; std =
    initializer_range)."""
    for m in module.modules():
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.MultiheadAttention):  # torch's (SASRec): packed q, k, v
            nn.init.normal_(m.in_proj_weight, std=std)
            nn.init.zeros_(m.in_proj_bias)
        elif isinstance(m, MultiHeadAttention):
            for name in ("position_bias", "content_bias", "position_query_bias"):
                if hasattr(m, name):
                    nn.init.normal_(getattr(m, name), std=std)
