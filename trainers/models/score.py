"""SCoRe: Sequential Collaborative Recommender (Qin et al., SIGIR 2021), Section 3.

For every (user u, candidate item v) pair and each of the H history slices t:
  cross-neighbor co-attention (Eq. 10-16) between u's interaction set G_t(u) and v's
  co-interaction set G_t(u|v) (items), and between v's interaction set G_t(v) and u's
  co-interaction set G_t(v|u) (users) -> aggregated u_t, v_t (Eq. 17-18);
then a user-side and an item-side GRU over t (Eq. 19-20), interactive attention over
slices (Eq. 21-23) and an MLP head (Eq. 24) give one logit per pair.

Shape legend: B batch (users), C candidates per user, P = B*C pairs, H history slices,
S set size, d embedding size, h GRU hidden size. User-side tensors keep a size-1 C axis and
broadcast against pair-side tensors, so nothing user-side is copied C times before it must be.

Ids: one table shared by users and items (Section 4.1.1). Row 0 is the unified "empty"
embedding, users are rows 1..M, item v is row M + v. An all-empty set (the user or item was
inactive in slice t) is represented by that empty embedding alone: its first slot is
treated as valid, so it takes all of the set's attention weight. Other 0 slots are padding
and get no weight (-inf before the softmax). The softmax therefore never sees an all -inf
matrix and nothing becomes NaN. Slices are not masked over t: an empty slice (including
the all-empty slices before slice 0) is a real GRU step fed with the empty embedding, as
the paper prescribes. The γ vectors enter R (Eq. 21) slot by slot, so, as in the paper,
scores depend on the order of a set's slots, not only on its members.

Ablations (Table 4, ``params.ablation``): RIA uses the last GRU states instead of the
interactive attention; RCA replaces co-attention with sum pooling (γ = 1 on valid slots,
which also feeds R); user_only / item_only feed only that side's r to the head.

Training objective (Eq. 25): ``loss`` returns the data term, the mean binary cross-entropy
over all B*C candidates (the mean, not the paper's sum, so λ does not scale with the batch
size, as in the authors' code). ``regularization`` returns 1/2 (||Θ||² + ||Φ||²) over all
dense parameters; the training loop adds ``train.l2 * regularization()``. The embedding
rows' part of the L2 term is applied by the row-sparse optimizer as weight decay λ on the
rows a batch touches (trainers/embedding.py), which has the same gradient λ·w for those rows.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainers.embedding import RowSparseEmbedding
from trainers.registry import Batch, DataSizes, ModelParams, Output, register


class ScoreParams(ModelParams):
    """SCoRe hyper-parameters (``model.params``; defaults in conf/models/score.yaml)."""

    embed_dim: int = Field(gt=0)  # d
    embed_init_std: float = Field(gt=0)  # embedding rows start as N(0, std²)
    hidden_dim: int = Field(gt=0)  # h, both GRUs
    attention_hidden: list[int] = Field(min_length=2, max_length=2)  # R: 3 layers (Eq. 21)
    head_hidden: list[int] = Field(min_length=1)  # f (Eq. 24)
    ablation: Literal["none", "RIA", "RCA", "user_only", "item_only"]  # Table 4


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class CoAttention(nn.Module):
    """Cross-neighbor co-attention of one pair of sets (Eq. 10-16), all slices at once.

    ``w^T [x_i, y_j, target] + b = w_x^T x_i + w_y^T y_j + w_t^T target + b``, so the S x S
    relatedness matrix is built from two S-vectors and a scalar: O(S·d), not O(S²·d).
    """

    def __init__(self, d: int) -> None:
        super().__init__()
        self.d = d
        self.w = nn.Linear(3 * d, 1)  # w1 (Eq. 10) or w2 (Eq. 12), with b

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, y: torch.Tensor,
                y_mask: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attentive vectors over x's and y's set slots.

        Args:
            x, y: (B, 1 or C, H, S, d) set embeddings.
            x_mask, y_mask: (B, 1 or C, H, S) 0 for valid slots, -inf for padding.
            target: (B, 1 or C, d) the target item (Eq. 10) or user (Eq. 12).
        Returns:
            gamma_x, gamma_y: (B, C, H, S) row and column sums of the softmaxed matrix.
        """
        d, S = self.d, x.shape[-2]
        w = self.w.weight[0]  # (3d,)
        a = x @ w[:d] + (target @ w[2 * d :] + self.w.bias)[..., None, None]  # (B, C, H, S)
        b = y @ w[d : 2 * d]  # (B, ., H, S)
        relatedness = F.relu(a[..., :, None] + b[..., None, :])  # Eq. 10: (B, C, H, S, S)
        relatedness = relatedness + (x_mask[..., :, None] + y_mask[..., None, :])
        # Eq. 11: one softmax over the whole S x S matrix
        coatt = relatedness.flatten(-2).softmax(dim=-1).unflatten(-1, (S, S))
        # Eq. 13-16: summing over j weights x's slots, summing over i weights y's slots
        return coatt.sum(dim=-1), coatt.sum(dim=-2)


