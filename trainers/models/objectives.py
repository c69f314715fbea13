"""Next-item objectives every next-item model can train with (``model.params.loss``).

Each model keeps its paper's objective as the default of ``loss`` (SASRec, Caser, FMLP-Rec:
``bce``, one sampled negative per prediction; GRU4Rec: ``top1`` | ``bpr``; BERT4Rec and the
dual models: ``ce``, their full softmax). The objectives the field now uses are written
once here, over a model's *predictions*: the states at the positions it predicts from, the
item each predicts, and the model's output item rows (``item_table()``, looked up through
the model so a row-sparse table records the rows it touches):

  * ``ce``: cross-entropy of the full softmax over items 1..I (the padding row is no class),
    in row blocks so no (M, I) logits tensor is held (trainers/models/softmax.py). SASRec+CE
    (Klenitskiy & Vasilev, RecSys 2023) reports NDCG@10 0.0327 against SASRec-BCE's 0.0126
    on BERT4Rec's Beauty split.
  * ``sampled_softmax``: the target's logit against K = ``loss_negatives`` sampled items,
    −log softmax([s⁺, s⁻_1..K])[0]; a sampled item equal to the target is masked out (its
    logit is −inf), never a negative of itself. eSASRec's benchmark (S3-Rec's Beauty, full
    ranking): SASRec with 256-negative sampled softmax HR@10 0.0921 / NDCG@10 0.0531
    against BCE's 0.0605 / 0.0318.
  * ``gbce``: gSASRec's generalised BCE (Petrov & Macdonald, RecSys 2023, Section 4; the
    released gSASRec-pytorch ``gbce.py``):
        L = −1/(k+1) · ( log σ(s⁺)^β + Σ_{i ∈ I_k⁻} log(1 − σ(s_i)) ),
        β = α (t (1 − 1/α) + 1/α),  α = k / (I − 1),
    with k sampled negatives, I items and the calibration t = ``gbce_t`` (released default
    0.75; t = 0 is plain BCE, β = 1; t = 1 gives β = α). log σ(s⁺)^β is computed as
    β · log σ(s⁺) and log(1 − σ(s)) as −softplus(s), both stable. A sampled item equal to
    the target is left out of the sum; the 1/(k+1) stays (the released code's mean over the
    k+1 scores of a position).

Negatives (``sampled_softmax``, ``gbce``): K items drawn uniformly from 1..I, with
replacement, for each prediction, as gSASRec's released code draws them per position
(:func:`draw_negatives`, once per training forward, torch's global RNG, which the loop seeds
per epoch). One set shared by every prediction of a batch kept gBCE at random level on the
Toys-shaped ``sample-loo`` (GRU4Rec: valid HR@10 0.10 after 10 epochs with dense Adam;
SASRec: 0.097, AUC 0.46 after 5 with lazy Adam). With a set per prediction GRU4Rec reached
0.27 by epoch 9 (at lr 1e-3) and SASRec 0.270 by epoch 15 (test 0.259 against popularity's
0.238; still slower than its BCE). The shared set's random direction is the same for all
~2,000 predictions, so it does not average out, and with only β/(k+1) ≈ 0.001 of a
prediction's weight on its positive, that noise is most of the gradient (issue 23). A
forward draws G sets of K: prediction m uses set m mod G, and G is as large as
``softmax_max_logits`` allows for the gathered (G, K, d) rows, so every prediction has its
own set unless a batch has more than G predictions (G = 3,051 at K = 256, d = 64). Uniform,
because gBCE's β is derived for uniform sampling (α is the chance that a given item is
among the k draws), because the published anchors above sample uniformly, and because a
uniform draw needs no logQ correction (log q is the same constant for every item and
cancels in the softmax). They are not the batch's ``next_negatives`` (drawn as the
index's sampled candidates, uniform or by popularity): BERT4Rec and the dual models take
none, and declaring them would change the draws of their default objective. So under
``index.negative_sampling: popularity`` these objectives train against uniform negatives
while the candidate lists hold popular ones (issue 14's mismatch); they are meant for full
ranking, where every item is a candidate. The (M, K) logits of a 256 x 50-position batch
are 13 MB; K rows for each of its 12,800 predictions would be (M, K, d) gathered rows
(0.8 GB at d = 64), hence the cap on G.

Feedback labels: a softmax objective has only positive targets (the item to put first), so
a prediction whose target is negative feedback (label 0: a disliked next history item
under ``sequence_label``, or a disliked candidate-row target under ``feedback``) is left out
of these objectives; the default BCE / TOP1 / BPR objectives keep using it as a negative.

Shapes: B batch, L sequence length, M predictions, K sampled negatives, d state size,
I items (ids 1..I, 0 padding).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from pydantic import Field

from trainers.models.item_scoring import score_rows
from trainers.models.softmax import full_softmax_ce
from trainers.registry import ModelParams

Objective = Literal["ce", "sampled_softmax", "gbce"]
OBJECTIVES: frozenset[str] = frozenset(get_args(Objective))
SAMPLED: frozenset[str] = frozenset({"sampled_softmax", "gbce"})

# ids (...,) -> their output rows (..., d) and item bias (...,) or None, looked up through the
# model's table (a row-sparse table must see its training lookups).
ItemRows = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


class ObjectiveParams(ModelParams):
    """The settings of :mod:`objectives` every next-item model shares; each model declares
    its own ``loss: Literal[<its paper's objective(s)>, "ce", "sampled_softmax", "gbce"]``."""

    loss_negatives: int = Field(gt=0)  # K for sampled_softmax / gbce (gSASRec, eSASRec: 256)
    gbce_t: float = Field(ge=0.0, le=1.0)  # gBCE calibration t (gSASRec released: 0.75)
    softmax_max_logits: int = Field(gt=0)  # most logits a full-softmax block holds (x4 B);
    # also the most floats of a forward's gathered negative rows (draw_negatives)


class Predictions(NamedTuple):
    """A training forward's next-item predictions, the ``terms`` an objective reads."""

    states: torch.Tensor  # (M, d) the state each prediction is made from
    targets: torch.Tensor  # (M,) the item each predicts, in 1..I
    negatives: torch.Tensor | None  # (G, K) sampled sets, prediction m uses m mod G; None: ce


def draw_negatives(loss: str, num_items: int, k: int, device: torch.device | str, dim: int,
                   max_floats: int) -> torch.Tensor | None:
    """G sets of K items uniform over 1..I (with replacement) for a sampled objective, else
    None; G = max(1, max_floats // (K * dim)), the most sets whose gathered rows fit.

    Nothing is drawn for any other ``loss``, so a model's default objective sees the same
    random draws as before these objectives existed.

    Args:
        dim: width of the rows the predictions are scored against.
        max_floats: the model's ``softmax_max_logits``, the objectives' memory budget.
    Returns:
        (G, K) int64, or None.
    """
    if loss not in SAMPLED:
        return None
    groups = max(1, max_floats // (k * dim))
    return torch.randint(1, num_items + 1, (groups, k), device=device)


def grouped_scores(states: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Each prediction's scores against its own set: prediction m against set m mod G.

    Args:
        states: (M, d); rows: (G, K, d) the sets' rows, G <= M.
    Returns:
        (M, K) scores.
    """
    M, G = states.shape[0], rows.shape[0]
    n = -(-M // G)  # predictions per set, rounded up
    padded = F.pad(states, (0, 0, 0, n * G - M))  # (n*G, d): row j*G + g uses set g
    grouped = padded.view(n, G, -1).transpose(0, 1)  # (G, n, d)
    scores = torch.bmm(grouped, rows.transpose(1, 2))  # (G, n, K)
    return scores.transpose(0, 1).reshape(n * G, -1)[:M]


def sequence_predictions(states: torch.Tensor, history_targets: torch.Tensor,
                         history_labels: torch.Tensor, valid: torch.Tensor,
                         target: torch.Tensor, target_label: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The predictions of a model whose state at each position predicts the next item.

    The last state predicts the candidate row's target; each earlier state p predicts the
    history's next item where ``valid`` (trainers/models/next_item.py ``history_pairs``),
    the same predictions the model's default objective learns from. A target of label 0
    (negative feedback) is no softmax target and is left out.

    Args:
        states: (B, L, d) states.
        history_targets, history_labels, valid: (B, L-1) next items, their float labels
            and the real positions (``history_pairs``).
        target: (B,) the candidate row's target (``items[:, 0]``).
        target_label: (B,) its label (``label[:, 0]``).
    Returns:
        states (M, d) and targets (M,): the candidate rows first, then the history.
    """
    last = target_label > 0  # (B,)
    history = valid & (history_labels > 0)  # (B, L-1)
    return (torch.cat([states[:, -1][last], states[:, :-1][history]]),
            torch.cat([target[last], history_targets[history]]))


def gbce_beta(num_negatives: int, num_items: int, t: float) -> float:
    """β = α (t (1 − 1/α) + 1/α) with α = k / (I − 1) (gSASRec, Section 4).

    Raises:
        ValueError: k >= I (α, a sampling rate, would exceed 1), or I < 2.
    """
    if num_items < 2 or num_negatives > num_items - 1:
        raise ValueError(f"gbce samples k = model.params.loss_negatives = {num_negatives} "
                         f"of the {num_items - 1} items besides the target; α = k/(I-1) is a "
                         f"sampling rate: set loss_negatives below {num_items}")
    alpha = num_negatives / (num_items - 1)
    return alpha * (t * (1 - 1 / alpha) + 1 / alpha)


def sampled_softmax_loss(positive: torch.Tensor, negatives: torch.Tensor,
                         collision: torch.Tensor) -> torch.Tensor:
    """−log softmax([s⁺, s⁻_1..K])[0], masked negatives left out.

    Args:
        positive: (M,) target logits; negatives: (M, K) sampled items' logits;
        collision: (M, K) bool, True where the sampled item is the target itself.
    Returns:
        (M,) loss per prediction.
    """
    negatives = negatives.masked_fill(collision, float("-inf"))
    logits = torch.cat([positive.unsqueeze(1), negatives], dim=1)  # (M, 1+K)
    return torch.logsumexp(logits, dim=1) - positive


def gbce_loss(positive: torch.Tensor, negatives: torch.Tensor, collision: torch.Tensor,
              beta: float) -> torch.Tensor:
    """gBCE: −1/(k+1) (β log σ(s⁺) + Σ_unmasked log(1 − σ(s⁻))).

    Args:
        positive: (M,) target logits; negatives: (M, K) sampled items' logits;
        collision: (M, K) bool, True where the sampled item is the target (left out);
        beta: :func:`gbce_beta`.
    Returns:
        (M,) loss per prediction.
    """
    negative_terms = F.softplus(negatives).masked_fill(collision, 0.0).sum(1)  # −log(1−σ)
    return (-beta * F.logsigmoid(positive) + negative_terms) / (negatives.shape[1] + 1)


def prediction_losses(loss: str, predictions: Predictions, rows: ItemRows, num_items: int,
                      max_logits: int, gbce_t: float) -> torch.Tensor:
    """Each prediction's loss under objective ``loss``.

    Args:
        loss: ``ce``, ``sampled_softmax`` or ``gbce``.
        predictions: states (M, d), targets (M,), negatives (G, K) (None for ``ce``).
        rows: the model's output rows and bias of item ids (:data:`ItemRows`).
        num_items: I.
        max_logits: most logits one full-softmax block holds (``ce``).
        gbce_t: gBCE's t.
    Returns:
        (M,) loss per prediction.
    Raises:
        ValueError: an unknown ``loss``, or a sampled objective without negatives.
    """
    states, targets, negatives = predictions
    if loss == "ce":
        table, bias = rows(torch.arange(1, num_items + 1, device=targets.device))  # (I, d)
        return full_softmax_ce(states, targets, table, max_logits, bias)
    if loss not in SAMPLED:
        raise ValueError(f"unknown objective {loss!r}; known: {sorted(OBJECTIVES)}")
    if negatives is None:
        raise ValueError(f"loss {loss!r} needs the forward's sampled negatives")
    M = targets.shape[0]
    if M == 0:  # e.g. every target disliked: no loss terms
        return states.new_zeros(0)
    negatives = negatives[:M]  # (G, K): no more sets than predictions
    G, K = negatives.shape
    table, bias = rows(torch.cat([targets, negatives.reshape(-1)]))  # (M+GK, d): one lookup
    positive = score_rows(states, table[:M].unsqueeze(1),
                          None if bias is None else bias[:M, None]).squeeze(1)  # (M,)
    group = torch.arange(M, device=targets.device) % G  # (M,) each prediction's set
    sampled = grouped_scores(states, table[M:].view(G, K, -1))  # (M, K)
    if bias is not None:
        sampled = sampled + bias[M:].view(G, K)[group]
    collision = targets[:, None] == negatives[group]  # (M, K)
    if loss == "sampled_softmax":
        return sampled_softmax_loss(positive, sampled, collision)
    return gbce_loss(positive, sampled, collision,
                     gbce_beta(K, num_items, gbce_t))


def objective_loss(loss: str, predictions: Predictions | None, rows: ItemRows, num_items: int,
                   max_logits: int, gbce_t: float) -> torch.Tensor:
    """The mean of :func:`prediction_losses` over a training forward's predictions (0 when
    it has none, e.g. every target disliked).

    Raises:
        RuntimeError: no training forward made ``predictions``.
    """
    if predictions is None:
        raise RuntimeError("loss needs a training forward's output (model.train(), grad on)")
    losses = prediction_losses(loss, predictions, rows, num_items, max_logits, gbce_t)
    return losses.sum() / max(1, losses.numel())
