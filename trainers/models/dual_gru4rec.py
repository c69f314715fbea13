"""Dual GRU4Rec: the dual network of DualRec (trainers/models/dual.py) on a GRU backbone
(DualRec Section 4.4, Table 4 "DualGRU4Rec" / "+BIT").

The paper gives one sentence for non-attention backbones ("multi-scale interest is captured
by the multi-scale inputs") and the released code none, so this is our design:
  * Past encoder: a GRU reading the sequence left to right (GRU4Rec, Hidasi et al. 2016,
    Section 3.1); its state at t has read items <= t. The real items of a left-padded row
    are moved to the front first (trainers/models/gru4rec.py ``align_left_padded``), so the
    GRU starts from h_0 = 0 at the first real item.
  * Future encoder: a second GRU (own parameters, same shared item embedding) reading the
    sequence right to left, newest item first; its state at t has read items >= t.
  * Outputs are tied to the item embedding (Eq. 12), so the GRU state size is d, and each
    state predicts the next (past) or previous (future) item with the full softmax of
    Eq. 13-14, like DualRec.
  * Multi-scale inputs: the scales are Eq. 8's windows (``num_scales`` = h, n = L). Scale w
    of the past encoder is its state after reading only the w newest items of its input (the
    input truncated to the window, a run from h_0 = 0); scale w of the future encoder is its
    state after reading the w newest items of its input, newest first, which is its state at
    position L - w of the full right-to-left run. Both windows cover the same recent part of
    the user's sequence (shifted by one, as the encoders' inputs are), read in opposite
    directions; the transfer (Eq. 10-11) is the symmetric KL between the softmax over the d
    features of matching scales. The scales only feed the transfer; predictions use the
    full-sequence states.

Shapes: B batch, L sequence length, d embedding = GRU state, S scales.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from trainers.models.dual import (DualNetwork, Direction, MultiScaleParams, window_end_states,
                                  window_sizes)
from trainers.models.gru4rec import align_left_padded
from trainers.registry import DataSizes, ModelParams, register


class DualGRU4RecParams(MultiScaleParams):
    num_layers: int = Field(ge=1)  # GRU layers (GRU4Rec: 1)


class GRUEncoder(nn.Module):
    """One direction-agnostic GRU encoder; the direction is chosen per call.

    Args:
        params: the model's settings; max_len: n (for the windows of Eq. 8).
    """

    def __init__(self, params: DualGRU4RecParams, max_len: int):
        super().__init__()
        d = params.embed_dim
        self.gru = nn.GRU(d, d, params.num_layers, batch_first=True)
        self.dropout = nn.Dropout(params.dropout)
        self.windows = window_sizes(params.num_scales, max_len)

    def _left_to_right(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """GRU over left-padded x (B, L, d) from h_0 = 0 at the first real item -> (B, L, d)."""
        L = x.shape[1]
        to_front, to_back = align_left_padded(lengths, L)  # (B, L) each
        out, _ = self.gru(x.gather(1, to_front.unsqueeze(-1).expand_as(x)))
        return out.gather(1, to_back.unsqueeze(-1).expand_as(out))

    def forward(self, e: torch.Tensor, keep: torch.Tensor, direction: Direction,
                scales: bool) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Args: e (B, L, d) item embeddings; keep (B, L) bool; direction; scales: also
        return the (B, S, d) per-scale states (one level).

        Returns:
            (B, L, d) states (0 on padding), and [scale states] or None.
        """
        B, L, d = e.shape
        mask = keep.unsqueeze(-1).to(e.dtype)  # (B, L, 1)
        x = self.dropout(e) * mask
        lengths = keep.sum(1)  # (B,)
        if direction == "past":
            states = self._left_to_right(x, lengths) * mask
        else:  # newest first: the flipped row is right-padded, so padding is read last
            states = self.gru(x.flip(1))[0].flip(1) * mask
        if not scales:
            return states, None
        if direction == "future":
            return states, [window_end_states(states, lengths, self.windows)]
        per_scale = []
        for w in self.windows:
            w = min(w, L)
            n = keep[:, L - w:].sum(1)  # (B,) items in the window
            out = self._left_to_right(x[:, L - w:], n)  # (B, w, d): the window alone
            per_scale.append(out[:, -1] * (n > 0).unsqueeze(-1))  # newest slot: read all w
        return states, [torch.stack(per_scale, dim=1)]  # (B, S, d)


@register("dual_gru4rec")
class DualGRU4Rec(DualNetwork):
    Params: ClassVar[type[ModelParams]] = DualGRU4RecParams

    def __init__(self, params: DualGRU4RecParams, sizes: DataSizes):
        super().__init__(params, sizes, lambda: GRUEncoder(params, sizes.sequence_len))
