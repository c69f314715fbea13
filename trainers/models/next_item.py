"""Next-item targets inside a user's history: the training signal of sequence models.

GRU4Rec (Hidasi et al. 2016, Section 3.1.1: every event of a session is the target of the
events before it) and SASRec (Kang & McAuley 2018, Eq. 7: the loss sums over every position
t of the sequence, target o_t = the next item, one sampled negative j ∉ S^u per position)
learn from each position of a sequence, not only from its last one. In this project a
training row is (user, history cut, candidates): the last state scores the candidates; the
states before it score the next event of the history (all before the cut, so nothing of
the target or later leaks in). With ~2 positives per user in a target slice and ~50 history
events, this is most of what a sequence model learns from.

Three additions beyond the papers, all from runs where a model scored below random (issue
15: SASRec AUC 0.21 on a real ratings log; issue 14: GRU4Rec and SASRec under DFAR's
protocol):

* History negatives follow the candidates' distribution. The batch's ``next_negatives``
  are drawn as the index's sampled candidates are (``index.negative_sampling``: uniform,
  or by popularity as DFAR's protocol; trainers/batches.py). A model whose history
  negatives are uniform while its candidate negatives are popular learns "popular items
  come next" from ~20 history positions per row, and the candidate lists, whose negatives
  are the popular items, then rank it below random (GRU4Rec AUC 0.46 on
  ``sample-feedback``; 0.75 after 10 epochs with matched negatives). GRU4Rec's own
  in-batch negatives (Section 3.1.3) are popularity-distributed too.

* Feedback labels. With ``sequence_label`` (1 positive, 0 negative feedback) the history
  holds every event, and a negative-feedback next item is a *real negative* target (label
  0), not a positive one. Without it, a model trained on next items against uniform
  negatives learns "will interact" and ranks the items a user interacts with but dislikes
  (the candidate lists' real negatives) above the item they like; with it, every disliked
  event of every history is a negative, ~50 per row instead of the one real negative of the
  candidate row.
* The empty history is a state too. A user with no earlier event still gets a list to rank
  (the slices protocol does not filter users). A state that is all zeros there scores every
  candidate 0 (SASRec has no item bias); with pessimistic ties the positive then ranks last,
  AUC 0 for every such list. So the padding slot right before a sequence's first event also
  predicts that event: the state of an empty history is trained (towards what users start
  with), never left at its initial value. A window holding L events has no such slot (its
  first event is not the user's first).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from trainers.registry import ModelParams


class HistoryParams(ModelParams):
    """The setting of every model that trains on its history's next items."""

    # True (the papers): every history position also predicts its next item (this module's
    # docstring). False: only the candidate rows train, as DFAR's released code trains its
    # baselines; under ``feedback`` every event is a row of its own, so the history repeats
    # each event in up to L rows an epoch (GRU4Rec on MovieLens-100K: best valid AUC at
    # epoch 1, test 0.733 with history targets, 0.765 without, issue 23).
    history_targets: bool


class HistoryScores(NamedTuple):
    """A training forward's history predictions, the ``terms`` its ``loss`` reads."""

    pairs: torch.Tensor  # (B, L-1, 1+n) logits of [next item, n sampled negatives] per position
    labels: torch.Tensor  # (B, L-1) float label of the next item (:func:`history_pairs`)
    valid: torch.Tensor  # (B, L-1) bool, real history positions


