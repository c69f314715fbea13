"""DELF (Cheng et al., IJCAI 2018, "DELF: A Dual-Embedding based Deep Latent Factor Model for
Recommendation"): each user and item gets two embeddings, a free one and one built from its
interaction history, and four pairwise MLPs model their interactions.

Implemented (Section 3 of the paper):
  * Input and embedding layer: primitive (free) embeddings p_u, q_i.
  * Attentive history embeddings (Section 3.2): the item-based user embedding
    m_u = Σ_{j∈R(u)} α_j x_j with α_j = softmax_j(hᵀ ReLU(W x_j + b)), and symmetrically the
    user-based item embedding n_i = Σ_{k∈R(i)} β_k y_k over the item's users.
  * Pairwise neural interaction layers (Section 3.3): four MLP towers on [p_u; q_i],
    [p_u; n_i], [m_u; q_i], [m_u; n_i].
  * Fusion and prediction (Section 3.4): the four tower outputs concatenated and fed to an
    MLP ending in one logit (ŷ = σ(logit)).
  * Loss: pointwise log loss over the positive and sampled negatives (Section 3.5), i.e.
    binary cross-entropy over candidates, the same objective as SCoRe.

Simplifications, and why:
  * R(u) and R(i) are the slice sets flattened over the H history slices: G_t(u) items for
    the user, G_t(v) users for the item (at most H*S each, sampled by the index stage). DELF
    ignores time, and these are the histories available without look-ahead.
  * History embeddings x_j, y_k look up the same tables as the free embeddings of items and
    users (as the SCoRe authors' re-implementation does), keeping the parameter count in
    line with the other baselines; the attention still gives them a separate transform.

Shapes: B batch, C candidates, H history slices, S set size, N = H*S, d embedding.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainers.embedding import RowSparseEmbedding
from trainers.registry import Batch, DataSizes, ModelParams, Output, register


class DELFParams(ModelParams):
    embed_dim: int = Field(gt=0)  # d
    embed_init_std: float = Field(gt=0)  # embedding rows start as N(0, std²)
    attention_dim: int = Field(gt=0)  # width of W in the attention (Section 3.2)
    tower_hidden: list[int] = Field(min_length=1)  # each pairwise MLP's layer widths
    fusion_hidden: list[int]  # fusion MLP's hidden widths (output 1 appended)
    dropout: float = Field(ge=0.0, lt=1.0)


def _mlp(widths: list[int], dropout: float) -> nn.Sequential:
    """Linear+ReLU+Dropout per consecutive pair of ``widths`` (ReLU also after the last)."""
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class _HistoryAttention(nn.Module):
    """m = Σ_j softmax_j(hᵀ ReLU(W x_j + b)) x_j over the non-padding history (Section 3.2)."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(d, hidden)
        self.h = nn.Linear(hidden, 1, bias=False)

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Args: x (..., N, d) history embeddings; present (..., N) bool.
        Returns: (..., d); all-zero where the history is empty."""
        a = self.h(F.relu(self.proj(x))).squeeze(-1)  # (..., N)
        a = a.masked_fill(~present, float("-inf"))
        # An empty history gives an all -inf row: its softmax is NaN, so zero it explicitly.
        alpha = torch.softmax(a, dim=-1).nan_to_num(0.0)  # (..., N)
        return (alpha.unsqueeze(-1) * x).sum(dim=-2)


@register("delf")
class DELF(nn.Module):
    Params: ClassVar[type[ModelParams]] = DELFParams
    inputs: ClassVar[frozenset[str]] = frozenset({"slice_sets"})

    def __init__(self, params: DELFParams, sizes: DataSizes):
        super().__init__()
        d = params.embed_dim
        self.user = RowSparseEmbedding(sizes.num_users + 1, d, params.embed_init_std)  # p_u, y_k
        self.item = RowSparseEmbedding(sizes.num_items + 1, d, params.embed_init_std)  # q_i, x_j
        self.user_history = _HistoryAttention(d, params.attention_dim)  # m_u
        self.item_history = _HistoryAttention(d, params.attention_dim)  # n_i
        # Towers for (p,q), (p,n), (m,q), (m,n): the four pairwise interactions (Section 3.3).
        self.towers = nn.ModuleList(
            _mlp([2 * d, *params.tower_hidden], params.dropout) for _ in range(4))
        fused = 4 * params.tower_hidden[-1]
        self.fusion = nn.Sequential(_mlp([fused, *params.fusion_hidden], params.dropout),
                                    nn.Linear(([fused] + params.fusion_hidden)[-1], 1))

    def forward(self, batch: Batch) -> Output:
        """Args: batch with ``user`` (B,), ``items`` (B, C), ``user_sets`` (B, H, 2, S),
        ``item_sets`` (B, C, H, 2, S). Returns: Output with (B, C) logits."""
        B, C = batch["items"].shape
        user_hist = batch["user_sets"][:, :, 0].flatten(1)  # (B, N): items of G_t(u)
        item_hist = batch["item_sets"][:, :, :, 0].flatten(2)  # (B, C, N): users of G_t(v)
        m = self.user_history(self.item(user_hist), user_hist != 0)  # (B, d)
        n = self.item_history(self.user(item_hist), item_hist != 0)  # (B, C, d)
        p = self.user(batch["user"]).unsqueeze(1).expand(B, C, -1)  # (B, C, d)
        q = self.item(batch["items"])  # (B, C, d)
        m = m.unsqueeze(1).expand(B, C, -1)  # (B, C, d)
        pairs = [(p, q), (p, n), (m, q), (m, n)]
        e = [tower(torch.cat(pair, dim=-1)) for tower, pair in zip(self.towers, pairs)]
        return Output(self.fusion(torch.cat(e, dim=-1)).squeeze(-1))  # (B, C)

    def loss(self, output: Output, batch: Batch) -> torch.Tensor:
        """Pointwise log loss (Section 3.5) over the (B, C) scores."""
        scores = output.scores
        return F.binary_cross_entropy_with_logits(scores, batch["label"].to(scores.dtype))

    def regularization(self) -> torch.Tensor:
        """1/2 ||θ||² over the dense parameters (the loop multiplies by λ, as for SCoRe)."""
        return sum(p.pow(2).sum() for p in self.parameters() if p.requires_grad) / 2
