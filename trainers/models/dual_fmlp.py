"""Dual FMLP-Rec: the dual network of DualRec (trainers/models/dual.py) on the FMLP-Rec
backbone (trainers/models/fmlp.py; DualRec Section 4.4, Table 4 "DualFMLP-Rec" / "+BIT").

The paper gives one sentence ("multi-scale inputs") and the released code none, so this is
our design:
  * FMLP-Rec's global filter is a circular convolution: every slot sees every other, so a
    past/future split would leak. Each encoder here uses causal filters
    (``FilterLayer(causal=True)``): a linear convolution y_t = Σ_{k<L} kernel_k x_{t-k} with
    a learnable frequency response W over 2L points (the inverse FFT of W, cut to its first
    L taps, is the kernel), so the filter keeps FMLP-Rec's frequency-domain parameters and
    sees slots <= t only.
  * Past encoder: embedding layer (own positions, LN), causal filter blocks, FFNs over the
    sequence as given. Future encoder: a second stack with its own parameters (same shared
    item embedding) run over the reversed sequence, so its state at t sees slots >= t.
  * Outputs are tied to the item embedding and trained with the full softmax of Eq. 13-14
    at every position, like DualRec (a causal filter trains every position in one pass).
  * Multi-scale inputs, as in dual GRU4Rec (trainers/models/dual_gru4rec.py): scale w of the
    past encoder is its last-slot state over the input truncated to its w newest items
    (run over those w slots alone, which is exact for a causal stack); scale w of the
    future encoder is its state at slot L - w, which has seen exactly its w newest items.
    Windows are Eq. 8's with h = ``num_scales``, n = L; the transfer is the symmetric KL
    between the softmax over the d features of matching scales. Scales feed the transfer
    only.

Shapes: B batch, L sequence length, d embedding, S scales.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from trainers.models.dual import (DualNetwork, Direction, MultiScaleParams, window_end_states,
                                  window_sizes)
from trainers.models.fmlp import FilterStack
from trainers.models.transformer import init_weights
from trainers.registry import DataSizes, ModelParams, register


class DualFMLPParams(MultiScaleParams):
    num_layers: int = Field(ge=1)  # filter blocks (FMLP-Rec: 2)
    ffn_dim: int = Field(gt=0)  # FFN inner size (FMLP-Rec code: 4d)


class CausalFilterEncoder(nn.Module):
    """One FMLP-Rec encoder with causal filters; the direction is chosen per call."""

    def __init__(self, params: DualFMLPParams, max_len: int):
        super().__init__()
        self.stack = FilterStack(max_len, params.embed_dim, params.num_layers,
                                 params.ffn_dim, params.dropout, causal=True)
        self.windows = window_sizes(params.num_scales, max_len)
        init_weights(self, params.init_std)

    def forward(self, e: torch.Tensor, keep: torch.Tensor, direction: Direction,
                scales: bool) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Args: e (B, L, d) item embeddings; keep (B, L) bool; direction; scales: also
        return the (B, S, d) per-scale states (one level).

        Returns:
            (B, L, d) states (0 on padding), and [scale states] or None.
        """
        L = e.shape[1]
        states = self.stack(e, keep, flip=direction == "future")
        if not scales:
            return states, None
        if direction == "future":
            return states, [window_end_states(states, keep.sum(1), self.windows)]
        # A causal stack over the w newest slots alone is the stack over the input truncated
        # to them (older slots zero): sum(w) slots of work instead of S x L.
        per_scale = [self.stack.last_states(e[:, L - min(w, L):], keep[:, L - min(w, L):])
                     for w in self.windows]  # S x (B, d)
        return states, [torch.stack(per_scale, dim=1)]  # (B, S, d)


@register("dual_fmlp")
class DualFMLP(DualNetwork):
    Params: ClassVar[type[ModelParams]] = DualFMLPParams

    def __init__(self, params: DualFMLPParams, sizes: DataSizes):
        super().__init__(params, sizes, lambda: CausalFilterEncoder(params, sizes.sequence_len))
