"""The dual network of DualRec (Zhang et al., CIKM 2022, "Disentangling Past-Future Modeling
in Sequential Recommendation via Dual Networks"), for any backbone encoder.

Implemented (equation numbers of the paper):
  * Section 3.3: two encoders of the same backbone with separate parameters, a past encoder
    (next-item prediction, sees positions <= t) and a future encoder (previous-item
    prediction, sees positions >= t), sharing one item embedding E^I (3.3.1, Eq. 2) that is
    also the output layer (Eq. 12).
  * Eq. 12-14 on the training sequence s = ``sequence`` followed by the target
    (``items[:, 0]``), L+1 items: the past encoder reads s[:-1] and its output at each
    position predicts the next item (s[1:]); the future encoder reads s[1:] and predicts the
    previous one (s[:-1]), as the released code. Each prediction is a full softmax over all
    items (trainers/models/softmax.py, chunked); each encoder's cross-entropy is the mean
    over its non-padding positions (the code's ``CrossEntropyLoss(ignore_index=0)``; Eq. 14
    writes sums), and L = α·L_past + (1-α)·L_future + β·L_reg.
  * Eq. 10-11, the bi-directional transfer: each encoder returns, per level (a Transformer
    layer; one level for the other backbones), a (B, S, f) feature vector per scale (an
    attention head of its window, or a per-scale state); a scale's distribution is the
    softmax over its f features, and L_reg is ½[KL(p‖f) + KL(f‖p)] of matching scales.
    ``transfer_reduction: mean`` (default) is the released code's normalisation, the one
    β = 0.1 was tuned with (PROTOCOLS §5): averaged over batch, scales and levels; ``sum``
    sums over scales as Eq. 10 writes (β then weighs S times more), still averaged over
    batch and levels.
  * Eq. 8, window sizes per scale (:func:`window_sizes`).
  * Section 3.5.2: inference uses the past encoder only; its state at the last position
    scores the candidates.
  * Slots that are padding in every row of a batch are cropped before the encoders
    (:func:`crop_padding`; exact, tests check it): Beauty's histories average ~9 items, so
    most of a batch's L = 50 slots would be padding.

``params.loss``: ``ce`` (Eq. 13's full softmax) by default; ``sampled_softmax`` or ``gbce``
train both encoders' predictions with that objective instead (trainers/models/objectives.py);
the transfer term L_reg stays as it is.

Ablations (Tables 3-5), as settings:
  * ``encoders: past`` — the past-only model: only the past encoder exists; L = L_past.
    Not Table 4's "plain backbone" rows: those are the published baselines themselves
    (``sasrec``, ``gru4rec``, ``fmlp``), which a comparison prints beside it.
  * ``encoders: future`` — the future-only model of Table 5: only the future encoder exists,
    trained on L_future (previous-item prediction); at inference the same parameters read
    the history as a past encoder (its mask or reading direction flipped), "the extreme case
    of training-inference gap".
  * ``encoders: shared`` — Table 3 "w/o DE": one encoder produces both the past and the
    future representations (its left-to-right and right-to-left masks), Eq. 14 and the
    transfer unchanged between the two.
  * ``beta: 0`` — dual without transfer (Table 3 "w/o BIT", Table 4 "Dual<backbone>").
  * DualRec's Transformer only: ``relative_position: none`` (Table 3 "w/o RPE"),
    ``layer_norm: false`` ("w/o LN"), ``residual: false`` ("w/o RC").

Backbone encoders implement ``encoder(e, keep, direction, scales)``: e (B, L, d) item
embeddings of a left-padded sequence, keep (B, L) bool (real items), direction "past" or
"future"; they return (B, L, d) states (0 on padding; a past state at t depends on items
<= t only, a future state on items >= t only) and, when ``scales``, the list of per-level
(B, S, f) scale features (else None).

Shapes: B batch, C candidates, L sequence length, d embedding, S scales, N items.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from trainers.models.item_scoring import score_rows
from trainers.models.objectives import (ObjectiveParams, Predictions, draw_negatives,
                                        prediction_losses)
from trainers.registry import Batch, DataSizes, Output

Direction = Literal["past", "future"]


def window_sizes(h: int, n: int) -> list[int]:
    """Eq. 8: WS(i) = i+1 for i <= h/2, else h/2 + ⌈e^{i-h/2} / e^{h/2} · (n - h/2)⌉.

    A window counts the keys a query sees including itself (the released code's masks; for
    h=8, n=50: [2, 3, 4, 5, 7, 11, 21, 50]). Eq. 9 writes S_j = [X_{j-σ}, ..., X_j], one key
    more; the code and its published numbers use σ keys.

    Args:
        h: scales (attention heads), even.
        n: sequence length.
    Returns:
        h window sizes, for scales i = 1..h.
    Raises:
        ValueError: odd h.
    """
    if h % 2:
        raise ValueError(f"Eq. 8 needs an even number of scales, got {h}")
    half = h // 2
    return [i + 1 if i <= half
            else half + math.ceil(math.exp(i - half) / math.exp(half) * (n - half))
            for i in range(1, h + 1)]


def symmetric_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """½[KL(P‖Q) + KL(Q‖P)] of P = softmax(p_logits), Q = softmax(q_logits) (Eq. 10-11).

    Args:
        p_logits, q_logits: (..., f) features; the softmax is over the last axis.
    Returns:
        (...,) divergence per row.
    """
    log_p, log_q = F.log_softmax(p_logits, dim=-1), F.log_softmax(q_logits, dim=-1)
    kl_pq = (log_p.exp() * (log_p - log_q)).sum(-1)
    kl_qp = (log_q.exp() * (log_q - log_p)).sum(-1)
    return (kl_pq + kl_qp) / 2


def transfer_loss(past: list[torch.Tensor], future: list[torch.Tensor],
                  reduction: Literal["mean", "sum"]) -> torch.Tensor:
    """L_reg of Eq. 10 between matching scales of the two encoders.

    Args:
        past, future: per level, (B, S, f) scale features of each encoder.
        reduction: ``mean`` over batch and scales (released code), ``sum`` over scales and
            mean over batch (Eq. 10); both average over levels.
    Returns:
        scalar.
    """
    per_level = []
    for p, f in zip(past, future, strict=True):
        kl = symmetric_kl(p, f)  # (B, S)
        per_level.append(kl.mean() if reduction == "mean" else kl.sum(1).mean())
    return torch.stack(per_level).mean()


def window_end_states(states: torch.Tensor, lengths: torch.Tensor,
                      windows: list[int]) -> torch.Tensor:
    """A right-to-left encoder's state after reading the w newest items, for each window w.

    A future encoder reads a left-padded sequence from its newest item backwards, so its
    state at position L - w has read exactly the w newest items: the input truncated to the
    window (a user with fewer items is read whole).

    Args:
        states: (B, L, k) future-direction states (0 on padding).
        lengths: (B,) real items per row.
        windows: S window sizes.
    Returns:
        (B, S, k); rows without items are 0.
    """
    B, L, k = states.shape
    w = torch.tensor(windows, device=states.device)  # (S,)
    at = L - torch.minimum(w[None, :], lengths[:, None]).clamp(min=1)  # (B, S)
    return states.gather(1, at.unsqueeze(-1).expand(B, len(windows), k))


def crop_padding(sequence: torch.Tensor) -> torch.Tensor:
    """Drop the leading slots that are padding in every row: (B, L) -> (B, L'), L' >= 1.

    Every backbone here masks padding keys, zeroes padding rows and uses relative positions,
    newest-aligned absolute positions or causal filters, so the states of the kept slots do
    not change; a batch of short histories then costs O(L'^2), not O(L^2), in attention.
    """
    used = (sequence != 0).any(0)  # (L,)
    first = int(used.int().argmax()) if bool(used.any()) else sequence.shape[1] - 1
    return sequence[:, first:]


def _crop_pair(inputs: torch.Tensor, targets: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`crop_padding` of an encoder's inputs (B, L), and its targets at the same slots."""
    inputs = crop_padding(inputs)
    return inputs, targets[:, targets.shape[1] - inputs.shape[1]:]


class DualTerms(NamedTuple):
    """A training forward's encoder outputs, the ``terms`` its loss reads (Eq. 12-14)."""

    # per encoder ("past", "future"): (B, L', d) states, (B, L') inputs, (B, L') targets
    ce: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    levels: dict[str, list[torch.Tensor] | None]  # per encoder: per level (B, S, f), or None
    negatives: torch.Tensor | None = None  # (G, K) sampled sets (sampled_softmax, gbce)


class DualParams(ObjectiveParams):
    """Settings every dual backbone shares (Section 3.3-3.5)."""

    embed_dim: int = Field(gt=0)  # d (paper: 64)
    init_std: float = Field(gt=0)  # weights and embeddings start as N(0, std²) (code: 0.02)
    dropout: float = Field(ge=0.0, lt=1.0)  # paper: 0.5
    # dual: two encoders; shared: one encoder read both ways (Table 3 "w/o DE"); past /
    # future: one direction only (Table 5)
    encoders: Literal["dual", "shared", "past", "future"]
    alpha: float = Field(ge=0.0, le=1.0)  # α of Eq. 14 (paper: 0.5)
    beta: float = Field(ge=0.0)  # β of Eq. 14 (released configs: 0.1; 0 = no transfer)
    transfer_reduction: Literal["mean", "sum"]  # mean: released code; sum: Eq. 10
    # the encoders' next / previous-item term: ce, Eq. 13's full softmax; or objectives.py
    loss: Literal["ce", "sampled_softmax", "gbce"]

    @model_validator(mode="after")
    def _transfer_needs_both(self) -> DualParams:
        if self.beta > 0 and self.encoders not in ("dual", "shared"):
            raise ValueError(f"beta={self.beta} transfers between two directions, but encoders "
                             f"is {self.encoders!r}: set beta: 0 or encoders: dual")
        return self


class MultiScaleParams(DualParams):
    """Dual backbones without attention heads (GRU4Rec, FMLP-Rec): Eq. 8's windows become
    ``num_scales`` truncated inputs (h of Eq. 8, even)."""

    num_scales: int = Field(ge=2)  # h of Eq. 8 for the multi-scale inputs (even)

    @model_validator(mode="after")
    def _even_scales(self) -> MultiScaleParams:
        if self.num_scales % 2:
            raise ValueError(f"num_scales must be even (Eq. 8), got {self.num_scales}")
        return self


class DualNetwork(nn.Module):
    """Past and future encoders over a shared, tied item embedding (Section 3.3-3.5).

    The item table is a dense ``nn.Embedding``, not a row-sparse one: the full softmax of
    Eq. 13 gives every row a gradient at every step, so a row-sparse table would gather and
    scatter the whole table each step for nothing.

    Args:
        params: the dual settings.
        sizes: dataset sizes.
        make_encoder: builds one backbone encoder (called once per encoder kept).
    """

    inputs = frozenset({"sequence"})
    optional_inputs = frozenset()

    def __init__(self, params: DualParams, sizes: DataSizes,
                 make_encoder: Callable[[], nn.Module]):
        super().__init__()
        self.params = params
        self.item = nn.Embedding(sizes.num_items + 1, params.embed_dim, padding_idx=0)  # E^I
        nn.init.normal_(self.item.weight, std=params.init_std)
        with torch.no_grad():
            self.item.weight[0].zero_()  # "a constant zero vector for the padding item"
        self.past = make_encoder() if params.encoders != "future" else None
        # shared (w/o DE): the past encoder's own parameters also read the future direction
        self.future = (self.past if params.encoders == "shared"
                       else make_encoder() if params.encoders != "past" else None)

    def _score(self, h: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Eq. 12 on candidates: h (B, d), items (B, C) -> (B, C)."""
        return score_rows(h, self.item(items))

    def predict_states(self, sequence: torch.Tensor) -> torch.Tensor:
        """States of the encoder used at inference over a history (Section 3.5.2).

        Args:
            sequence: (B, L) left-padded item ids.
        Returns:
            (B, L', d) over the newest L' slots (:func:`crop_padding`): the past encoder's
            states, or, for the future-only model, the future encoder's parameters read in
            the past direction.
        """
        encoder = self.past if self.past is not None else self.future
        sequence = crop_padding(sequence)  # (B, L')
        return encoder(self.item(sequence), sequence != 0, "past", False)[0]

    def encode_users(self, batch: Batch) -> torch.Tensor:
        """The inference encoder's state at the last position (Section 3.5.2): (B, d)."""
        return self.predict_states(batch["sequence"])[:, -1]

    def item_table(self) -> tuple[torch.Tensor, None]:
        """E^I, the output layer of Eq. 12: (I+1, d); no item bias."""
        return self.item.weight, None

    def forward(self, batch: Batch) -> Output:
        """Args: batch with ``sequence`` (B, L) and ``items`` (B, C). Returns (B, C) logits.

        In training (grad enabled) it also runs both encoders over the training sequence;
        what :meth:`loss` needs (Eq. 12-14) is the output's ``terms`` (:class:`DualTerms`).
        """
        sequence, items = batch["sequence"], batch["items"]
        if not (self.training and torch.is_grad_enabled()):
            return Output(self._score(self.encode_users(batch), items))
        full = torch.cat([sequence, items[:, :1]], dim=1)  # (B, L+1): s = history + target
        scales = self.params.beta > 0
        ce, levels = {}, {}
        if self.past is not None:
            past_in, target = _crop_pair(full[:, :-1], full[:, 1:])  # slot t predicts t+1
            states, levels["past"] = self.past(self.item(past_in), past_in != 0, "past", scales)
            ce["past"] = (states, past_in, target)
            scores = self._score(states[:, -1], items)
        if self.future is not None:
            future_in, target = _crop_pair(full[:, 1:], full[:, :-1])  # slot t predicts t-1
            states, levels["future"] = self.future(self.item(future_in), future_in != 0,
                                                   "future", scales)
            ce["future"] = (states, future_in, target)
        if self.past is None:  # future-only: the candidates are scored as at inference
            with torch.no_grad():
                scores = self._score(self.encode_users(batch), items)
        negatives = draw_negatives(self.params.loss, self.item.weight.shape[0] - 1,
                                   self.params.loss_negatives, sequence.device,
                                   self.params.embed_dim, self.params.softmax_max_logits)
        return Output(scores, DualTerms(ce, levels, negatives))

    def encoder_losses(self, ce: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                       negatives: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Mean full-softmax cross-entropy (Eq. 13-14) of each encoder over its positions
        whose input and target are both items; with ``params.loss`` ``sampled_softmax`` or
        ``gbce``, that objective's mean over the same positions against ``negatives`` (G, K)
        (trainers/models/objectives.py)."""
        out, p = {}, self.params
        for name, (states, inputs, targets) in ce.items():
            valid = (inputs != 0) & (targets != 0)  # (B, L)
            losses = prediction_losses(p.loss, Predictions(states[valid], targets[valid],
                                                           negatives),
                                       lambda ids: (self.item(ids), None),
                                       self.item.weight.shape[0] - 1, p.softmax_max_logits,
                                       p.gbce_t)  # (M,)
            out[name] = losses.sum() / valid.sum().clamp(min=1)
        return out

    def loss(self, output: Output, batch: Batch) -> torch.Tensor:
        """Eq. 14 of a training forward's ``output`` (the candidate scores are not part of
        it: the target is the last past-encoder position's full-softmax prediction).

        Raises:
            RuntimeError: no training forward made ``output``.
        """
        if output.terms is None:
            raise RuntimeError("loss needs a training forward's output (model.train(), grad on)")
        ce, levels, negatives = output.terms
        terms = self.encoder_losses(ce, negatives)
        if self.params.encoders in ("past", "future"):
            return terms[self.params.encoders]
        p = self.params
        total = p.alpha * terms["past"] + (1 - p.alpha) * terms["future"]
        if p.beta > 0:
            total = total + p.beta * transfer_loss(levels["past"], levels["future"],
                                                   p.transfer_reduction)
        return total

    def regularization(self) -> torch.Tensor:
        """1/2 ||θ||² over every parameter, which the loop adds times ``train.l2`` (0 in the
        presets: the released code's decay is ``train.weight_decay``, Adam's coupled L2)."""
        return sum(p.pow(2).sum() for p in self.parameters() if p.requires_grad) / 2
