"""DIEN (Zhou et al., AAAI 2019, "Deep Interest Evolution Network for Click-Through Rate
Prediction"), as a baseline of DFAR's Table 2 on the (item, label) history.

Implemented (by the paper's section names; its text is not in ../shared/papers, so no
equation numbers are quoted):
  * Behaviour embeddings e_t = E_{i_t} + L_{y_t} (the label as one more embedded feature of a
    behaviour, as DFAR's Eq. 1; every model of the comparison reads the same history).
  * Interest extractor layer: a GRU over e_1..e_T gives h_1..h_T (``nn.GRUCell``;
    a left-padded slot leaves the state unchanged, so h starts at 0 on the first real item).
  * Auxiliary loss: h_t must tell the next behaviour e_{t+1} from a sampled one,
    L_aux = -mean_t [log σ(h_t·e_{t+1}) + log(1 - σ(h_t·ê_{t+1}))], ê_{t+1} an item other
    than the real one carrying the same label, so the contrast is about the item.
    The hidden width is D, as h_t·e must be defined. ``aux_negatives``: ``in_batch`` (the
    preset) draws a behaviour of the batch's histories, so items come by their interaction
    counts, as the released code draws a line of its review log (the paper says "sampled
    from the item set" and names no distribution); ``uniform`` draws uniformly from the item
    set. With uniform draws L_aux cost DIEN 0.05 valid AUC on the generated Amazon-shaped
    ratings (issue 23), whose evaluation candidates come by popularity.
  * Interest evolving layer with AUGRU (the paper's best variant):
    a_t = softmax_t(h_t W e_a) over the real positions, u'_t = a_t · u_t,
    h'_t = (1 - u'_t) ∘ h'_{t-1} + u'_t ∘ h̃'_t, one evolution per candidate e_a.
  * Output: an MLP over [h'_T, e_a], between two LayerNorms as the DFAR authors ran every
    baseline (DFAR App. A.3); L = L_target + α·L_aux, L_target the BCE of every
    candidate row.

Shapes: B batch, C candidates, L history length, D embedding (= GRU width).
"""

from __future__ import annotations

from typing import ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainers.models.feedback_attention import masked_softmax
from trainers.models.feedback_layers import FeedbackEmbedding, Tower, TowerParams, dense_l2
from trainers.registry import Batch, DataSizes, ModelParams, Output, register


class DIENParams(TowerParams):
    embed_dim: int = Field(gt=0)  # D, also the GRU width (h_t·e_{t+1} of L_aux)
    embed_init_std: float = Field(gt=0)
    aux_weight: float = Field(ge=0)  # α weighing L_aux (released code: 1)
    # ê_{t+1} of L_aux: a behaviour of the batch (released code) | uniform over the item set
    aux_negatives: Literal["uniform", "in_batch"]
    dropout: float = Field(ge=0.0, lt=1.0)


class DIENTerms(NamedTuple):
    """What a training forward adds to :meth:`DIEN.loss`."""

    aux: torch.Tensor  # () L_aux


