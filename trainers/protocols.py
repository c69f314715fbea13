"""The evaluation protocols on the training side: one object per protocol.

The index manifest names the protocol its builder followed (``spark_jobs/index.py``'s table
has one Spark builder per protocol; the names are defined once, ``conf.schema.PROTOCOLS``).
Everything the trainers do differently under a protocol lives in its object here:

  * the batch inputs its index can feed (a model needing more is refused, naming both),
  * how a sample's history is read (``slices``: the user's events before the target slice;
    ``leave_one_out`` and ``feedback``: the user's events before the target's position) and
    which splits bound the users' train parts,
  * the negatives: the weights sampled negatives are drawn by, and the items a per-epoch
    redraw must reject,
  * the popularity reference,
  * the metrics (an accumulator, a random scorer's floor), the validation metric that
    selects checkpoints and champions, the test columns of ``compare`` and the curves and
    chart metrics.

A fourth protocol is one class here (registered in :data:`PROTOCOLS`) plus one Spark
builder behind ``spark_jobs/index.py``. docs/architecture.md, "Evaluation protocols", has
the definitions and ../shared/PROTOCOLS.md the papers' sources.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from conf.schema import FEEDBACK, LEAVE_ONE_OUT, SLICES, PipelineConfig
from store import index as index_store
from store.files import join
from trainers.batches import EventSequences, Samples, SliceSequences, target_keys
from trainers.metrics import (FeedbackAccumulator, RankingAccumulator, feedback_random_floor,
                              ranking_random_floor)
from trainers.popularity import popularity_scores, train_popularity_scores

# Candidate-list metrics of the ranking protocols, the papers' first.
RANKING_METRICS = ("mrr", "hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "auc", "gauc")
# test metric -> the per-user column (the accumulator's ``per_user``) compare's tests pair
RANKING_PAIRED: dict[str, str] = {m: m for m in RANKING_METRICS if m not in ("auc", "gauc")}
PopularityScorer = Callable[[dict, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Histories:
    """Where a protocol's histories come from, loaded once per process.

    Attributes:
        sequences: the batch builder's source of ``sequence`` (None when no model input
            reads it).
        events: every user's events, CSR (``leave_one_out``, ``feedback``: rejection sets,
            random windows and full-ranking masks read them); None under ``slices``.
        train_counts: (I+1,) positive events per item in the users' train parts
            (``store.index.train_popularity``); None under ``slices``, whose popularity is
            per slice in the index.
    """

    sequences: SliceSequences | EventSequences | None
    events: EventSequences | None
    train_counts: torch.Tensor | None


class EvaluationProtocol(ABC):
    """What differs by protocol on the training side (subclasses set the class attributes)."""

    name: ClassVar[str]
    feeds: ClassVar[frozenset[str]]  # the batch inputs its index can feed
    sliced: ClassVar[bool]  # samples' ``cut`` is a target slice (else a sequence position)
    selection_metric: ClassVar[str]  # picks checkpoints, early stop and the champion
    test_metrics: ClassVar[tuple[str, ...]]  # compare's test columns
    chart_metrics: ClassVar[tuple[str, ...]]  # compare's chart and the training curves
    # test metric -> per-user column that compare's paired tests over users read (issue 26)
    paired_metrics: ClassVar[dict[str, str]]
    pooled: ClassVar[bool] = False  # metrics need every score at once (no rank histogram)
    random_reference: ClassVar[bool] = False  # evaluation reports a random floor; compare a row

    def __repr__(self) -> str:
        return f"<protocol {self.name}>"

    # ------------------------------------------------------------------ inputs

    def unfed(self, inputs: frozenset[str]) -> frozenset[str]:
        """The required ``inputs`` this protocol cannot feed (empty: the model runs)."""
        return frozenset(inputs) - self.feeds

    def fed(self, inputs: frozenset[str], optional: frozenset[str] = frozenset()
            ) -> frozenset[str]:
        """The fields to build: the required ``inputs`` plus the ``optional`` ones fed here.

        Raises:
            ValueError: a required input this protocol cannot feed (naming it and the protocol).
        """
        unfed = self.unfed(inputs)
        if unfed:
            raise ValueError(f"the {self.name!r} protocol cannot feed inputs {sorted(unfed)}; "
                             f"it feeds {sorted(self.feeds)}: pick a model that reads what "
                             "this protocol provides")
        return frozenset(inputs) | (frozenset(optional) & self.feeds)

    def check_train_window(self, window: str, index_uri: str) -> None:
        """``train.window: random`` moves leave_one_out training windows only.

        Raises:
            ValueError: ``random`` under another protocol.
        """
        if window == "random":
            raise ValueError(f"train.window: random moves {LEAVE_ONE_OUT} training windows, "
                             f"but {index_uri} was built with protocol {self.name!r} (its "
                             "train rows are already every target it has): set train.window: "
                             "last")

    # ------------------------------------------------------------------ data

    def num_slices(self, manifest: dict) -> int:
        """T of the index (0 for protocols without slices)."""
        return 0

    def set_size(self, manifest: dict) -> int:
        """S of the index's sets (0 for protocols without slices)."""
        return 0

    def splits_to_load(self, splits: tuple[str, ...]) -> set[str]:
        """The splits to read for ``splits`` (some protocols need more to bound train parts)."""
        return set(splits)

    @abstractmethod
    def load_histories(self, index_uri: str, manifest: dict, build: frozenset[str],
                       arrays: dict[str, dict[str, np.ndarray]], device) -> Histories:
        """The histories of the model inputs ``build``, from the index and the loaded
        splits' ``arrays`` (``store.index.load_samples``)."""

    def negative_weights(self, cfg: PipelineConfig, index_uri: str, num_slices: int,
                         train_counts: torch.Tensor | None) -> torch.Tensor | None:
        """(I+1,) float64 weights sampled negatives are drawn by, as the index stage drew
        its candidates; None for uniform."""
        if cfg.index.negative_sampling != "popularity":
            return None
        return 1.0 + train_counts.double()  # add-one keeps every item possible

    def rejection_keys(self, train: Samples, events: EventSequences | None,
                       num_items: int) -> torch.Tensor:
        """Sorted ``user * (I + 1) + item`` keys a per-epoch negative may never be: every
        item the user ever touched."""
        return events.touched_keys(num_items)

    def popularity(self, index_uri: str, train_counts: torch.Tensor | None,
                   device) -> torch.Tensor:
        """The popularity counts the reference scores by: (I+1,) train-part positives."""
        return train_counts

    def popularity_scorer(self, counts: torch.Tensor) -> PopularityScorer:
        """``(batch, cut, candidates) -> (B, C)`` scores of the popularity reference."""
        return lambda batch, cut, candidates: train_popularity_scores(counts, candidates)

    # ------------------------------------------------------------------ metrics

    def new_accumulator(self) -> RankingAccumulator | FeedbackAccumulator:
        """A fresh accumulator of this protocol's candidate-list metrics."""
        return RankingAccumulator()

    def random_floor(self, candidates: int) -> dict[str, float]:
        """A random scorer's expected metrics on lists of ``candidates`` items."""
        return ranking_random_floor(candidates)


