"""Everything one process needs to batch a model's splits, loaded from the index folder.

Each Ray worker (and evaluation) loads the index with ``store/index.py`` into dense
tensors on its device, then wraps them in a :class:`~trainers.batches.BatchBuilder` that
builds only the fields the model declares. The index manifest's ``protocol`` decides how a
sample's history is read (trainers/batches.py) and which inputs can be fed at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from conf.schema import PipelineConfig
from store.files import join
from store import index as index_store
from trainers.batches import (PROTOCOL_INPUTS, BatchBuilder, EventSequences, ItemDistribution,
                              NegativeSampler, SliceSequences, Samples, random_windows, target_keys,
                              unfed_inputs)
from trainers.registry import DataSizes


@dataclass
class SplitData:
    """Loaded index tensors for some splits.

    Attributes:
        builder: batch builder over the (co-)interaction sets / sequences.
        splits: split name -> Samples.
        sizes: the sizes a model is built for.
        num_slices: T (0 for protocols without slices).
        index_uri: the index folder.
        protocol: the index's protocol.
        events: every user's events (``leave_one_out``, ``feedback``; None under ``slices``).
        train_counts: (I+1,) positive events per item in the users' train parts
            (``store.index.train_popularity``; None under ``slices``, whose popularity is per
            slice in the index).
    """

    builder: BatchBuilder
    splits: dict[str, Samples]
    sizes: DataSizes
    num_slices: int
    index_uri: str
    protocol: str
    events: EventSequences | None
    train_counts: torch.Tensor | None
    device: torch.device | str

    def popularity(self) -> torch.Tensor:
        """Item popularity: (I+1, T) positives per slice (``slices``) or (I+1,) positives in
        the train part (other protocols), on the data's device."""
        if self.protocol == "slices":
            return torch.as_tensor(index_store.load_popularity(self.index_uri), device=self.device)
        return self.train_counts

    def train_epoch_samples(self, cfg: PipelineConfig, epoch: int,
                            sampler: NegativeSampler | None) -> Samples:
        """The train split as epoch ``epoch`` sees it: each row's window moved at random
        (``train.window: random``, leave_one_out), then its sampled negatives redrawn
        (``sampler``, see :meth:`negative_sampler`); both seeded by ``train.seed`` and the
        epoch, so every worker and a resumed run draw the same."""
        train = self.splits["train"]
        if cfg.train.window == "random":
            train = random_windows(train, self.events, self.sizes.sequence_len, epoch,
                                   cfg.train.seed)
        if sampler is not None:
            train = sampler.resample(train, epoch, cfg.train.seed)
        return train

    def negative_sampler(self, cfg: PipelineConfig) -> NegativeSampler | None:
        """The per-epoch resampler of training negatives, or None when they stay fixed.

        Rejection set by protocol (:class:`NegativeSampler`): the user's target-slice items
        (``slices``), every item the user ever touched (``leave_one_out``, ``feedback``);
        the draws follow :func:`negative_weights`.
        """
        if not cfg.index.resample_train_negatives:
            return None
        train = self.splits["train"]
        num_items = self.sizes.num_items
        if self.protocol == "slices":
            forbidden = target_keys(train, num_items)
        else:
            forbidden = self.events.touched_keys(num_items)
        weights = negative_weights(cfg, self.protocol, self.index_uri, self.num_slices,
                                   self.train_counts)
        return NegativeSampler(forbidden, num_items, weights)


def negative_weights(cfg: PipelineConfig, protocol: str, index_uri: str, num_slices: int,
                     train_counts: torch.Tensor | None) -> torch.Tensor | None:
    """The weights sampled negatives are drawn by, as the index stage drew its candidates:
    ``slices`` as ``store.index.slice_negative_weights`` for the last training target slice
    T-3; other protocols None (``index.negative_sampling: uniform``) or 1 + positive events
    of the item in the users' train parts (``train_counts``; add-one keeps every item
    possible). Returns (I+1,) float64 or None.
    """
    sampling = cfg.index.negative_sampling
    if protocol == "slices":
        weights = index_store.slice_negative_weights(
            index_store.load_popularity(index_uri), sampling, num_slices - 3,
            cfg.index.active_min_slices)
        return None if weights is None else torch.as_tensor(weights)
    if sampling != "popularity":
        return None
    return 1.0 + train_counts.double()


def declared_inputs(model_cls: type) -> tuple[frozenset[str], frozenset[str]]:
    """A model class's (required ``inputs``, ``optional_inputs``); a model that declares no
    ``optional_inputs`` (trainers/registry.py) has none."""
    return frozenset(model_cls.inputs), frozenset(getattr(model_cls, "optional_inputs", ()))


