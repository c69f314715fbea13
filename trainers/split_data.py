"""Everything one process needs to batch a model's splits, loaded from the index folder.

Each Ray worker (and evaluation) loads the index with ``store/index.py`` into dense
tensors on its device, then wraps them in a :class:`~trainers.batches.BatchBuilder` that
builds only the fields the model declares. The index manifest's ``protocol`` decides how a
sample's history is read and which inputs can be fed at all (trainers/protocols.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conf.schema import PipelineConfig
from store import index as index_store
from store.files import join
from trainers.batches import (BatchBuilder, EventSequences, ItemDistribution, NegativeSampler,
                              Samples, random_windows)
from trainers.protocols import EvaluationProtocol, protocol_named
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
        protocol: the index's protocol (trainers/protocols.py).
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
    protocol: EvaluationProtocol
    events: EventSequences | None
    train_counts: torch.Tensor | None
    device: torch.device | str

    def popularity(self) -> torch.Tensor:
        """The popularity reference's counts, on the data's device (see the protocol's)."""
        return self.protocol.popularity(self.index_uri, self.train_counts, self.device)

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
        """The per-epoch resampler of training negatives, or None when they stay fixed; it
        rejects the protocol's ``rejection_keys`` and draws by its ``negative_weights``."""
        if not cfg.index.resample_train_negatives:
            return None
        num_items = self.sizes.num_items
        forbidden = self.protocol.rejection_keys(self.splits["train"], self.events, num_items)
        weights = self.protocol.negative_weights(cfg, self.index_uri, self.num_slices,
                                                 self.train_counts)
        return NegativeSampler(forbidden, num_items, weights)


def declared_inputs(model_cls: type) -> tuple[frozenset[str], frozenset[str]]:
    """A model class's (required ``inputs``, ``optional_inputs``); a model that declares no
    ``optional_inputs`` (trainers/registry.py) has none."""
    return frozenset(model_cls.inputs), frozenset(getattr(model_cls, "optional_inputs", ()))


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
    protocol = protocol_named(index_store.protocol_of(manifest))
    protocol.check_train_window(cfg.train.window, index_uri)
    build = protocol.fed(inputs, optional)
    num_slices = protocol.num_slices(manifest)
    arrays = {split: index_store.load_samples(index_uri, split)
              for split in sorted(protocol.splits_to_load(splits))}
    user_sets = item_sets = None
    if "slice_sets" in build:  # (U+1, T, 2, S), (I+1, T, 2, S): GBs at full scale
        sets = index_store.load_set_arrays(index_uri)
        user_sets = torch.as_tensor(sets.users, device=device)
        item_sets = torch.as_tensor(sets.items, device=device)
    histories = protocol.load_histories(index_uri, manifest, build, arrays, device)
    next_negatives = None
    if "next_negatives" in build:  # the candidates' distribution, for history positions too
        next_negatives = ItemDistribution(
            manifest["num_items"],
            protocol.negative_weights(cfg, index_uri, num_slices, histories.train_counts),
            device)
    builder = BatchBuilder(protocol, build, user_sets, item_sets, num_slices,
                           histories.sequences, cfg.index.sequence_max_len, next_negatives)
    loaded = {}
    for split in splits:
        samples = Samples.from_arrays(arrays[split], device)
        if len(samples) == 0:
            raise ValueError(f"split {split!r} of {index_uri} has no rows")
        if histories.events is not None:
            histories.events.check_cuts(samples, split)
        loaded[split] = samples
    sizes = DataSizes(num_users=manifest["num_users"], num_items=manifest["num_items"],
                      history_slices=max(num_slices - 1, 0),
                      set_size=protocol.set_size(manifest),
                      sequence_len=cfg.index.sequence_max_len)
    return SplitData(builder, loaded, sizes, num_slices, index_uri, protocol, histories.events,
                     histories.train_counts, device)
