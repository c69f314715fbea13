"""FMLP-Rec (Zhou et al., WWW 2022, "Filter-enhanced MLP is All You Need for Sequential
Recommendation"): learnable frequency-domain filters instead of self-attention.

Implemented (Section 3 of the paper):
  * Embedding layer: E = Drop(LN(M[s] + P)), learned absolute positions P over the slots of
    the left-padded window (the newest item at slot L-1).
  * Filter layer: X = FFT(F) along the sequence, X̃ = W ⊙ X with a learnable complex filter
    W ∈ C^{(L/2+1) x d}, F̃ = IFFT(X̃); output LN(F + Drop(F̃)) (orthonormal FFTs and
    W ~ 0.02·N(0, 1), as the released code).
  * Point-wise FFN: LN(F̃ + Drop(GELU(F̃W1 + b1)W2 + b2)); ``num_layers`` filter blocks.
  * Prediction and loss: r = M_i · F_t at the last slot, binary cross-entropy of the next
    item against one sampled negative (the paper's pairwise loss).

The filter is global (a circular convolution over all L slots), so a state at slot t
depends on every item of its input, later ones included. Training must not let a target be
visible (PROTOCOLS §5), so this model trains as the released code does: one prefix per
prediction, scored at its last slot. In a training forward every history position t whose
next item is real gets the prefix sequence[:t+1], left-padded to L, scoring sequence[t+1]
against a uniformly sampled negative (never the target), besides the full sequence scoring
the candidate list; the loss averages over all of them. Padding rows are zeroed after every
layer (the code lets position embeddings of padding slots into the filter); so an output
depends on the real items and their slots only.

``filter: causal`` (a setting beyond the paper; PROTOCOLS §5 allows either) builds the
stack from causal filters (below), so the state at slot t already sees slots <= t only:
the sequence is then read once and every position t scores its next item against the
batch's ``next_negatives`` (trainers/models/next_item.py, as SASRec), instead of one
L-slot prefix per position. Same targets, less compute (a prefix runs its per-slot layers
on its own items and its last block at one slot, :meth:`FilterStack.last_states`); a padding
slot's state is zero here, so no empty-history state is trained (as the prefixes, which
start at the first item).

:class:`FilterLayer` with ``causal=True`` is the causal variant the dual FMLP-Rec uses
(trainers/models/dual_fmlp.py): a linear convolution with a causal kernel of L taps, the
kernel being the inverse FFT of a learnable 2L-point frequency response W cut to its
first L taps, so the state at t only sees slots <= t. It is applied as a product with the
kernel's lower-triangular Toeplitz matrix (exactly causal; L = 50 makes that cheap).

``params.loss``: ``bce`` (the paper's) by default; ``ce``, ``sampled_softmax`` or ``gbce``
train the same predictions (each prefix's or causal position's next item, and the
candidate row's target) with that objective instead (trainers/models/objectives.py).

Shapes: B batch, C candidates, L sequence length, d embedding, M prefixes.
"""

from __future__ import annotations

from typing import ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainers.embedding import RowSparseEmbedding
from trainers.models.item_scoring import score_rows
from trainers.models.next_item import HistoryParams, HistoryScores, bce_with_history, \
    history_pairs, prefix_rows
from trainers.models.objectives import (ObjectiveParams, Predictions, draw_negatives,
                                        objective_loss, sequence_predictions)
from trainers.models.transformer import LAYER_NORM_EPS, init_weights
from trainers.registry import Batch, DataSizes, ModelParams, Output, register

FILTER_INIT_SCALE = 0.02  # the released code's complex_weight = randn(...) * 0.02


