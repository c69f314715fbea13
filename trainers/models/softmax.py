"""Full-softmax cross-entropy over every item, in blocks of positions.

DualRec (Eq. 13-14) and BERT4Rec (Eq. 7 and its Cloze loss) score a position against all
items 1..N. Held at once, a batch's logits are (positions x N): 256 sequences x 50 positions
x 10^5 items is 5 GB of float32, twice over with its gradient. Here the positions are cut
into blocks of at most ``max_logits`` logits (max_logits // N rows, at least one); each
block's logits are computed, reduced to one loss per position and dropped, and recomputed
in the backward (``torch.utils.checkpoint``), so at most one block lives at a time. The
result and its gradients are the same as the unchunked computation (tests check it); the
price is one more (rows x d) @ (d x N) product per block in the backward. A batch whose
logits fit in one block is one ordinary block, kept for the backward as usual.

Shapes: M positions, d state size, N items.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _block_loss(states: torch.Tensor, targets: torch.Tensor, items: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    """-log softmax(states · itemsᵀ + bias)[target] per row: (m, d), (m,) -> (m,)."""
    logits = states @ items.T  # (m, N)
    if bias is not None:
        logits = logits + bias
    return F.cross_entropy(logits, targets, reduction="none")


def full_softmax_ce(states: torch.Tensor, targets: torch.Tensor, items: torch.Tensor,
                    max_logits: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of each position's target among all items.

    Args:
        states: (M, d) output states.
        targets: (M,) item ids in 1..N.
        items: (N, d) output rows of items 1..N (row k-1 is item k; the padding row is not a
            class).
        max_logits: the most logits one block holds (4 bytes each, as many again for their
            gradient).
        bias: (N,) per-item output bias, or None.
    Returns:
        (M,) loss per position.
    Raises:
        ValueError: a target outside 1..N.
    """
    if targets.numel() and (int(targets.min()) < 1 or int(targets.max()) > items.shape[0]):
        raise ValueError(f"targets must be item ids in 1..{items.shape[0]}")
    classes = targets - 1  # item k is class k-1
    chunk = max(1, max_logits // items.shape[0])  # positions per block
    if states.shape[0] <= chunk:
        return _block_loss(states, classes, items, bias)
    return torch.cat([
        checkpoint(_block_loss, states[lo:lo + chunk], classes[lo:lo + chunk], items, bias,
                   use_reentrant=False)
        for lo in range(0, states.shape[0], chunk)])
