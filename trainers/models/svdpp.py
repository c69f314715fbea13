"""SVD++ (Koren, KDD 2008, "Factorization Meets the Neighborhood: a Multifaceted Collaborative
Filtering Model"): a latent factor model whose user factor is augmented by the items the user
interacted with (implicit feedback).

Implemented (Section 4, Eq. 15 of the paper):
    r̂_ui = μ + b_u + b_i + q_iᵀ (p_u + |N(u)|^{-1/2} Σ_{j ∈ N(u)} y_j)
with N(u) the user's items before the target slice (the ``sequence`` input, order unused:
SVD++ sees the history as a whole, as the SCoRe paper says in Section 4.1.3).

Simplifications, and why:
  * Loss: binary cross-entropy on r̂ as a logit over the positive and sampled negatives, not
    the paper's squared error on explicit ratings (Eq. 16): the targets here are implicit
    0/1 feedback, and every model in the comparison is trained on the same objective.
  * N(u) is the last L items (``index.sequence_max_len``), the same window the sequence
    baselines see; repeated items count once per occurrence, as in the sequence.
  * A user with no history gets the implicit term 0 (|N(u)| = 0 would divide by zero).

As a next-item model (trainers/models/item_scoring.py) the user state is [taste; μ + b_u]
with taste = p_u + |N(u)|^{-1/2} Σ y_j, and the item table is [q_i; 1] with bias b_i, so
state · row + b_i is Eq. 15 (the column of ones carries the user and global biases).

Shapes: B batch, C candidates, L sequence length, d factors.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainers.embedding import RowSparseEmbedding
from trainers.models.item_scoring import score_rows
from trainers.registry import Batch, DataSizes, ModelParams, Output, register


class SVDppParams(ModelParams):
    embed_dim: int = Field(gt=0)  # f: number of latent factors
    embed_init_std: float = Field(gt=0)  # embedding rows start as N(0, std²)


@register("svdpp")
class SVDpp(nn.Module):
    Params: ClassVar[type[ModelParams]] = SVDppParams
    inputs: ClassVar[frozenset[str]] = frozenset({"sequence"})
    optional_inputs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: SVDppParams, sizes: DataSizes):
        super().__init__()
        d = params.embed_dim
        self.global_bias = nn.Parameter(torch.zeros(()))  # μ
        self.user_bias = RowSparseEmbedding(sizes.num_users + 1, 1, params.embed_init_std)  # b_u
        self.item_bias = RowSparseEmbedding(sizes.num_items + 1, 1, params.embed_init_std)  # b_i
        self.user = RowSparseEmbedding(sizes.num_users + 1, d, params.embed_init_std)  # p_u
        self.item = RowSparseEmbedding(sizes.num_items + 1, d, params.embed_init_std)  # q_i
        self.implicit = RowSparseEmbedding(sizes.num_items + 1, d, params.embed_init_std)  # y_j

    def taste(self, batch: Batch) -> torch.Tensor:
        """p_u + |N(u)|^{-1/2} Σ_{j ∈ N(u)} y_j of Eq. 15: (B, d)."""
        sequence = batch["sequence"]
        in_history = (sequence != 0).unsqueeze(-1)  # (B, L, 1): j ∈ N(u)
        count = in_history.sum(dim=1).float()  # (B, 1): |N(u)|
        y_sum = (self.implicit(sequence) * in_history).sum(dim=1)  # (B, d)
        implicit = y_sum * count.clamp(min=1).rsqrt()  # (B, d)
        return self.user(batch["user"]) + implicit

    def forward(self, batch: Batch) -> Output:
        """Args: batch with ``user`` (B,), ``items`` (B, C), ``sequence`` (B, L).
        Returns: (B, C) logits r̂_ui of Eq. 15."""
        taste = self.taste(batch)  # (B, d)
        q = self.item(batch["items"])  # (B, C, d)
        b_u = self.user_bias(batch["user"])  # (B, 1)
        b_i = self.item_bias(batch["items"]).squeeze(-1)  # (B, C)
        return Output(score_rows(taste, q, self.global_bias + b_u + b_i))

    def encode_users(self, batch: Batch) -> torch.Tensor:
        """[taste; μ + b_u] (module docstring): (B, d+1)."""
        return torch.cat([self.taste(batch), self.global_bias + self.user_bias(batch["user"])],
                         dim=1)

    def item_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[q_i; 1] and b_i (module docstring): (I+1, d+1), (I+1,)."""
        q = self.item.weight
        return torch.cat([q, q.new_ones(q.shape[0], 1)], dim=1), self.item_bias.weight.squeeze(-1)

    def loss(self, output: Output, batch: Batch) -> torch.Tensor:
        """Binary cross-entropy over candidates (see module docstring). Args: output.scores
        (B, C)."""
        return F.binary_cross_entropy_with_logits(output.scores,
                                                  batch["label"].to(output.scores.dtype))

    def regularization(self) -> torch.Tensor:
        """1/2 ||θ||² over the dense parameters (the loop multiplies by λ, as for SCoRe)."""
        return sum(p.pow(2).sum() for p in self.parameters() if p.requires_grad) / 2