def history_pairs(sequence: torch.Tensor, num_items: int,
                  sequence_label: torch.Tensor | None = None,
                  next_negatives: torch.Tensor | None = None, *, enabled: bool = True,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-item targets, their labels and one sampled negative for every history position.

    Args:
        sequence: (B, L) item ids, left-padded with 0, oldest first.
        num_items: items are 1..num_items.
        sequence_label: (B, L) int64, 1 positive / 0 negative feedback per event, or None
            (every event is a positive).
        next_negatives: (B, L-1) sampled items, the batch's ``next_negatives`` (drawn as the
            index's candidate negatives, trainers/batches.py), or None for uniform draws.
        enabled: the model's ``history_targets``; False leaves no position valid.

    Returns:
        targets: (B, L-1) the item after position p (p = 0..L-2);
        labels: (B, L-1) float, 1.0 where that next event is positive feedback, 0.0 where it
            is negative feedback (a real negative of the state at p);
        negatives: (B, L-1) ``next_negatives`` (else uniform items), never equal to the
            target at that position;
        valid: (B, L-1) bool, True where the next item is a real event and position p is a
            real event or the padding slot just before the first event (the empty history).
    """
    targets = sequence[:, 1:]
    first = (sequence[:, :-1] == 0) & (targets != 0)  # the empty history's only target
    valid = (targets != 0) & ((sequence[:, :-1] != 0) | first) & enabled
    labels = (torch.ones_like(targets, dtype=torch.float32) if sequence_label is None
              else sequence_label[:, 1:].to(torch.float32))
    negatives = (torch.randint(1, num_items + 1, targets.shape, device=sequence.device)
                 if next_negatives is None else next_negatives)
    # A draw equal to the target moves to the next id (wrapping): never the target itself.
    negatives = torch.where(negatives == targets, negatives % num_items + 1, negatives)
    return targets, labels, negatives, valid


def prefix_rows(sequence: torch.Tensor, valid: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The prefixes ending at each valid history position, left-padded to L.

    Args:
        sequence: (B, L) left-padded item ids.
        valid: (B, L-1) bool, positions t whose prefix sequence[:, :t+1] is scored.
    Returns:
        prefixes (M, L): row m is sequence[b, :t+1] right-aligned, 0 before it;
        b, t: (M,) the row and position of each prefix.
    """
    L = sequence.shape[1]
    b, t = valid.nonzero(as_tuple=True)  # (M,) each
    src = torch.arange(L, device=sequence.device)[None, :] - (L - 1 - t)[:, None]  # (M, L)
    prefixes = sequence[b[:, None], src.clamp(min=0)] * (src >= 0)
    return prefixes, b, t


def more_negatives(targets: torch.Tensor, negatives: torch.Tensor, n: int, num_items: int,
                   resample: bool) -> torch.Tensor:
    """n sampled items per history position: :func:`history_pairs`'s draw and n - 1 more.

    Args:
        targets: (B, L-1) the next items (:func:`history_pairs`).
        negatives: (B, L-1) the draw :func:`history_pairs` made per position.
        n: sampled items per position, at least 1.
        num_items: items are 1..num_items.
        resample: True where ``negatives`` are the batch's ``next_negatives`` (the
            candidates' distribution): the extra items are drawn from those draws, with
            replacement, so each follows that distribution too; False: uniform.

    Returns:
        (B, L-1, n): column 0 is ``negatives``; no item equals its position's target (a
        draw equal to it moves to the next id, as in :func:`history_pairs`).
    """
    if n == 1:
        return negatives.unsqueeze(-1)
    shape = (*negatives.shape, n - 1)
    if resample:
        flat = negatives.flatten()
        more = flat[torch.randint(0, flat.numel(), shape, device=negatives.device)]
    else:
        more = torch.randint(1, num_items + 1, shape, device=negatives.device)
    more = torch.where(more == targets.unsqueeze(-1), more % num_items + 1, more)
    return torch.cat([negatives.unsqueeze(-1), more], dim=-1)


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
                     history: HistoryScores | None, sampled_weight: float = 1.0
                     ) -> torch.Tensor:
    """Binary cross-entropy over the candidates and the history (SASRec Eq. 7, Caser Eq. 11).

    Args:
        scores: (B, C) candidate logits; labels: (B, C) 1.0 positive, 0.0 negatives.
        history: None (candidates only), or the history's :class:`HistoryScores` (any
            (pairs, labels, valid) triple), as :func:`history_pairs` gives them.
        sampled_weight: the weight of each sampled item's term in a history prediction
            (1: summed; 1/n: averaged over its n, as Caser's released code).

    Returns:
        scalar: per prediction, the next item's BCE against its label (-log σ(r) for a
        positive, -log(1 - σ(r)) for a negative-feedback item) plus -log(1 - σ(s)) over
        its sampled items s, weighted by ``sampled_weight``; averaged over the candidate
        rows and the valid history positions alike.
    """
    candidates = F.binary_cross_entropy_with_logits(
        scores, labels.to(scores.dtype), reduction="none").sum(dim=1)  # (B,)
    if history is None:
        return candidates.mean()
    pairs, next_label, valid = history
    sampled = next_label.new_zeros((*next_label.shape, pairs.shape[-1] - 1))
    pair_labels = torch.cat([next_label.unsqueeze(-1), sampled], dim=-1)  # (B, L-1, 1+n)
    terms = F.binary_cross_entropy_with_logits(pairs, pair_labels.to(pairs.dtype),
                                               reduction="none")  # (B, L-1, 1+n)
    per_position = terms[..., 0] + sampled_weight * terms[..., 1:].sum(dim=-1)
    return combined_mean(candidates, per_position, valid)
