"""The one model interface and the registry that maps names to model classes.

A model is an ``nn.Module`` that
  * declares ``Params`` (a pydantic model: its hyper-parameters, validated from
    ``model.params`` in the config; unknown keys are errors),
  * declares ``inputs``: which batch fields it needs, so the data layer builds only those
    (``"slice_sets"``: time-sliced (co-)interaction sets; ``"sequence"``: the user's item
    history before the target; ``"sequence_label"``: that history's feedback labels), and
    may declare ``optional_inputs``: fields it reads when the protocol feeds them (e.g.
    GRU4Rec's label embedding under ``feedback``). Each protocol feeds (its ``feeds``,
    trainers/protocols.py): ``slices`` {slice_sets, sequence, sequence_label},
    ``leave_one_out`` {sequence}, ``feedback`` {sequence, sequence_label}, and all three
    ``next_negatives`` (sampled per batch); a model needing more is refused (one clear
    error; ``compare`` skips it and says why),
  * may set ``variable_length = True`` (class or instance attribute) when its outputs do not
    depend on how many padding slots precede a history: its batches are then cut to the
    longest history in the batch (plus the empty-history slot), and ``train.batch_order:
    by_length`` makes that cut short for most batches (trainers/batches.py),
  * is built as ``Model(params, sizes)`` and never sees Spark, Ray or dataset objects,
  * maps a batch to an :class:`Output` with ``forward(batch)``: ``scores`` (B, C) candidate
    logits, and ``terms``, the training-only values its loss needs (a small NamedTuple of
    the model's own, or None); nothing is kept on ``self`` between ``forward`` and ``loss``,
  * owns its data term with ``loss(output, batch) -> scalar``, and
  * declares its regularisation term ``regularization() -> scalar`` (1/2·||dense
    parameters||², or what its paper regularises), which the loop adds times ``train.l2``.
Next-item models (:class:`NextItemRecommender`: SASRec, GRU4Rec, Caser, BERT4Rec, FMLP-Rec,
the dual models, SVD++) also split their scores into a user state and an item table,
``encode_users(batch) -> (B, d)`` and ``item_table() -> ((I+1, d), (I+1,) bias or None)``, so
an objective or an all-items scorer is written once (trainers/models/item_scoring.py).

Batch fields (built by trainers/batches.py; B batch, C candidates, H history slices,
S set size, L sequence length; all ids int64, 0 = padding / empty):
  user           (B,)            user_idx
  items          (B, C)          candidate item_idx, the target at column 0
  label          (B, C) float    column 0: the target's label (its feedback under
                                 ``feedback``, so 0.0 for a disliked target; 1.0 elsewhere);
                                 sampled / real negatives 0.0
  user_sets      (B, H, 2, S)    [:, t, 0] = G_t(u) items, [:, t, 1] = G_t(v|u) users
  item_sets      (B, C, H, 2, S) [..., t, 0] = G_t(v) users, [..., t, 1] = G_t(u|v) items
  sequence       (B, L)          history items, left-padded: ``slices``, the user's last L
                                 events before the target slice (only its positive ones
                                 for a model that reads no ``sequence_label``);
                                 ``leave_one_out`` and ``feedback``, the user's last L
                                 events before the target
  sequence_label (B, L)          1 positive, 0 negative feedback of each history event; 0 on
                                 padding too (padding is ``sequence == 0``)
  next_negatives (B, L-1)        a sampled item per history position (the negative of its
                                 next item), drawn as the index's sampled candidates
For a ``variable_length`` model L is the batch's own: min(L, longest history + 1).
History slice h of H is absolute slice ``target - H + h``; slices before 0 are all-empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

Batch = dict[str, torch.Tensor]
# The inputs a model may declare (each protocol feeds a subset: trainers/protocols.py).
INPUTS = frozenset({"slice_sets", "sequence", "sequence_label", "next_negatives"})


def variable_length(model: nn.Module) -> bool:
    """Whether ``model`` takes histories cut to the batch's longest (``variable_length``)."""
    return bool(getattr(model, "variable_length", False))


@dataclass(frozen=True)
class DataSizes:
    """Dataset sizes a model is built for (from the index manifest)."""

    num_users: int  # user_idx in 1..num_users; 0 is padding
    num_items: int  # item_idx in 1..num_items; 0 is padding
    history_slices: int  # H; 0 for protocols without slices (leave_one_out, feedback)
    set_size: int  # S; 0 for protocols without slices
    sequence_len: int  # L


class ModelParams(BaseModel):
    """Base for every model's ``Params``: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Output(NamedTuple):
    """What a model's ``forward`` returns."""

    scores: torch.Tensor  # (B, C) candidate logits, the target at column 0
    terms: Any = None  # the model's training-only values for ``loss`` (a NamedTuple), or None


class Recommender(Protocol):
    """The interface the training loop, evaluation and the served model use."""

    Params: ClassVar[type[ModelParams]]
    inputs: ClassVar[frozenset[str]]
    optional_inputs: ClassVar[frozenset[str]]

    def __call__(self, batch: Batch) -> Output: ...

    def loss(self, output: Output, batch: Batch) -> torch.Tensor: ...

    def regularization(self) -> torch.Tensor: ...


@runtime_checkable
class NextItemRecommender(Recommender, Protocol):
    """A model whose candidate scores are ``state · item row (+ item bias)``."""

    def encode_users(self, batch: Batch) -> torch.Tensor: ...  # (B, d)

    def item_table(self) -> tuple[torch.Tensor, torch.Tensor | None]: ...  # (I+1, d), (I+1,)


_REGISTRY: dict[str, type[nn.Module]] = {}


def register(name: str):
    """Class decorator: make a model buildable by ``model.name`` in the config."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        for attr in ("Params", "inputs", "loss", "regularization"):
            if not hasattr(cls, attr):
                raise TypeError(f"model {cls.__name__} lacks {attr!r}")
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    # Importing the model modules runs their @register decorators. Listed here, once, so the
    # registry is complete wherever it is used (CLI, Ray workers, tests).
    import trainers.models.score  # noqa: F401
    import trainers.models.svdpp  # noqa: F401
    import trainers.models.delf  # noqa: F401
    import trainers.models.gru4rec  # noqa: F401
    import trainers.models.caser  # noqa: F401
    import trainers.models.sasrec  # noqa: F401
    import trainers.models.rrn  # noqa: F401
    import trainers.models.deems  # noqa: F401
    import trainers.models.dualrec  # noqa: F401
    import trainers.models.dual_gru4rec  # noqa: F401
    import trainers.models.dual_fmlp  # noqa: F401
    import trainers.models.fmlp  # noqa: F401
    import trainers.models.bert4rec  # noqa: F401
    import trainers.models.dfar  # noqa: F401  (dfar, tha4rec)
    import trainers.models.din  # noqa: F401
    import trainers.models.dien  # noqa: F401
    import trainers.models.dfn  # noqa: F401
    import trainers.models.feedrec  # noqa: F401


def model_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def model_class(name: str) -> type[nn.Module]:
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_model(name: str, params: dict, sizes: DataSizes) -> Recommender:
    """Validate ``params`` against the model's ``Params`` and build it.

    Raises:
        KeyError: unknown model name.
        ValueError: bad hyper-parameters, naming the key (``model.params.<key>``).
    """
    cls = model_class(name)
    try:
        parsed = cls.Params.model_validate(params)
    except ValidationError as exc:
        msgs = [f"model.params.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ValueError(f"invalid params for model {name!r}:\n  " + "\n  ".join(msgs)) from None
    return cls(parsed, sizes)
