"""DEEMS (Wu et al., KDD 2019, "Dual Sequential Prediction Models Linking Sequential
Recommendation and Information Dissemination"): a user-centred and an item-centred sequence
model, trained as a two-player game.

Implemented (Section 3 of the paper):
  * User-centred model: a GRU over the user's history states ĥ_u; its score for item v is
    s_u(u, v) = ĥ_uᵀ q_v + b_v (the sequential recommendation side).
  * Item-centred model: a GRU over the item's history of users ĥ_v; its score for user u is
    s_v(u, v) = ĥ_vᵀ p_u + b_u (the information dissemination side).
  * Dual training (the game): each player fits the labels with binary cross-entropy and is
    pulled toward the opponent's prediction, which it takes as a fixed feedback signal:
        L = BCE(s_u) + BCE(s_v)
            + γ · mean[(σ(s_u) - sg(σ(s_v)))² + (σ(s_v) - sg(σ(s_u)))²]
    (sg = stop-gradient). The gradient equals that of γ·(σ(s_u) - σ(s_v))² on both players,
    the form of the SCoRe authors' re-implementation (qinjr/SCoRe, γ = 0.05); the detached
    form states the game explicitly: neither player moves the other's target.
  * Final score: the AVERAGE of the two players' probabilities, ŷ = ½(σ(s_u) + σ(s_v)), as
    in that re-implementation; ``forward`` returns logit(ŷ), computed stably, with s_u and
    s_v as its terms (:class:`DEEMSTerms`), on which ``loss`` plays the game.

Simplifications, and why:
  * Sequences are the H time slices of SCoRe's setting, not individual interactions: a
    slice's input is the mean-pooled embeddings of its set (G_t(u) items for the user, G_t(v)
    users for the item); this is how the SCoRe paper feeds both dual-sequence baselines.

Shapes: B batch, C candidates, H history slices, S set size, d embedding (= GRU size).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainers.embedding import RowSparseEmbedding
from trainers.registry import Batch, DataSizes, ModelParams, Output, register


class DEEMSParams(ModelParams):
    embed_dim: int = Field(gt=0)  # d: embeddings and both GRU states (dot-product scores)
    embed_init_std: float = Field(gt=0)  # embedding rows start as N(0, std²)
    game_weight: float = Field(ge=0.0)  # γ: pull toward the opponent (0 = two separate models)


class DEEMSTerms(NamedTuple):
    """Both players' logits, for the fit and game terms of :meth:`DEEMS.loss`."""

    s_u: torch.Tensor  # (B, C) user-centred player
    s_v: torch.Tensor  # (B, C) item-centred player


@register("deems")
class DEEMS(nn.Module):
    Params: ClassVar[type[ModelParams]] = DEEMSParams
    inputs: ClassVar[frozenset[str]] = frozenset({"slice_sets"})

    def __init__(self, params: DEEMSParams, sizes: DataSizes):
        super().__init__()
        d, std = params.embed_dim, params.embed_init_std
        self.params = params
        self.user = RowSparseEmbedding(sizes.num_users + 1, d, std)  # p_u: input and target
        self.item = RowSparseEmbedding(sizes.num_items + 1, d, std)  # q_v: input and target
        self.user_bias = RowSparseEmbedding(sizes.num_users + 1, 1, std)  # b_u
        self.item_bias = RowSparseEmbedding(sizes.num_items + 1, 1, std)  # b_v
        self.user_rnn = nn.GRU(d, d, batch_first=True)
        self.item_rnn = nn.GRU(d, d, batch_first=True)

    @staticmethod
    def _mean_pool(table: RowSparseEmbedding, sets: torch.Tensor) -> torch.Tensor:
        """(..., S) ids -> (..., d) mean of the non-padding members (0 for an empty set)."""
        present = (sets != 0).unsqueeze(-1)  # (..., S, 1)
        total = (table(sets) * present).sum(dim=-2)
        return total / present.sum(dim=-2).clamp(min=1)

    def player_scores(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Both players' logits. Args: batch as for ``forward``.
        Returns: s_u, s_v, each (B, C)."""
        user, items = batch["user"], batch["items"]
        B, C = items.shape
        H = batch["user_sets"].shape[1]
        x_user = self._mean_pool(self.item, batch["user_sets"][:, :, 0])  # (B, H, d)
        x_item = self._mean_pool(self.user, batch["item_sets"][:, :, :, 0])  # (B, C, H, d)
        _, h_u = self.user_rnn(x_user)  # (1, B, d)
        _, h_v = self.item_rnn(x_item.reshape(B * C, H, -1))  # (1, B*C, d)
        q = self.item(items)  # (B, C, d)
        s_u = (q @ h_u[0].unsqueeze(-1)).squeeze(-1) + self.item_bias(items).squeeze(-1)
        p = self.user(user).unsqueeze(1)  # (B, 1, d)
        s_v = (h_v[0].view(B, C, -1) * p).sum(-1) + self.user_bias(user)  # (B, C)
        return s_u, s_v

    def forward(self, batch: Batch) -> Output:
        """Args: batch with ``user`` (B,), ``items`` (B, C), ``user_sets`` (B, H, 2, S),
        ``item_sets`` (B, C, H, 2, S). Returns: Output with (B, C) logit(½(σ(s_u) + σ(s_v)))
        and both players' logits as its terms."""
        s_u, s_v = self.player_scores(batch)
        # logit(p) = log p - log(1-p); with 1 - σ(x) = σ(-x) both logs are log-sum-exps.
        log_p = torch.logaddexp(F.logsigmoid(s_u), F.logsigmoid(s_v))
        log_q = torch.logaddexp(F.logsigmoid(-s_u), F.logsigmoid(-s_v))
        return Output(log_p - log_q, DEEMSTerms(s_u, s_v))

    def loss(self, output: Output, batch: Batch) -> torch.Tensor:
        """Both players' BCE plus the game term (module docstring), on ``output.terms``."""
        s_u, s_v = output.terms
        label = batch["label"].to(output.scores.dtype)
        fit = (F.binary_cross_entropy_with_logits(s_u, label)
               + F.binary_cross_entropy_with_logits(s_v, label))
        p_u, p_v = torch.sigmoid(s_u), torch.sigmoid(s_v)
        game = ((p_u - p_v.detach()) ** 2 + (p_v - p_u.detach()) ** 2).mean()
        return fit + self.params.game_weight * game

    def regularization(self) -> torch.Tensor:
        """1/2 ||θ||² over the dense parameters (the loop multiplies by λ, as for SCoRe)."""
        return sum(p.pow(2).sum() for p in self.parameters() if p.requires_grad) / 2