class FilterLayer(nn.Module):
    """Learnable filter along the sequence with residual, dropout and LayerNorm.

    Args:
        L: sequence length; d: model size; dropout: on the filtered signal;
        causal: False = FMLP-Rec's global filter; True = causal linear convolution.
    """

    def __init__(self, L: int, d: int, dropout: float, causal: bool):
        super().__init__()
        self.L, self.causal = L, causal
        points = 2 * L if causal else L  # causal: zero-padded to 2L, so nothing wraps around
        self.weight = nn.Parameter(torch.randn(points // 2 + 1, d, 2) * FILTER_INIT_SCALE)
        self.dropout = nn.Dropout(dropout)
        self.ln = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def _check_length(self, L: int) -> None:
        if L != self.L and not (self.causal and L < self.L):
            raise ValueError(f"the filter is built for length {self.L}, got {L}")

    def taps(self, L: int) -> torch.Tensor:
        """The filter's impulse response h over L' = ``L`` slots, (L', d): y_t = Σ_k h_k
        x_{t-k}, circular over the L slots for the global filter (IFFT(W), scaled by 1/√L for
        the orthonormal transforms), the first L' taps of the causal kernel for the causal one.

        The global filter needs L' = L. The causal one also takes the newest L' < L slots
        alone: with the older slots zero, they are exactly what it computes there.

        Raises:
            ValueError: another length.
        """
        self._check_length(L)
        w = torch.view_as_complex(self.weight)  # (points/2+1, d)
        if self.causal:
            return torch.fft.irfft(w, n=2 * self.L, dim=0, norm="ortho")[:L]
        return torch.fft.irfft(w, n=L, dim=0, norm="ortho") / L ** 0.5

    def filtered(self, x: torch.Tensor) -> torch.Tensor:
        """The filter alone: x (B, L', d) -> (B, L', d) (L' as :meth:`taps` allows)."""
        L = x.shape[1]
        if not self.causal:  # X̃ = W ⊙ FFT(F), F̃ = IFFT(X̃)
            self._check_length(L)
            spectrum = torch.fft.rfft(x, dim=1, norm="ortho") * torch.view_as_complex(self.weight)
            return torch.fft.irfft(spectrum, n=L, dim=1, norm="ortho")
        kernel = self.taps(L)  # (L', d)
        # y_t = Σ_{k<=t} kernel_k x_{t-k} as a lower-triangular Toeplitz product: slots after t
        # contribute exactly 0 (an FFT product is causal only up to roundoff).
        slot = torch.arange(L, device=x.device)
        lag = slot[:, None] - slot[None, :]  # (L, L): t - s
        toeplitz = kernel[lag.clamp(min=0)] * (lag >= 0).unsqueeze(-1)  # (L, L, d)
        return torch.einsum("tsd,bsd->btd", toeplitz, x)

    def filtered_last(self, x: torch.Tensor) -> torch.Tensor:
        """The filter's output at the last slot alone: x (B, L', d) -> (B, d), equal to
        ``filtered(x)[:, -1]``: y_{L'-1} = Σ_s h_{L'-1-s} x_s (one product with the taps
        instead of two FFTs of x)."""
        return (x * self.taps(x.shape[1]).flip(0)).sum(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x + self.dropout(self.filtered(x)))


class FilterBlock(nn.Module):
    """Filter layer, then the point-wise FFN with residual and LayerNorm."""

    def __init__(self, L: int, d: int, ffn_dim: int, dropout: float, causal: bool):
        super().__init__()
        self.filter = FilterLayer(L, d, dropout, causal)
        self.ffn = nn.Sequential(nn.Linear(d, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, d))
        self.dropout = nn.Dropout(dropout)
        self.ln = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, d), mask (B, L, 1) float -> (B, L, d), 0 on padding."""
        x = self.filter(x) * mask
        return self.ln(x + self.dropout(self.ffn(x))) * mask


class FilterStack(nn.Module):
    """Embedding layer (positions, LN, dropout) and the filter blocks.

    Args:
        L: sequence length; d: model size; num_layers; ffn_dim; dropout; causal.
    """

    def __init__(self, L: int, d: int, num_layers: int, ffn_dim: int, dropout: float,
                 causal: bool):
        super().__init__()
        self.position = nn.Embedding(L, d)  # P over the window's slots
        self.ln = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(FilterBlock(L, d, ffn_dim, dropout, causal)
                                    for _ in range(num_layers))

    def forward(self, e: torch.Tensor, keep: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """Args: e (B, L', d) item embeddings of the newest L' slots (L' = L for the global
        filter); keep (B, L') bool; flip: run the filters over the reversed sequence (a
        causal filter then sees slots >= t). Returns (B, L', d)."""
        mask = keep.unsqueeze(-1).to(e.dtype)  # (B, L', 1)
        x = self.dropout(self.ln(e + self.position.weight[-e.shape[1]:])) * mask
        if flip:
            x, mask = x.flip(1), mask.flip(1)
        for block in self.blocks:
            x = block(x, mask)
        return x.flip(1) if flip else x

    def last_states(self, e: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``forward(e, keep)[:, -1]`` without the work nothing there reads.

        The per-slot layers (the embedding's LN and dropout, the FFNs, the LNs) run on the
        kept slots alone, packed; the filters see them scattered back into their slots
        (padding 0, as ``forward`` zeroes it); the last block runs at the last slot only
        (:meth:`FilterLayer.filtered_last`). Left-padded prefixes are mostly padding, so
        this is several times cheaper in training. Dropout draws a mask per kept slot
        rather than per slot, so a training forward's randomness differs from ``forward``'s;
        without dropout the two agree.

        Args: e (B, L', d) item embeddings; keep (B, L') bool. Returns (B, d), 0 where the
        last slot is padding.
        """
        B, L, d = e.shape
        slots = keep.nonzero(as_tuple=True)  # (N,) rows and slots of the kept positions
        x = self.dropout(self.ln(e[slots] + self.position.weight[-L:][slots[1]]))  # (N, d)
        for block in self.blocks[:-1]:
            full = x.new_zeros(B, L, d).index_put(slots, x)  # (B, L', d), padding 0
            x = block.filter.ln(x + block.filter.dropout(block.filter.filtered(full)[slots]))
            x = block.ln(x + block.dropout(block.ffn(x)))  # (N, d)
        last = self.blocks[-1]
        full = x.new_zeros(B, L, d).index_put(slots, x)
        h = last.filter.ln(full[:, -1] + last.filter.dropout(last.filter.filtered_last(full)))
        return last.ln(h + last.dropout(last.ffn(h))) * keep[:, -1:].to(h.dtype)  # (B, d)


class PrefixScores(NamedTuple):
    """A global-filter training forward's prefix predictions, the ``terms`` its loss reads."""

    pairs: torch.Tensor  # (M, 2) logits of [next item, negative] at each prefix's last slot


class FMLPRecParams(ObjectiveParams, HistoryParams):
    embed_dim: int = Field(gt=0)  # d (paper: 64)
    embed_init_std: float = Field(gt=0)  # item rows start as N(0, std²) (code: 0.02)
    num_layers: int = Field(ge=1)  # filter blocks (paper: 2)
    ffn_dim: int = Field(gt=0)  # FFN inner size (code: 4d)
    dropout: float = Field(ge=0.0, lt=1.0)  # paper: 0.5
    filter: Literal["global", "causal"]  # paper: global, trained by prefixes; causal: one pass
    loss: Literal["bce", "ce", "sampled_softmax", "gbce"]  # bce: the paper's (objectives.py)


@register("fmlp")
class FMLPRec(nn.Module):
    Params: ClassVar[type[ModelParams]] = FMLPRecParams
    inputs: ClassVar[frozenset[str]] = frozenset({"sequence"})
    optional_inputs: ClassVar[frozenset[str]] = frozenset({"next_negatives"})

    def __init__(self, params: FMLPRecParams, sizes: DataSizes):
        super().__init__()
        self.params = params
        self.item = RowSparseEmbedding(sizes.num_items + 1, params.embed_dim,
                                       params.embed_init_std)  # M: input and output
        self.stack = FilterStack(sizes.sequence_len, params.embed_dim, params.num_layers,
                                 params.ffn_dim, params.dropout,
                                 causal=params.filter == "causal")
        # a causal filter takes the newest L' < L slots alone; the global one needs all L
        self.variable_length = params.filter == "causal"
        init_weights(self.stack, params.embed_init_std)

    def forward(self, batch: Batch) -> Output:
        """Args: batch with ``sequence`` (B, L) and ``items`` (B, C). Returns (B, C) logits.

        In training (grad enabled) it also scores every history position's next item against
        a sampled negative (``next_negatives`` when fed, else uniform), the output's
        ``terms``: from one L-slot prefix per position (global filter,
        :class:`PrefixScores`) or from the causal states of the sequence itself
        (:class:`HistoryScores`).
        """
        sequence, items = batch["sequence"], batch["items"]
        p = self.params  # bce without history targets: the candidate rows alone, as in eval
        if not (self.training and torch.is_grad_enabled()) or (
                p.loss == "bce" and not p.history_targets):
            e, cand = self.item.lookup([sequence, items])
            h = self.stack.last_states(e, sequence != 0)  # (B, d)
            return Output(score_rows(h, cand))
        num_items = self.item.weight.shape[0] - 1
        targets, _, negatives, valid = history_pairs(sequence, num_items, None,
                                                     batch.get("next_negatives"),
                                                     enabled=p.history_targets)
        valid = valid & (sequence[:, :-1] != 0)  # a real state at t (none on padding)
        if p.loss != "bce":
            return self._objective_forward(batch, targets, valid)
        if p.filter == "causal":
            e, cand, pairs = self.item.lookup([sequence, items,
                                               torch.stack([targets, negatives], -1)])
            states = self.stack(e, sequence != 0)  # (B, L, d): slot t sees slots <= t
            history = score_rows(states[:, :-1], pairs)  # (B, L-1, 2)
            return Output(score_rows(states[:, -1], cand),
                          HistoryScores(history, torch.ones_like(history[..., 0]), valid))
        B = sequence.shape[0]
        prefixes, b, t = prefix_rows(sequence, valid)  # (M, L)
        pairs = torch.stack([targets[b, t], negatives[b, t]], 1)  # (M, 2) [next, negative]
        inputs = torch.cat([sequence, prefixes])  # (B + M, L)
        e, cand, pairs = self.item.lookup([inputs, items, pairs])
        h = self.stack.last_states(e, inputs != 0)  # (B + M, d): each input's last slot
        prefix_scores = PrefixScores(score_rows(h[B:], pairs))  # (M, 2) [next, negative]
        return Output(score_rows(h[:B], cand), prefix_scores)

    def _objective_forward(self, batch: Batch, targets: torch.Tensor, valid: torch.Tensor
                           ) -> Output:
        """A training forward for another objective than ``bce`` (objectives.py): the same
        predictions (the candidate row's target, each valid position's next item, from the
        causal states or from one prefix per position), as :class:`Predictions`.

        Args: batch; targets, valid: (B, L-1) next items and the positions that predict them.
        """
        sequence, items = batch["sequence"], batch["items"]
        num_items = self.item.weight.shape[0] - 1
        negatives = draw_negatives(self.params.loss, num_items, self.params.loss_negatives,
                                   sequence.device, self.params.embed_dim,
                                   self.params.softmax_max_logits)
        if self.params.filter == "causal":
            e, cand = self.item.lookup([sequence, items])
            states = self.stack(e, sequence != 0)  # (B, L, d): slot t sees slots <= t
            every = torch.ones_like(targets, dtype=torch.float32)  # no labels: all positive
            predicted = sequence_predictions(states, targets, every, valid, items[:, 0],
                                             batch["label"][:, 0])
            return Output(score_rows(states[:, -1], cand), Predictions(*predicted, negatives))
        B = sequence.shape[0]
        prefixes, b, t = prefix_rows(sequence, valid)  # (M, L)
        inputs = torch.cat([sequence, prefixes])  # (B + M, L)
        e, cand = self.item.lookup([inputs, items])
        h = self.stack.last_states(e, inputs != 0)  # (B + M, d): each input's last slot
        liked = batch["label"][:, 0] > 0  # a disliked target is no softmax target
        predicted = (torch.cat([h[:B][liked], h[B:]]),  # (M', d), (M',)
                     torch.cat([items[liked, 0], targets[b, t]]))
        return Output(score_rows(h[:B], cand), Predictions(*predicted, negatives))

    def encode_users(self, batch: Batch) -> torch.Tensor:
        """The state at the last slot, which scores the candidates: (B, d)."""
        sequence = batch["sequence"]
        return self.stack.last_states(self.item(sequence), sequence != 0)

    def item_table(self) -> tuple[torch.Tensor, None]:
        """M, input and output: (I+1, d); no item bias."""
        return self.item.weight, None

    def loss(self, output: Output, batch: Batch) -> torch.Tensor:
        """Binary cross-entropy per prediction: a candidate row (scores (B, C), positive at
        column 0) sums over its candidates, a prefix (or causal position) over [next item,
        negative]; the mean is over the B rows and, after a training forward, the M prefixes
        (the valid positions) alike. With ``params.loss`` another objective: its mean over
        the same predictions (trainers/models/objectives.py; a training forward's output
        only).

        Raises:
            RuntimeError: another objective than ``bce`` without a training forward.
        """
        if self.params.loss != "bce":
            p = self.params
            return objective_loss(p.loss, output.terms, lambda ids: (self.item(ids), None),
                                  self.item.weight.shape[0] - 1, p.softmax_max_logits, p.gbce_t)
        scores, terms = output
        if isinstance(terms, HistoryScores):  # filter: causal
            return bce_with_history(scores, batch["label"], terms)
        rows = F.binary_cross_entropy_with_logits(
            scores, batch["label"].to(scores.dtype), reduction="none").sum(1)  # (B,)
        if terms is None:
            return rows.mean()
        prefixes = terms.pairs  # (M, 2)
        labels = torch.zeros_like(prefixes)
        labels[:, 0] = 1.0
        per_prefix = F.binary_cross_entropy_with_logits(prefixes, labels, reduction="none")
        return torch.cat([rows, per_prefix.sum(1)]).mean()

    def regularization(self) -> torch.Tensor:
        """1/2 ||θ||² over the dense parameters (the loop multiplies by λ)."""
        return sum(p.pow(2).sum() for p in self.parameters() if p.requires_grad) / 2
