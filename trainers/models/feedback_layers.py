"""Input and output layers shared by the models of the ``feedback`` protocol (DFAR, Lin et al.,
WWW 2023, and its Table 2 baselines as the DFAR authors ran them).

  * :class:`FeedbackEmbedding`, Eq. 1: E^f = E_{i_j} + L_{y_j} (+ a learned position
    embedding, as the released code adds) for the history; E_{i_{t+1}} for the candidates.
    Items live in a row-sparse table (trainers/embedding.py); the label table L ∈ R^{2×D}
    is dense (two rows, touched by every batch).
  * :class:`Tower`, Appendix A.3: "the MLP layer sandwiched between two normalization layers
    as the prediction tower for each model" — LayerNorm, ReLU MLP, LayerNorm, one logit.
    Its input is a concatenation of fields (user interest, target item, ...) that come out
    of different layers at different scales; the first normalization is over all of them or
    per field (:class:`TowerParams`), as each model's preset says.

Shapes: B batch, C candidates, L history length, D embedding.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from trainers.embedding import RowSparseEmbedding
from trainers.registry import ModelParams

TowerNorm = Literal["field", "joint"]


class TowerParams(ModelParams):
    """The prediction tower's settings, shared by every model of DFAR's Table 2 (the base of
    each one's Params)."""

    tower_hidden: list[int]  # MLP widths (App. A.3: [64, 32] for every model)
    # The first normalization: ``joint`` normalizes the concatenated fields as one vector
    # (one LayerNorm, App. A.3); ``field`` normalizes each D-wide field (the user's
    # interest, the target item, ...) on its own. Under ``joint`` a field that leaves a
    # LayerNorm (~1 a dimension) sets the scale and a raw item row (~0.1) is ~1 % of the
    # input's variance: FeedRec's [u^P, u^N, t] then never ranked a row's candidates apart on
    # the full-size generated feedback log (valid AUC 0.50 for 10 epochs; ``field``: 0.73 at
    # epoch 10, still rising). ``field`` also drops each field's norm, which THA4Rec's
    # [Σ S, t] reads: there ``field`` stayed at 0.49 for 10 epochs where ``joint`` reached
    # 0.80. So each model's preset names the one it learns with (issue 23): FeedRec and DFN
    # ``field``, the others ``joint``.
    tower_norm: TowerNorm


class FeedbackEmbedding(nn.Module):
    """Item, label and (optionally) position tables.

    Args:
        num_items: items are 1..num_items (0 = padding).
        dim: D. init_std: every table (item, label, position) starts as N(0, init_std²):
            at PyTorch's N(0, 1) a position or label row would be ~1/init_std times an item
            row, and position would drown the item and the label (issue 23).
        positions: learned positions for this many slots (the newest history item sits in
            the last slot, whatever the padding); 0 = no position embedding.
        labels: add the label embedding L_y (Eq. 1); False for a model that splits the
            history by feedback instead (its ``label`` table then does not exist).
    """

    def __init__(self, num_items: int, dim: int, init_std: float, positions: int,
                 labels: bool):
        super().__init__()
        self.item = RowSparseEmbedding(num_items + 1, dim, init_std)  # E
        self.label = nn.Embedding(2, dim) if labels else None  # L: row 0 neg, row 1 pos
        if self.label is not None:
            nn.init.normal_(self.label.weight, std=init_std)
        self.position = nn.Embedding(positions, dim) if positions else None
        if self.position is not None:
            nn.init.normal_(self.position.weight, std=init_std)

    def forward(self, sequence: torch.Tensor, sequence_label: torch.Tensor,
                items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args: sequence (B, L) left-padded item ids; sequence_label (B, L) 1/0; items (B, C).

        Returns:
            history: (B, L, D) E^f of Eq. 1 (+ position; without L_y if ``labels`` is
                False), zero on padding;
            keep: (B, L) bool, the real history positions (sequence != 0);
            target: (B, C, D) E_{i_{t+1}} of every candidate.
        """
        L = sequence.shape[1]
        keep = sequence != 0
        history, target = self.item.lookup([sequence, items])
        if self.label is not None:
            history = history + self.label(sequence_label)
        if self.position is not None:
            P = self.position.num_embeddings
            if L > P:
                raise ValueError(f"history length {L} exceeds the model's {P} positions")
            history = history + self.position(torch.arange(P - L, P, device=sequence.device))
        return history * keep.unsqueeze(-1), keep, target


class FieldNorm(nn.Module):
    """LayerNorm over (..., F·D) inputs made of F fields of width D: each field normalized
    on its own (``field``) or the whole row as one vector (``joint``, ``nn.LayerNorm(F·D)``),
    then one elementwise affine map of F·D weights and biases either way.

    Args: fields: F; dim: D; norm: ``field`` | ``joint``.
    """

    def __init__(self, fields: int, dim: int, norm: TowerNorm):
        super().__init__()
        self.fields, self.dim, self.norm = fields, dim, norm
        self.weight = nn.Parameter(torch.ones(fields * dim))
        self.bias = nn.Parameter(torch.zeros(fields * dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., F·D) -> (..., F·D)."""
        if self.norm == "joint":
            return F.layer_norm(x, (self.fields * self.dim,), self.weight, self.bias)
        fields = x.unflatten(-1, (self.fields, self.dim))  # (..., F, D)
        return F.layer_norm(fields, (self.dim,)).flatten(-2) * self.weight + self.bias


class Tower(nn.Module):
    """Norm -> [Linear -> ReLU -> Dropout]* -> LayerNorm -> Linear(1) (Appendix A.3).

    Args: fields: how many D-wide fields the input concatenates; dim: D; params: the
        tower's widths and first normalization (:class:`TowerParams`); dropout: after each
        layer.
    """

    def __init__(self, fields: int, dim: int, params: TowerParams, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [FieldNorm(fields, dim, params.tower_norm)]
        width = fields * dim
        for h in params.tower_hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers += [nn.LayerNorm(width), nn.Linear(width, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., F·D) -> (...,) logits."""
        return self.net(x).squeeze(-1)


def dense_l2(model: nn.Module) -> torch.Tensor:
    """1/2 ||θ||² over the dense parameters (the loop multiplies by ``train.l2``, Eq. 23's λ)."""
    return sum(p.pow(2).sum() for p in model.parameters() if p.requires_grad) / 2