class AUGRUCell(nn.Module):
    """GRU with attentional update gate (AUGRU): the update gate u_t is scaled by a_t."""

    def __init__(self, dim: int):
        super().__init__()
        self.x_gates = nn.Linear(dim, 3 * dim)  # W^u, W^r, W^h
        self.h_gates = nn.Linear(dim, 3 * dim)  # U^u, U^r, U^h

    def forward(self, x: torch.Tensor, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Args: x, h (N, D); a (N, 1) attention. Returns h' (N, D); a = 0 keeps h."""
        xu, xr, xh = self.x_gates(x).chunk(3, dim=-1)
        hu, hr, hh = self.h_gates(h).chunk(3, dim=-1)
        u = torch.sigmoid(xu + hu) * a  # u'_t = a_t · u_t
        r = torch.sigmoid(xr + hr)
        candidate = torch.tanh(xh + r * hh)  # h̃_t
        return (1 - u) * h + u * candidate


@register("dien")
class DIEN(nn.Module):
    Params: ClassVar[type[ModelParams]] = DIENParams
    inputs: ClassVar[frozenset[str]] = frozenset({"sequence", "sequence_label"})
    variable_length: ClassVar[bool] = True  # padding is masked everywhere: no output reads it

    def __init__(self, params: DIENParams, sizes: DataSizes):
        super().__init__()
        self.params = params
        D = params.embed_dim
        self.num_items = sizes.num_items
        self.embed = FeedbackEmbedding(sizes.num_items, D, params.embed_init_std, positions=0,
                                       labels=True)
        self.extractor = nn.GRUCell(D, D)  # interest extractor
        self.attention = nn.Linear(D, D, bias=False)  # W of a_t = softmax(h_t W e_a)
        self.evolution = AUGRUCell(D)  # interest evolving
        self.tower = Tower(2, D, params, params.dropout)  # [h'_T, target]

    def forward(self, batch: Batch) -> Output:
        """Args: batch with ``sequence``, ``sequence_label`` (B, L), ``items`` (B, C).
        Returns an Output with (B, C) logits; in training its terms hold L_aux."""
        sequence, labels = batch["sequence"], batch["sequence_label"]
        e, keep, target = self.embed(sequence, labels, batch["items"])  # (B,L,D) (B,L) (B,C,D)
        B, L, D = e.shape
        C = target.shape[1]
        h = e.new_zeros(B, D)
        states = []
        for t in range(L):  # interest extractor
            h = torch.where(keep[:, t:t + 1], self.extractor(e[:, t], h), h)
            states.append(h)
        H = torch.stack(states, dim=1) * keep.unsqueeze(-1)  # (B, L, D) h_t
        # L_aux trains the extractor; evaluation does not need it (nor its random draws).
        terms = DIENTerms(self._auxiliary(H, e, sequence, labels)) if self.training else None
        scores = torch.einsum("bld,bcd->bcl", self.attention(H), target)  # h_t W e_a
        a = masked_softmax(scores, keep.unsqueeze(1), dim=-1)  # (B, C, L) a_t
        x = H.unsqueeze(1).expand(B, C, L, D).reshape(B * C, L, D)
        a = a.reshape(B * C, L, 1)
        h_evolved = e.new_zeros(B * C, D)
        for t in range(L):  # AUGRU; padding has a_t = 0 and leaves the state as is
            h_evolved = self.evolution(x[:, t], h_evolved, a[:, t])
        return Output(self.tower(torch.cat([h_evolved.view(B, C, D), target], dim=-1)), terms)

    def _auxiliary(self, H: torch.Tensor, e: torch.Tensor, sequence: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
        """L_aux over every real (t, t+1) pair of the batch (0 if there is none)."""
        nexts = sequence[:, 1:]  # (B, L-1) e_{t+1}'s item
        valid = (sequence[:, :-1] != 0) & (nexts != 0)  # both behaviours real
        if self.params.aux_negatives == "in_batch":
            negatives = self._batch_behaviours(sequence, nexts)
            valid = valid & (negatives != 0)  # no other item in the batch: no contrast
        else:
            negatives = torch.randint(1, self.num_items + 1, nexts.shape,
                                      device=sequence.device)
            # A draw equal to the real next item moves to the next id (wrapping).
            negatives = torch.where(negatives == nexts, negatives % self.num_items + 1,
                                    negatives)
        negative = self.embed.item(negatives) + self.embed.label(labels[:, 1:])  # (B, L-1, D)
        positive_logit = (H[:, :-1] * e[:, 1:]).sum(-1)  # (B, L-1) h_t·e_{t+1}
        negative_logit = (H[:, :-1] * negative).sum(-1)  # h_t·ê_{t+1}
        per_step = -F.logsigmoid(positive_logit) - F.logsigmoid(-negative_logit)
        return (per_step * valid).sum() / valid.sum().clamp(min=1)

    @staticmethod
    def _batch_behaviours(sequence: torch.Tensor, nexts: torch.Tensor) -> torch.Tensor:
        """For every (B, L-1) slot of ``nexts``, the item of a behaviour drawn uniformly among
        the batch's real behaviours of another item (the released code redraws until the
        item differs); 0 where the batch has no other item."""
        pool = sequence[sequence != 0].sort().values  # (N,) every behaviour of the batch
        nexts = nexts.contiguous()
        first = torch.searchsorted(pool, nexts)  # where the slot's own item starts in pool
        own = torch.searchsorted(pool, nexts, right=True) - first  # its occurrences
        others = pool.numel() - own  # (B, L-1)
        r = (torch.rand(nexts.shape, device=nexts.device) * others).long()
        index = torch.where(r < first, r, r + own)  # skip the own item's block
        drawn = pool[index.clamp(max=max(pool.numel() - 1, 0))] if pool.numel() else index
        return torch.where(others > 0, drawn, torch.zeros_like(nexts))

    def loss(self, output: Output, batch: Batch) -> torch.Tensor:
        """L_target + α L_aux (L_aux after a training forward only); L_target = mean BCE over
        the (B, C) candidate rows."""
        scores = output.scores
        target = F.binary_cross_entropy_with_logits(scores, batch["label"].to(scores.dtype))
        terms = output.terms
        return target if terms is None else target + self.params.aux_weight * terms.aux

    def regularization(self) -> torch.Tensor:
        """1/2 ||θ||² over the dense parameters (the loop multiplies by ``train.l2``)."""
        return dense_l2(self)
