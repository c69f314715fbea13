"""Row-sparse embedding tables and the optimizer every model trains with.

At Taobao scale the shared id table has ~5.15M rows. Dense ``torch.optim.Adam`` reads and
writes the whole table (and its two moment tables) every step, and ``nn.Embedding``'s dense
gradient zero-fills it; a batch touches only ~10^5 rows. Here

  * :class:`RowSparseEmbedding` dedupes a batch's ids (``torch.unique``), copies only those
    rows into a small leaf tensor that requires grad, and looks the batch up in that leaf;
  * :class:`RowAdam` is lazy Adam: first/second moments and the step count are kept per row
    and a row's bias correction uses its own step count, so only touched rows are read and
    written. Weight decay ``λ·w`` (the gradient of ``λ/2·||w||²``, as in
    ``torch.optim.Adam(weight_decay=λ)``) is added to touched rows only: the usual lazy
    regularisation. Eq. 25's ``λ/2·||Θ||²`` over the whole table would move every row every
    step, i.e. make every step dense again;
  * :func:`build_optimizer` pairs ``torch.optim.Adam`` for dense parameters with
    :class:`RowAdam` for the tables, behind one optimizer-like object, so the training loop
    does not need to know which model has which kind of parameter.

When a row is touched every step, :class:`RowAdam` performs the same floating-point
operations as ``torch.optim.Adam`` (tests check bitwise equality).

Under ``torch.distributed`` with more than one process, :meth:`RowAdam.step` all-gathers the
touched rows and their gradients from every process and applies the same averaged update
everywhere (DDP's mean-of-gradients convention), so the replicated tables stay identical
without all-reducing the full table. DDP itself ignores the table: its weight does not
require grad.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class RowSparseEmbedding(nn.Module):
    """Embedding table whose training lookups produce gradients for touched rows only.

    Args:
        num_rows: table size (ids 0..num_rows-1).
        dim: embedding size d.
        init_std: rows start as N(0, init_std²).
    """

    def __init__(self, num_rows: int, dim: int, init_std: float) -> None:
        super().__init__()
        # A Parameter (saved in state_dict, moved by .to()) that autograd and DDP skip:
        # RowAdam writes it in place.
        self.weight = nn.Parameter(torch.randn(num_rows, dim) * init_std, requires_grad=False)
        self.touched: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows (U,), leaf (U, d))
        self.dense = False  # :meth:`make_dense`: an ordinary table for dense Adam

    def make_dense(self) -> None:
        """Train this table as a dense parameter (``train.embedding_updates: dense``): its
        weight gets a full gradient every step, and dense Adam moves every row by its
        moments, the rows a batch does not touch included."""
        self.weight.requires_grad_(True)
        self.dense = True

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Look up ids of any shape (...,) -> (..., d)."""
        return self.lookup([ids])[0]

    def lookup(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Look up several id tensors at once, deduping across all of them.

        In training mode with grad enabled, the union of their rows is gathered once into a
        leaf (recorded for the optimizer) and each part indexes that leaf; looking parts up
        separately would gather shared rows twice, and one concatenated lookup followed by a
        split would copy every gradient once more in the backward.

        Args:
            parts: id tensors of any shapes (...,).
        Returns:
            one (..., d) tensor per part.
        """
        if self.dense or not (self.training and torch.is_grad_enabled()):
            return [F.embedding(ids, self.weight) for ids in parts]
        rows, inverse = torch.unique(torch.cat([p.reshape(-1) for p in parts]),
                                     return_inverse=True)  # (U,), (N,)
        leaf = self.weight.index_select(0, rows).requires_grad_()  # (U, d)
        self.touched.append((rows, leaf))
        # index_select's backward is an index_add_ into the (U, d) leaf gradient: measured
        # faster on CPU than F.embedding's backward or a sort + sparse-matrix product.
        out = []
        for part, index in zip(parts, inverse.split([p.numel() for p in parts])):
            out.append(leaf.index_select(0, index).view(*part.shape, -1))
        return out


class RowAdam:
    """Lazy Adam over the touched rows of :class:`RowSparseEmbedding` tables.

    Args:
        tables: the tables to update.
        lr: learning rate.
        weight_decay: λ; ``λ·w`` is added to a touched row's gradient.
        decoupled: AdamW's decay: a touched row first shrinks by ``1 - lr·decoupled``.
        betas, eps: as in ``torch.optim.Adam``.
    """

    def __init__(self, tables: list[RowSparseEmbedding], lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 decoupled: float = 0.0) -> None:
        self.tables = tables
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.decoupled = decoupled
        self.state = [
            {
                # [first, second] moment per row in one tensor: one gather, one scatter
                "moments": t.weight.new_zeros(t.weight.shape[0], 2, t.weight.shape[1]),
                "step": torch.zeros(t.weight.shape[0], dtype=torch.int64, device=t.weight.device),
            }
            for t in tables
        ]

    def zero_grad(self) -> None:
        for table in self.tables:
            for _, leaf in table.touched:
                leaf.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """Update every row touched since the last step, then forget the touched rows."""
        for table, state in zip(self.tables, self.state):
            touched = [(rows, leaf) for rows, leaf in table.touched if leaf.grad is not None]
            table.touched = []
            if len(touched) == 1 and not _distributed():
                # The usual case: the leaf already holds weight[rows], saving a random gather.
                rows, leaf = touched[0]
                self._update(table.weight, state, rows, leaf.grad, leaf.detach())
                continue
            rows, grad = _merge([(rows, leaf.grad) for rows, leaf in touched], table.weight)
            if _distributed():
                rows, grad = _all_gather_rows(rows, grad)
            if rows.numel():
                self._update(table.weight, state, rows, grad, table.weight.index_select(0, rows))

    def _update(self, weight: torch.Tensor, state: dict, rows: torch.Tensor,
                grad: torch.Tensor, param: torch.Tensor) -> None:
        """Adam on rows (U,) with gradients (U, d); ``param`` = weight[rows], updated in place."""
        # Same operations, in the same order, as torch.optim.Adam's single-tensor path; only
        # the bias corrections are per row (each row's own step count).
        beta1, beta2 = self.betas
        if self.decoupled:
            param.mul_(1 - self.lr * self.decoupled)
        if self.weight_decay:
            grad = grad.add(param, alpha=self.weight_decay)
        step = state["step"].index_add_(0, rows, torch.ones_like(rows)).index_select(0, rows)
        moments = state["moments"].index_select(0, rows)  # (U, 2, d)
        exp_avg, exp_avg_sq = moments[:, 0], moments[:, 1]  # views, updated in place
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = step.double()[:, None]  # (U, 1); float64 like Adam's Python scalars
        step_size = (self.lr / (1 - beta1**step)).to(param.dtype)
        bias_correction2_sqrt = ((1 - beta2**step) ** 0.5).to(param.dtype)
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        param += -step_size * exp_avg / denom
        state["moments"].index_copy_(0, rows, moments)
        weight.index_copy_(0, rows, param)

    def state_dict(self) -> dict:
        return {"state": [dict(s) for s in self.state]}

    def load_state_dict(self, state_dict: dict) -> None:
        loaded = state_dict["state"]
        if len(loaded) != len(self.state):
            raise ValueError(f"state for {len(loaded)} tables, optimizer has {len(self.state)}")
        for own, new in zip(self.state, loaded):
            for key, tensor in own.items():
                if new[key].shape != tensor.shape:
                    raise ValueError(f"{key}: saved {tuple(new[key].shape)}, "
                                     f"table {tuple(tensor.shape)}")
                tensor.copy_(new[key])


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _merge(touched: list[tuple[torch.Tensor, torch.Tensor]],
           weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum gradients of rows touched by several forwards (gradient accumulation)."""
    if len(touched) == 1:
        return touched[0]
    if not touched:
        return weight.new_zeros(0, dtype=torch.int64), weight.new_zeros(0, weight.shape[1])
    rows, inverse = torch.unique(torch.cat([r for r, _ in touched]), return_inverse=True)
    grad = weight.new_zeros(rows.numel(), weight.shape[1])
    return rows, grad.index_add_(0, inverse, torch.cat([g for _, g in touched]))


def _all_gather_rows(rows: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's touched rows and gradients, summed per row and averaged over processes."""
    world = dist.get_world_size()
    count = torch.tensor([rows.numel()], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    # all_gather needs equal shapes: pad to the longest, then trim each part.
    pad = longest - rows.numel()
    rows_pad = torch.cat([rows, rows.new_zeros(pad)])
    grad_pad = torch.cat([grad, grad.new_zeros(pad, grad.shape[1])])
    all_rows = [torch.empty_like(rows_pad) for _ in range(world)]
    all_grads = [torch.empty_like(grad_pad) for _ in range(world)]
    dist.all_gather(all_rows, rows_pad)
    dist.all_gather(all_grads, grad_pad)
    sizes = [int(c.item()) for c in counts]
    parts = [(r[:n], g[:n]) for r, g, n in zip(all_rows, all_grads, sizes)]
    rows, grad = _merge(parts, grad)
    return rows, grad / world


class ModelOptimizer:
    """``torch.optim.Adam`` on dense parameters plus :class:`RowAdam` on row-sparse tables."""

    def __init__(self, dense: torch.optim.Adam | None, rows: RowAdam | None) -> None:
        self.dense, self.rows = dense, rows

    def zero_grad(self) -> None:
        for opt in (self.dense, self.rows):
            if opt is not None:
                opt.zero_grad()

    def step(self) -> None:
        for opt in (self.dense, self.rows):
            if opt is not None:
                opt.step()

    @property
    def lr(self) -> float:
        """The learning rate the last step used (both parts share it)."""
        return self.dense.param_groups[0]["lr"] if self.dense is not None else self.rows.lr

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of both parts (lr halving on plateau, trainers/train.py)."""
        if self.dense is not None:
            for group in self.dense.param_groups:
                group["lr"] = lr
        if self.rows is not None:
            self.rows.lr = lr

    def state_dict(self) -> dict:
        return {
            "dense": self.dense.state_dict() if self.dense is not None else None,
            "rows": self.rows.state_dict() if self.rows is not None else None,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        for name, opt in (("dense", self.dense), ("rows", self.rows)):
            if (opt is None) != (state_dict[name] is None):
                raise ValueError(f"optimizer state and model disagree on having {name!r} parts")
            if opt is not None:
                opt.load_state_dict(state_dict[name])


def build_optimizer(model: nn.Module, lr: float, l2: float, weight_decay: float = 0.0,
                    embedding_updates: str = "lazy", weight_decay_mode: str = "l2"
                    ) -> ModelOptimizer:
    """The optimizer for any registered model.

    Dense parameters get Adam with ``weight_decay`` (coupled L2, ``torch.optim.Adam``'s
    ``weight_decay``, as the DualRec / FMLP-Rec code trains; 0 for SCoRe, whose L2 term of
    Eq. 25 is the model's ``regularization()``, which the training loop adds to the loss
    scaled by λ). Row-sparse tables get :class:`RowAdam` with weight decay λ +
    ``weight_decay`` on the touched rows.

    ``weight_decay_mode: decoupled`` (BERT4Rec's optimiser, the AdamW of Loshchilov &
    Hutter) instead shrinks each weight by ``lr · weight_decay`` per step outside Adam's
    moments, and never decays biases and LayerNorm gains (every 1-D parameter), as BERT's
    ``AdamWeightDecayOptimizer``. Coupled to Adam, a decay of 0.01 outweighs gradients of
    1e-5 and drives every weight to zero (issue 23).

    Args:
        model: the model (may be wrapped, e.g. by DDP; submodules are searched).
        lr: learning rate (``train.lr``).
        l2: λ (``train.l2``).
        weight_decay: Adam's L2 on every parameter (``train.weight_decay``).
        embedding_updates: ``lazy`` (:class:`RowAdam` on the touched rows) or ``dense``
            (``train.embedding_updates``): every table becomes a dense parameter of Adam,
            with weight decay λ + ``weight_decay`` on all its rows every step, as the
            papers' own code trains (torch / TF Adam on a whole table).
        weight_decay_mode: ``l2`` (coupled, above) or ``decoupled``
            (``train.weight_decay_mode``).
    Returns:
        an object with ``zero_grad()``, ``step()``, ``state_dict()``, ``load_state_dict()``.
    Raises:
        ValueError: the model has no trainable parameters at all; or λ > 0 for a dense
            table under ``decoupled`` (AdamW has no coupled term).
    """
    tables = [m for m in model.modules() if isinstance(m, RowSparseEmbedding)]
    if embedding_updates == "dense":
        for table in tables:
            table.make_dense()
    dense_tables = [t.weight for t in tables if t.dense]
    tables = [t for t in tables if not t.dense]
    table_ids = {id(w) for w in dense_tables}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in table_ids]
    if not tables and not dense and not dense_tables:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    if weight_decay_mode == "decoupled":
        if dense_tables and l2:
            raise ValueError("train.l2 (coupled) cannot join decoupled weight decay on dense "
                             "tables: set train.l2=0 or train.weight_decay_mode=l2")
        groups = [{"params": [p for p in dense if p.ndim > 1], "weight_decay": weight_decay},
                  {"params": [p for p in dense if p.ndim <= 1], "weight_decay": 0.0},
                  {"params": dense_tables, "weight_decay": weight_decay}]
        groups = [g for g in groups if g["params"]]
        return ModelOptimizer(
            torch.optim.AdamW(groups, lr=lr) if groups else None,
            RowAdam(tables, lr=lr, weight_decay=l2, decoupled=weight_decay) if tables else None)
    groups = [{"params": dense, "weight_decay": weight_decay}] if dense else []
    if dense_tables:
        groups.append({"params": dense_tables, "weight_decay": l2 + weight_decay})
    return ModelOptimizer(
        torch.optim.Adam(groups, lr=lr) if groups else None,
        RowAdam(tables, lr=lr, weight_decay=l2 + weight_decay) if tables else None,
    )