def fed_inputs(protocol: str, inputs: frozenset[str], optional: frozenset[str]
               ) -> frozenset[str]:
    """The fields to build: the model's required ``inputs`` plus the ``optional`` ones the
    protocol feeds.

    Raises:
        ValueError: the protocol cannot feed a required input (naming it and the protocol).
    """
    unfed = unfed_inputs(protocol, inputs)
    if unfed:
        raise ValueError(f"the {protocol!r} index cannot feed inputs {sorted(unfed)} (it feeds "
                         f"{sorted(PROTOCOL_INPUTS[protocol])}): pick a model that reads "
                         "what this protocol provides")
    return frozenset(inputs) | (frozenset(optional) & PROTOCOL_INPUTS[protocol])


def load_split_data(cfg: PipelineConfig, inputs: frozenset[str], splits: tuple[str, ...],
                    device: torch.device | str, optional: frozenset[str] = frozenset()
                    ) -> SplitData:
    """Load the index arrays the model's inputs need, and the named splits.

    Args:
        cfg: composed config (paths.work_dir, index.sequence_max_len).
        inputs: the model's declared (required) inputs.
        splits: e.g. ("train", "valid").
        device: where the tensors live (the worker's device).
        optional: the model's ``optional_inputs``; built where the protocol feeds them.

    Returns:
        SplitData with tensors on ``device``.

    Raises:
        FileNotFoundError: no index output (run ``seqrec index`` first).
        ValueError: the protocol cannot feed ``inputs``, a split is empty, a row's cut
            lies outside its user's sequence, or ``train.window: random`` on an index that
            is not leave_one_out.
    """
    index_uri = join(cfg.paths.work_dir, "index")
    manifest = index_store.index_manifest(index_uri)
    protocol = index_store.protocol_of(manifest)
    if cfg.train.window == "random" and protocol != "leave_one_out":
        raise ValueError(f"train.window: random moves leave_one_out training windows, but "
                         f"{index_uri} was built with protocol {protocol!r} (its train rows "
                         "are already every target it has): set train.window: last")
    build = fed_inputs(protocol, inputs, optional)
    num_slices = manifest["num_slices"] if protocol == "slices" else 0
    # valid and test cuts bound the train parts of the protocols without slices
    needed = set(splits) | ({"valid", "test"} if protocol != "slices" else set())
    arrays = {split: index_store.load_samples(index_uri, split) for split in sorted(needed)}
    user_sets = item_sets = history = events = train_counts = None
    if "slice_sets" in build:  # (U+1, T, 2, S), (I+1, T, 2, S): GBs at full scale
        sets = index_store.load_set_arrays(index_uri)
        user_sets = torch.as_tensor(sets.users, device=device)
        item_sets = torch.as_tensor(sets.items, device=device)
    if protocol == "slices":
        if "sequence" in build:
            seq = index_store.load_sequences(index_uri)
            if seq.slice is None:
                raise ValueError(f"{index_uri}/sequences has no slice lists, which a slices "
                                 "index needs: rebuild it with `seqrec index`")
            # labelled models read every event (real negatives too), others the positives
            history = SliceSequences.from_csr(seq.offsets, seq.items, seq.slice, seq.label,
                                              num_slices, "sequence_label" not in build, device)
    else:  # histories, rejection sets and popularity all come from the event sequences
        seq = index_store.load_sequences(index_uri)
        history = events = EventSequences.from_csr(seq.offsets, seq.items, seq.label, device)
        train_counts = torch.as_tensor(index_store.train_popularity(
            seq, np.concatenate([arrays[s]["user"] for s in ("valid", "test")]),
            np.concatenate([arrays[s]["cut"] for s in ("valid", "test")]),
            manifest["num_items"]), device=device)
    next_negatives = None
    if "next_negatives" in build:  # the candidates' distribution, for history positions too
        next_negatives = ItemDistribution(
            manifest["num_items"],
            negative_weights(cfg, protocol, index_uri, num_slices, train_counts), device)
    builder = BatchBuilder(protocol, build, user_sets, item_sets, num_slices, history,
                           cfg.index.sequence_max_len, next_negatives)
    loaded = {}
    for split in splits:
        samples = Samples.from_arrays(arrays[split], device)
        if len(samples) == 0:
            raise ValueError(f"split {split!r} of {index_uri} has no rows")
        if events is not None:
            events.check_cuts(samples, split)
        loaded[split] = samples
    sizes = DataSizes(num_users=manifest["num_users"], num_items=manifest["num_items"],
                      history_slices=max(num_slices - 1, 0),
                      set_size=manifest["set_size"] if protocol == "slices" else 0,
                      sequence_len=cfg.index.sequence_max_len)
    return SplitData(builder, loaded, sizes, num_slices, index_uri, protocol, events,
                     train_counts, device)
