"""DIN (Zhou et al., KDD 2018, "Deep Interest Network for Click-Through Rate Prediction"), as
a baseline of DFAR's Table 2 on the (item, label) history of the ``feedback`` protocol.

Implemented (the paper's Section 4.3; its text is not in ../shared/papers, so the one equation
quoted is the activation unit's well-known form):
  * Behaviour embeddings e_j = E_{i_j} + L_{y_j}: DIN's behaviour features are the item id;
    the feedback label enters as one more embedded feature of the behaviour, added, as DFAR's
    Eq. 1 does, so every model of the comparison reads the same history.
  * Local activation unit: v_U(A) = Σ_j a(e_j, v_A) e_j, where a(·) is a feed-forward
    net over the behaviour, the candidate and their interaction (the released code's input
    [e_j, v_A, e_j - v_A, e_j ⊙ v_A]) with PReLU activations (the paper offers PReLU and
    its Dice; Dice is left out). As the paper stresses, the weights are NOT
    normalised by a softmax, so Σ_j a_j keeps the intensity of the user's interest.
  * Output MLP over [v_U(A), v_A] (user-profile and context features do not exist here),
    as the DFAR authors ran every baseline: an MLP between two LayerNorms (DFAR App. A.3).
  * Loss: binary cross-entropy (the paper's log-loss) over every candidate row.
Left out: the mini-batch aware regulariser — here λ·||θ||² over dense
parameters and lazy L2 on touched embedding rows already regularise only what a batch uses.

Shapes: B batch, C candidates, L history length, D embedding.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainers.models.feedback_layers import FeedbackEmbedding, Tower, TowerParams, dense_l2
from trainers.registry import Batch, DataSizes, ModelParams, Output, register


class DINParams(TowerParams):
    embed_dim: int = Field(gt=0)  # D (DFAR's comparison: 32 for every model)
    embed_init_std: float = Field(gt=0)
    attention_hidden: list[int]  # activation unit widths (paper: 80-40)
    dropout: float = Field(ge=0.0, lt=1.0)


@register("din")
class DIN(nn.Module):
    Params: ClassVar[type[ModelParams]] = DINParams
    inputs: ClassVar[frozenset[str]] = frozenset({"sequence", "sequence_label"})
    variable_length: ClassVar[bool] = True  # padding is masked everywhere: no output reads it

    def __init__(self, params: DINParams, sizes: DataSizes):
        super().__init__()
        D = params.embed_dim
        self.embed = FeedbackEmbedding(sizes.num_items, D, params.embed_init_std, positions=0,
                                       labels=True)
        layers: list[nn.Module] = []
        width = 4 * D
        for h in params.attention_hidden:
            layers += [nn.Linear(width, h), nn.PReLU()]
            width = h
        self.activation_unit = nn.Sequential(*layers, nn.Linear(width, 1))  # a(e_j, v_A)
        self.tower = Tower(2, D, params, params.dropout)  # [interest, target]

    def forward(self, batch: Batch) -> Output:
        """Args: batch with ``sequence``, ``sequence_label`` (B, L), ``items`` (B, C).
        Returns an Output with (B, C) logits."""
        history, keep, target = self.embed(batch["sequence"], batch["sequence_label"],
                                           batch["items"])  # (B, L, D), (B, L), (B, C, D)
        B, L, D = history.shape
        C = target.shape[1]
        e = history.unsqueeze(1).expand(B, C, L, D)  # (B, C, L, D)
        v = target.unsqueeze(2).expand(B, C, L, D)  # (B, C, L, D)
        a = self.activation_unit(torch.cat([e, v, e - v, e * v], dim=-1)).squeeze(-1)  # (B,C,L)
        a = a * keep.unsqueeze(1)  # padding behaviours weigh 0; no softmax (Section 4.3)
        interest = (a.unsqueeze(-1) * e).sum(dim=2)  # (B, C, D) v_U(A)
        return Output(self.tower(torch.cat([interest, target], dim=-1)))

    def loss(self, output: Output, batch: Batch) -> torch.Tensor:
        """Mean binary cross-entropy over the (B, C) candidate rows."""
        scores = output.scores
        return F.binary_cross_entropy_with_logits(scores, batch["label"].to(scores.dtype))

    def regularization(self) -> torch.Tensor:
        """1/2 ||θ||² over the dense parameters (the loop multiplies by ``train.l2``)."""
        return dense_l2(self)
