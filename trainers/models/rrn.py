"""RRN (Wu et al., WSDM 2017, "Recurrent Recommender Networks"): a user RNN and an item RNN
over time slices, plus stationary user and item factors.

Implemented (Section 3 of the paper):
  * Slice input (Section 3.1): y_t = W_embed x_t, where x_t is the slice's interaction vector;
    a linear map of a sparse indicator vector is the sum of the embeddings of its members,
    so the user's input is the sum-pooled embeddings of G_t(u) (items) and the item's the
    sum-pooled embeddings of G_t(v) (users) — the sum pooling the SCoRe paper describes.
  * Dynamic states (Section 3.1-3.2): u_t = RNN(u_{t-1}, y_t) for the user and
    m_t = RNN(m_{t-1}, y_t) for the item, over the H history slices.
  * Prediction (Section 3.3), ``params.head``:
    ``dot``: r̂ = <ũ_T, m̃_T> + <u, m>, with ũ_T, m̃_T affine maps of the final states and
    u, m the stationary user and item embeddings, as in the RRN paper;
    ``mlp``: r̂ = MLP([u_T, m_T, u, m]) with hidden layers ``head_hidden``, the prediction
    of the SCoRe authors' RRN re-implementation (qinjr/SCoRe, slice_models), whose numbers
    SCoRe's Table 3 reports. The default is ``mlp`` (conf/models/rrn.yaml): on the sample
    the dot-product form stays below the popularity reference, the MLP form does not.

Simplifications, and why:
  * GRU cells instead of the paper's LSTM, as in the SCoRe authors' RRN re-implementation
    (qinjr/SCoRe, slice_models), so every slice-based model in the comparison uses the same
    recurrent cell as SCoRe itself.
  * Loss: binary cross-entropy on r̂ as a logit over the candidates, not squared error on
    explicit ratings: the targets are implicit 0/1 feedback, as for every compared model.
  * No newbie flag or wall-clock inputs (τ_t): every sequence covers the same H slices, and
    an inactive slice simply feeds a zero input.

Shapes: B batch, C candidates, H history slices, S set size, d embedding, k hidden size.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainers.embedding import RowSparseEmbedding
from trainers.registry import Batch, DataSizes, ModelParams, Output, register
from trainers.models.score import mlp


class RRNParams(ModelParams):
    embed_dim: int = Field(gt=0)  # d: set-member and stationary embeddings
    embed_init_std: float = Field(gt=0)  # embedding rows start as N(0, std²)
    hidden_dim: int = Field(gt=0)  # k: GRU state size
    head: Literal["dot", "mlp"]  # RRN paper's inner products, or the SCoRe authors' MLP
    head_hidden: list[int] = Field(min_length=1)  # MLP hidden layers (head=mlp)


@register("rrn")
class RRN(nn.Module):
    Params: ClassVar[type[ModelParams]] = RRNParams
    inputs: ClassVar[frozenset[str]] = frozenset({"slice_sets"})

    def __init__(self, params: RRNParams, sizes: DataSizes):
        super().__init__()
        d, k, std = params.embed_dim, params.hidden_dim, params.embed_init_std
        self.item_in = RowSparseEmbedding(sizes.num_items + 1, d, std)  # W_embed, user side
        self.user_in = RowSparseEmbedding(sizes.num_users + 1, d, std)  # W_embed, item side
        self.user_static = RowSparseEmbedding(sizes.num_users + 1, d, std)  # u
        self.item_static = RowSparseEmbedding(sizes.num_items + 1, d, std)  # m
        self.user_rnn = nn.GRU(d, k, batch_first=True)
        self.item_rnn = nn.GRU(d, k, batch_first=True)
        self.params = params
        if params.head == "dot":
            self.user_out = nn.Linear(k, k)  # ũ_T = W u_T + b
            self.item_out = nn.Linear(k, k)  # m̃_T
        else:
            self.head = mlp([2 * k + 2 * d, *params.head_hidden, 1])

    @staticmethod
    def _sum_pool(table: RowSparseEmbedding, sets: torch.Tensor) -> torch.Tensor:
        """W_embed x_t: (..., S) ids -> (..., d), padding slots contribute nothing."""
        return (table(sets) * (sets != 0).unsqueeze(-1)).sum(dim=-2)

    def forward(self, batch: Batch) -> Output:
        """Args: batch with ``user`` (B,), ``items`` (B, C), ``user_sets`` (B, H, 2, S),
        ``item_sets`` (B, C, H, 2, S). Returns: Output with (B, C) logits r̂."""
        items = batch["items"]
        B, C = items.shape
        H = batch["user_sets"].shape[1]
        y_user = self._sum_pool(self.item_in, batch["user_sets"][:, :, 0])  # (B, H, d): G_t(u)
        y_item = self._sum_pool(self.user_in, batch["item_sets"][:, :, :, 0])  # (B, C, H, d)
        _, u_T = self.user_rnn(y_user)  # (1, B, k)
        _, m_T = self.item_rnn(y_item.reshape(B * C, H, -1))  # (1, B*C, k)
        u = self.user_static(batch["user"])  # (B, d)
        m = self.item_static(items)  # (B, C, d)
        if self.params.head == "mlp":
            u_T, m_T = u_T[0].unsqueeze(1).expand(B, C, -1), m_T[0].view(B, C, -1)
            features = torch.cat([u_T, m_T, u.unsqueeze(1).expand(B, C, -1), m], dim=-1)
            return Output(self.head(features).squeeze(-1))  # (B, C)
        u_dyn = self.user_out(u_T[0])  # (B, k)
        m_dyn = self.item_out(m_T[0]).view(B, C, -1)  # (B, C, k)
        dynamic = (m_dyn @ u_dyn.unsqueeze(-1)).squeeze(-1)  # (B, C): <ũ_T, m̃_T>
        stationary = (m @ u.unsqueeze(-1)).squeeze(-1)  # (B, C): <u, m>
        return Output(dynamic + stationary)

    def loss(self, output: Output, batch: Batch) -> torch.Tensor:
        """Mean binary cross-entropy over all (B, C) candidates."""
        scores = output.scores
        return F.binary_cross_entropy_with_logits(scores, batch["label"].to(scores.dtype))

    def regularization(self) -> torch.Tensor:
        """1/2 ||θ||² over the dense parameters (the loop multiplies by λ, as for SCoRe)."""
        return sum(p.pow(2).sum() for p in self.parameters() if p.requires_grad) / 2
