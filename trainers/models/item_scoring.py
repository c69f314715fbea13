"""Scores of a next-item model: a user (or position) state against item rows, plus bias.

Every next-item model (trainers/registry.py ``NextItemRecommender``) scores an item i for a
state h as r_i = h · W_i + b_i (SASRec Eq. 6, GRU4Rec Section 3.1.2, Caser Eq. 7, BERT4Rec
Eq. 7, DualRec Eq. 12, SVD++ Eq. 15 with its user bias folded into h), W the model's output
item table and b its item bias (or none). Written once here: :func:`score_rows` on rows a
model has already looked up (a row-sparse table's training lookup must go through the
table), :func:`candidate_scores` and :func:`all_item_scores` on ``item_table()``.

Shapes: B batch, C candidates, d state size, I items (table rows 0..I, 0 padding).
"""

from __future__ import annotations

import torch


def score_rows(states: torch.Tensor, rows: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """r = rows · h + b: states (..., d), rows (..., n, d), bias (..., n) or None -> (..., n)."""
    scores = (rows @ states.unsqueeze(-1)).squeeze(-1)
    return scores if bias is None else scores + bias


def candidate_scores(states: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None,
                     items: torch.Tensor) -> torch.Tensor:
    """Candidates scored against an item table.

    Args:
        states: (B, d) user states (``encode_users``).
        table, bias: (I+1, d) item rows and (I+1,) item bias or None (``item_table()``).
        items: (B, C) item ids.
    Returns:
        (B, C) scores, equal to the model's ``forward(batch).scores`` at inference.
    """
    return score_rows(states, table[items], None if bias is None else bias[items])


def all_item_scores(states: torch.Tensor, table: torch.Tensor,
                    bias: torch.Tensor | None, first: int = 1,
                    end: int | None = None) -> torch.Tensor:
    """Every item 1..I scored (or items ``first .. end-1``, a chunk of them): states (B, d),
    table (I+1, d), bias (I+1,) or None -> (B, I); column j is item ``first + j`` (the
    padding row 0 is no item)."""
    scores = states @ table[first:end].T
    return scores if bias is None else scores + bias[first:end]