class Slices(EvaluationProtocol):
    """SCoRe (Section 4.1.1): time slices; train predicts slice T-3, valid T-2, test T-1."""

    name = SLICES
    feeds = frozenset({"slice_sets", "sequence", "sequence_label", "next_negatives"})
    sliced = True
    selection_metric = "mrr"
    test_metrics = RANKING_METRICS
    chart_metrics = ("mrr", "ndcg@10", "hr@10")
    paired_metrics = RANKING_PAIRED

    def num_slices(self, manifest: dict) -> int:
        return manifest["num_slices"]

    def set_size(self, manifest: dict) -> int:
        return manifest["set_size"]

    def load_histories(self, index_uri, manifest, build, arrays, device) -> Histories:
        """The user's events before slice ``cut``: every one with its label for a model that
        reads ``sequence_label`` (real negatives reach its history), else the positive ones."""
        if "sequence" not in build:
            return Histories(None, None, None)
        seq = index_store.load_sequences(index_uri)
        if seq.slice is None:
            raise ValueError(f"{index_uri}/sequences has no slice lists, which a slices index "
                             "needs: rebuild it with `seqrec index`")
        history = SliceSequences.from_csr(seq.offsets, seq.items, seq.slice, seq.label,
                                          manifest["num_slices"], "sequence_label" not in build,
                                          device)
        return Histories(history, None, None)

    def negative_weights(self, cfg, index_uri, num_slices, train_counts):
        """``store.index.slice_negative_weights`` for the last training target slice T-3."""
        weights = index_store.slice_negative_weights(
            index_store.load_popularity(index_uri), cfg.index.negative_sampling,
            num_slices - 3, cfg.index.active_min_slices)
        return None if weights is None else torch.as_tensor(weights)

    def rejection_keys(self, train, events, num_items):
        """The user's target-slice positives (the index stage's rejection rule)."""
        return target_keys(train, num_items)

    def popularity(self, index_uri, train_counts, device):
        """(I+1, T) positives per item and slice."""
        return torch.as_tensor(index_store.load_popularity(index_uri), device=device)

    def popularity_scorer(self, counts):
        """The item's positives in the slice before the target."""
        return lambda batch, cut, candidates: popularity_scores(counts, candidates, cut)


