"""DualRec (Zhang et al., CIKM 2022): the dual network (trainers/models/dual.py) on the
Transformer backbone of the paper's Section 3.2.

Implemented (equation numbers of the paper):
  * Embedding, Eq. 2: X^(0) = Drop(E^I[s]), padding a zero row; no absolute positions.
  * Relative positions, Eq. 3: the learned (2n-1) x h bias table by default;
    ``relative_position: sinusoidal`` is the released code's XLNet-style encoding
    (trainers/models/transformer.py).
  * Transformer layers, Eq. 4-7 (post-LayerNorm, GELU, FFN inner size ``ffn_dim``).
  * Dual self-attention, 3.3.2: the past encoder blocks keys j > i, the future encoder keys
    j < i; padding keys are blocked too (a query always sees itself, so no row is empty;
    padding rows are zeroed after every layer).
  * Multi-scale heads, Eq. 8-9: head i sees WS(i) keys including itself, on its encoder's
    side ([2, 3, 4, 5, 7, 11, 21, 50] for h=8, n=50), in training and at inference: Eq. 9
    defines the heads, and Section 3.5.2 rests on the past encoder seeing the same context
    in both. The released code applies the windows in training only and scores with the
    plain causal mask: ``windows_at_inference: false`` (on ML-100K's long histories that
    gap cost 0.03 of validation MRR, issue 23). ``multi_scale: false`` drops the windows.
  * Transfer, Eq. 10-11: a head's distribution is the softmax over the features of its
    attention output (before W^O) averaged over the sequence's real positions (the code
    averages over all slots, padding included), per layer; dual.py averages over layers.
  * A final dropout on the encoder output, as the released code.

Shapes: B batch, L sequence length, d embedding, h heads, e = d/h.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from trainers.models.dual import DualNetwork, DualParams, Direction, window_sizes
from trainers.models.transformer import TransformerLayer, direction_mask, init_weights
from trainers.registry import DataSizes, ModelParams, register


class DualRecParams(DualParams):
    num_layers: int = Field(ge=1)  # paper: 2
    num_heads: int = Field(ge=1)  # h (paper: 8)
    ffn_dim: int = Field(gt=0)  # PFF inner size (code: 64)
    # Eq. 3 table | released code | none (Table 3 "w/o RPE": no position information)
    relative_position: Literal["learned", "sinusoidal", "none"]
    layer_norm: bool  # False: Table 3 "w/o LN", Eq. 6-7 without LN
    residual: bool  # False: Table 3 "w/o RC", Eq. 6-7 without the residual connections
    multi_scale: bool  # Eq. 8-9 windows per head
    windows_at_inference: bool  # paper: true; released code: false (training only)

    @model_validator(mode="after")
    def _heads(self) -> DualRecParams:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by "
                             f"num_heads {self.num_heads}")
        if self.multi_scale and self.num_heads % 2:
            raise ValueError(f"multi_scale windows (Eq. 8) need an even num_heads, got "
                             f"{self.num_heads}: change num_heads or set multi_scale: false")
        return self


class TransformerEncoder(nn.Module):
    """One DualRec encoder (Section 3.2); its direction is chosen per call.

    Args:
        params: the model's settings; max_len: n (the window sizes of Eq. 8 use it).
    """

    def __init__(self, params: DualRecParams, max_len: int):
        super().__init__()
        self.params = params
        d = params.embed_dim
        self.layers = nn.ModuleList(
            TransformerLayer(d, params.num_heads, params.ffn_dim, params.dropout,
                             params.relative_position, max_len, params.layer_norm,
                             params.residual)
            for _ in range(params.num_layers))
        self.dropout = nn.Dropout(params.dropout)
        windows = window_sizes(params.num_heads, max_len) if params.multi_scale else []
        self.register_buffer("windows", torch.tensor(windows, dtype=torch.int64),
                             persistent=False)
        init_weights(self, params.init_std)

    def forward(self, e: torch.Tensor, keep: torch.Tensor, direction: Direction,
                scales: bool) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Args: e (B, L, d) item embeddings; keep (B, L) bool; direction; scales: also
        return per layer the (B, h, e) head outputs averaged over real positions.

        Returns:
            (B, L, d) states (0 on padding), and the per-layer head features or None.
        """
        B, L, _ = e.shape
        windowed = self.params.multi_scale and (self.training or self.params.windows_at_inference)
        blocked = direction_mask(L, direction, self.windows if windowed else None, e.device)
        blocked = blocked[None] | ~keep[:, None, None, :]  # (B, h|1, L, L): padding keys too
        blocked = blocked & ~torch.eye(L, dtype=torch.bool, device=e.device)  # self visible
        mask = keep.unsqueeze(-1).to(e.dtype)  # (B, L, 1)
        x = self.dropout(e) * mask
        levels = [] if scales else None
        real = mask.sum(1).clamp(min=1)[:, None]  # (B, 1, 1)
        for layer in self.layers:
            x, heads = layer(x, blocked, mask)
            if scales:  # (B, h, L, e) -> mean over real positions (B, h, e)
                levels.append((heads * mask[:, None]).sum(2) / real)
        return self.dropout(x) * mask, levels


@register("dualrec")
class DualRec(DualNetwork):
    Params: ClassVar[type[ModelParams]] = DualRecParams

    def __init__(self, params: DualRecParams, sizes: DataSizes):
        super().__init__(params, sizes, lambda: TransformerEncoder(params, sizes.sequence_len))
