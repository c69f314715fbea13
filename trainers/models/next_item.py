"""Next-item targets inside a user's history: the training signal of sequence models.

GRU4Rec (Hidasi et al. 2016, Section 3.1.1: every event of a session is the target of the
events before it) and SASRec (Kang & McAuley 2018, Eq. 7: the loss sums over every position
t of the sequence, target o_t = the next item, one sampled negative j ∉ S^u per position)
learn from each position of a sequence, not only from its last one. In this project a
training row is (user, target slice, candidates): the last state scores the candidates; the
states before it score the next item of the history (all before the target slice, so
nothing of the target slice or later leaks in). With ~2 positives per user in the target
slice and ~50 history items, this is most of what a sequence model learns from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def history_pairs(sequence: torch.Tensor, num_items: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-item targets and one sampled negative for every history position.

    Args:
        sequence: (B, L) item ids, left-padded with 0, oldest first.
        num_items: items are 1..num_items.

    Returns:
        targets: (B, L-1) the item after position p (p = 0..L-2);
        negatives: (B, L-1) uniform items, never equal to the target at that position;
        valid: (B, L-1) bool, True where position p and its next item are real items.
    """
    targets = sequence[:, 1:]
    valid = (sequence[:, :-1] != 0) & (targets != 0)
    negatives = torch.randint(1, num_items + 1, targets.shape, device=sequence.device)
    # A draw equal to the target moves to the next id (wrapping): never the positive.
    negatives = torch.where(negatives == targets, negatives % num_items + 1, negatives)
    return targets, negatives, valid


def combined_mean(candidate_losses: torch.Tensor, history_losses: torch.Tensor,
                  valid: torch.Tensor) -> torch.Tensor:
    """Mean loss over every prediction of the batch: the candidate rows and the history.

    Args:
        candidate_losses: (B,) loss of each row's candidate list (last position).
        history_losses: (B, L-1) loss of each history position (any value where invalid).
        valid: (B, L-1) bool mask of real history positions.

    Returns:
        scalar: (Σ candidate + Σ valid history) / (B + #valid), so one position counts the
        same wherever it is (SASRec Eq. 7 sums positions alike).
    """
    history = torch.where(valid, history_losses, torch.zeros_like(history_losses))
    return (candidate_losses.sum() + history.sum()) / (candidate_losses.numel() + valid.sum())


def bce_with_history(scores: torch.Tensor, labels: torch.Tensor,
                     history: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Binary cross-entropy over the candidates and the history (SASRec Eq. 7, Caser Eq. 11).

    Args:
        scores: (B, C) candidate logits; labels: (B, C) 1.0 positive, 0.0 negatives.
        history: None (candidates only), or ((B, L-1, 2) logits of [next item, negative]
            per history position, (B, L-1) valid mask).

    Returns:
        scalar: per prediction, -log σ(positive) - Σ log(1 - σ(negative)); averaged over
        the candidate rows and the valid history positions alike.
    """
    candidates = F.binary_cross_entropy_with_logits(
        scores, labels.to(scores.dtype), reduction="none").sum(dim=1)  # (B,)
    if history is None:
        return candidates.mean()
    pairs, valid = history
    pair_labels = torch.zeros_like(pairs)
    pair_labels[..., 0] = 1.0
    per_position = F.binary_cross_entropy_with_logits(pairs, pair_labels,
                                                      reduction="none").sum(dim=-1)
    return combined_mean(candidates, per_position, valid)