class _EventHistories(EvaluationProtocol):
    """Protocols whose ``cut`` is the target's position in the user's event sequence."""

    sliced = False

    def splits_to_load(self, splits):
        return set(splits) | {"valid", "test"}  # their cuts bound the users' train parts

    def load_histories(self, index_uri, manifest, build, arrays, device) -> Histories:
        """The user's events ``[cut - L, cut)``; popularity from events before the earliest
        valid or test cut of each user, so no evaluation target is counted."""
        seq = index_store.load_sequences(index_uri)
        events = EventSequences.from_csr(seq.offsets, seq.items, seq.label, device)
        counts = index_store.train_popularity(
            seq, np.concatenate([arrays[s]["user"] for s in ("valid", "test")]),
            np.concatenate([arrays[s]["cut"] for s in ("valid", "test")]), manifest["num_items"])
        return Histories(events, events, torch.as_tensor(counts, device=device))


class LeaveOneOut(_EventHistories):
    """FMLP-Rec / S3-Rec / DualRec: train target n-3, valid n-2, test n-1; 99 negatives."""

    name = LEAVE_ONE_OUT
    feeds = frozenset({"sequence", "next_negatives"})
    selection_metric = "mrr"
    test_metrics = RANKING_METRICS
    chart_metrics = ("mrr", "ndcg@10", "hr@10")
    paired_metrics = RANKING_PAIRED

    def check_train_window(self, window, index_uri):
        """Random windows (DualRec's code) are this protocol's."""


class Feedback(_EventHistories):
    """DFAR (Section 4.1.3): (item, label) histories; groups of the real next interaction
    with its label and sampled items; AUC, GAUC, MRR@10, NDCG@10 (PROTOCOLS.md §5)."""

    name = FEEDBACK
    feeds = frozenset({"sequence", "sequence_label", "next_negatives"})
    selection_metric = "auc"  # as the DFAR code (PROTOCOLS.md §5)
    test_metrics = ("auc", "gauc", "mrr@10", "ndcg@10", "auc_pos")
    chart_metrics = ("auc", "gauc", "mrr@10", "ndcg@10")
    # pooled AUC has no per-user value: GAUC pairs each user's AUC, MRR@10 each user's mean
    paired_metrics: ClassVar[dict[str, str]] = {"gauc": "auc", "mrr@10": "mrr@10"}
    pooled = True
    random_reference = True

    def new_accumulator(self):
        return FeedbackAccumulator()

    def random_floor(self, candidates):
        return feedback_random_floor(candidates)


PROTOCOLS: dict[str, EvaluationProtocol] = {p.name: p for p in (Slices(), LeaveOneOut(),
                                                                   Feedback())}


def protocol_named(name: str) -> EvaluationProtocol:
    """The protocol object of ``name``.

    Raises:
        ValueError: an unknown protocol name.
    """
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; expected one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def protocol_at(work_dir: str) -> EvaluationProtocol:
    """The protocol of the index under ``<work_dir>/index`` (from its manifest)."""
    return protocol_named(index_store.protocol_of(index_store.index_manifest(
        join(work_dir, "index"))))