class InteractiveAttention(nn.Module):
    """β_t = softmax_t R([h_u_t, h_v_t, γ's of t], [u, v]) (Eq. 21-22), R a 3-layer ReLU MLP.

    R's first layer is split into a per-slice and a per-pair part, so the [u, v] part is
    computed once per pair and broadcast over the H slices.
    """

    def __init__(self, slice_dim: int, target_dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.slice_in = nn.Linear(slice_dim, hidden[0])
        self.target_in = nn.Linear(target_dim, hidden[0], bias=False)
        self.rest = mlp([*hidden, 1])

    def forward(self, slices: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(P, H, slice_dim), (P, target_dim) -> β (P, H, 1), summing to 1 over H."""
        hidden = F.relu(self.slice_in(slices) + self.target_in(target)[:, None])
        return self.rest(hidden).softmax(dim=1)


def pool(emb: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Weighted sum of a set, ``E^T γ`` (Eq. 17-18): (B, ., H, S, d), (B, C, H, S) -> (B, C, H, d).

    Broadcast multiply-and-sum: measured ~2x faster on CPU than einsum/matmul, whose many
    tiny (S x d) matrix products dominate.
    """
    return (gamma.unsqueeze(-1) * emb).sum(dim=-2)


@register("score")
class SCoRe(nn.Module):
    """SCoRe over time-sliced (co-)interaction sets; see the module docstring."""

    Params: ClassVar[type[ModelParams]] = ScoreParams
    inputs: ClassVar[frozenset[str]] = frozenset({"slice_sets"})

    def __init__(self, params: ScoreParams, sizes: DataSizes) -> None:
        super().__init__()
        d, h, S = params.embed_dim, params.hidden_dim, sizes.set_size
        self.params, self.sizes = params, sizes
        self.embedding = RowSparseEmbedding(1 + sizes.num_users + sizes.num_items, d,
                                            params.embed_init_std)
        self.item_coatt = CoAttention(d)  # w1, Eq. 10
        self.user_coatt = CoAttention(d)  # w2, Eq. 12
        self.user_gru = nn.GRU(2 * d, h, batch_first=True)  # Eq. 20
        self.item_gru = nn.GRU(2 * d, h, batch_first=True)
        self.relation = InteractiveAttention(2 * h + 4 * S, 2 * d, params.attention_hidden)
        sides = 1 if params.ablation in ("user_only", "item_only") else 2
        self.head = mlp([sides * h + 2 * d, *params.head_hidden, 1])  # f, Eq. 24

    def forward(self, batch: Batch) -> Output:
        """Logits (B, C) for every (user, candidate) pair of the batch.

        Args:
            batch: user (B,), items (B, C), user_sets (B, H, 2, S), item_sets
                (B, C, H, 2, S); fields as documented in trainers/registry.py.
        Returns:
            Output with (B, C) logits.
        Raises:
            ValueError: a field's shape does not match (B, C, H, S) or an id is out of range.
        """
        user, items = batch["user"], batch["items"]
        user_sets, item_sets = batch["user_sets"], batch["item_sets"]
        B, C = items.shape
        H, S = user_sets.shape[1], user_sets.shape[-1]
        self._check(user, items, user_sets, item_sets)

        # One lookup for every id of the batch (deduped once across all the tensors).
        # Item ids move past the users (padding 0 stays row 0): G_t(u) and G_t(u|v) hold items.
        # Each set is its own part: slicing one (B, C, H, 2, S, d) lookup instead makes the
        # backward zero-fill and copy that whole tensor once per slice (benchmarks/score.py,
        # B=1024: 2-7% of a one-thread step; within noise on two threads).
        M = self.sizes.num_users
        shift = torch.tensor([[M], [0]], device=items.device)  # (2, 1): [items, users] sets
        user_rows = user_sets + (user_sets > 0) * shift  # (B, H, 2, S)
        item_rows = item_sets + (item_sets > 0) * shift.flip(0)  # (B, C, H, 2, S)
        ids = [user, items + M * (items > 0), user_rows[:, :, 0], user_rows[:, :, 1],
               item_rows[:, :, :, 0], item_rows[:, :, :, 1]]
        u, v, U1, U2, V1, V2 = self.embedding.lookup(ids)
        u = u.unsqueeze(1)  # (B, 1, d)
        U1, U2 = U1.unsqueeze(1), U2.unsqueeze(1)  # (B, 1, H, S, d): G_t(u) items, G_t(v|u) users
        # V1, V2: (B, C, H, S, d): G_t(v) users, G_t(u|v) items
        user_valid = _valid_slots(user_rows).unsqueeze(1)  # (B, 1, H, 2, S)
        item_valid = _valid_slots(item_rows)  # (B, C, H, 2, S)
        if self.params.ablation == "RCA":  # sum pooling instead of co-attention
            weights = (user_valid.float().expand(B, C, H, 2, S), item_valid.float())
            (g_u1, g_u2), (g_v1, g_v2) = (w.unbind(dim=3) for w in weights)
        else:  # Eq. 10-16: items G_t(u) x G_t(u|v) given v; users G_t(v) x G_t(v|u) given u
            zero = u.new_zeros(())
            user_mask = torch.where(user_valid, zero, float("-inf"))  # (B, 1, H, 2, S)
            item_mask = torch.where(item_valid, zero, float("-inf"))  # (B, C, H, 2, S)
            g_u1, g_v2 = self.item_coatt(U1, user_mask[:, :, :, 0], V2, item_mask[:, :, :, 1], v)
            g_v1, g_u2 = self.user_coatt(V1, item_mask[:, :, :, 0], U2, user_mask[:, :, :, 1], u)
        u_t = torch.cat([pool(U1, g_u1), pool(U2, g_u2)], dim=-1)  # Eq. 17: (B, C, H, 2d)
        v_t = torch.cat([pool(V1, g_v1), pool(V2, g_v2)], dim=-1)  # Eq. 18

        # Eq. 19-20: one GRU per side over the H slices of every pair.
        h_u, _ = self.user_gru(u_t.reshape(B * C, H, -1))  # (P, H, h)
        h_v, _ = self.item_gru(v_t.reshape(B * C, H, -1))
        targets = torch.cat([u.expand(B, C, -1), v], dim=-1).view(B * C, -1)  # (P, 2d): [u, v]
        if self.params.ablation == "RIA":  # last hidden state instead of interactive attention
            r_u, r_v = h_u[:, -1], h_v[:, -1]  # (P, h)
        else:  # Eq. 21-23: β_t from both sides' states, the slice's γ's, and u, v
            slices = torch.cat([h_u, h_v, torch.cat([g_u1, g_v2, g_u2, g_v1], dim=-1)
                                .view(B * C, H, 4 * S)], dim=-1)  # (P, H, 2h + 4S)
            beta = self.relation(slices, targets)  # (P, H, 1)
            r_u, r_v = (beta * h_u).sum(dim=1), (beta * h_v).sum(dim=1)  # (P, h)
        sides = {"user_only": [r_u], "item_only": [r_v]}.get(self.params.ablation, [r_u, r_v])
        logits = self.head(torch.cat([*sides, targets], dim=-1))  # Eq. 24: (P, 1)
        return Output(logits.view(B, C))

    def loss(self, output: Output, batch: Batch) -> torch.Tensor:
        """Data term of Eq. 25: mean binary cross-entropy over all (B, C) candidates."""
        scores = output.scores
        return F.binary_cross_entropy_with_logits(scores, batch["label"].to(scores.dtype))

    def regularization(self) -> torch.Tensor:
        """1/2 (||Θ||² + ||Φ||²) over dense parameters (Eq. 25; the loop multiplies by λ)."""
        return sum(p.pow(2).sum() for p in self.parameters() if p.requires_grad) / 2

    def _check(self, user, items, user_sets, item_sets) -> None:
        """Shapes against the model's H and S, ids against num_users / num_items."""
        B, C = items.shape
        H, S = self.sizes.history_slices, self.sizes.set_size
        expected = {"user": (B,), "user_sets": (B, H, 2, S), "item_sets": (B, C, H, 2, S)}
        for name, tensor in (("user", user), ("user_sets", user_sets), ("item_sets", item_sets)):
            if tuple(tensor.shape) != expected[name]:
                raise ValueError(f"batch[{name!r}] has shape {tuple(tensor.shape)}, "
                                 f"expected {expected[name]} (B, C, H, S = {B}, {C}, {H}, {S})")
        # One pass per tensor: the largest id of each kind of set ([items, users] for users).
        user_kinds = user_sets.amax(dim=(0, 1, 3))  # (2,)
        item_kinds = item_sets.amax(dim=(0, 1, 2, 4))  # (2,): [users, items]
        users_max = max(int(user.max()), int(user_kinds[1]), int(item_kinds[0]))
        items_max = max(int(items.max()), int(user_kinds[0]), int(item_kinds[1]))
        if users_max > self.sizes.num_users or items_max > self.sizes.num_items:
            raise ValueError(f"ids out of range: user id {users_max} (num_users "
                             f"{self.sizes.num_users}), item id {items_max} (num_items "
                             f"{self.sizes.num_items})")


def _valid_slots(ids: torch.Tensor) -> torch.Tensor:
    """(..., S) ids -> (..., S) bool: non-padding slots, or slot 0 of an all-empty set."""
    valid = ids != 0
    empty = ~valid.any(dim=-1)  # the set stands for the unified "empty" embedding
    valid[..., 0] |= empty
    return valid
