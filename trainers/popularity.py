"""Popularity reference scorer: how often an item was a positive in the slice before the
target slice (``slices``), or in the users' train parts (``leave_one_out``, ``feedback``,
which have no slices: ``store.index.train_popularity``).

A plain scorer with no parameters, evaluated with the same candidate lists and metrics
(pessimistic ties, trainers/metrics.py) as the models, so a model's numbers can be read
against it: a model that does not beat recent popularity has learned little. Ties are
frequent (many items have count 0) and, being pessimistic, cost the positive.
"""

from __future__ import annotations

import torch


def popularity_scores(counts: torch.Tensor, candidates: torch.Tensor,
                      target: torch.Tensor) -> torch.Tensor:
    """Scores of candidate lists by last-slice popularity.

    Args:
        counts: (I+1, T) positive interactions per item and slice
            (``store.index.load_popularity``).
        candidates: (B, C) item_idx, positive at column 0.
        target: (B,) target slice of each list.

    Returns:
        (B, C) float32: ``counts[item, target - 1]``, 0 when the target is slice 0.

    Raises:
        ValueError: a target slice outside 0..T-1.
    """
    T = counts.shape[1]
    if (target < 0).any() or (target >= T).any():
        raise ValueError(f"target slices must lie in 0..{T - 1}, got "
                         f"{int(target.min())}..{int(target.max())}")
    previous = target - 1  # (B,)
    scores = counts[candidates, previous.clamp(min=0)[:, None]]  # (B, C)
    return (scores * (previous >= 0)[:, None]).float()


def train_popularity_scores(counts: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Scores of candidate lists by train-part popularity (protocols without slices).

    Args:
        counts: (I+1,) positive events per item in the train part.
        candidates: (B, C) item_idx.

    Returns:
        (B, C) float32 ``counts[item]``.
    """
    return counts[candidates].float()
