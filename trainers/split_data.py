"""Everything one process needs to batch a model's splits, loaded from the index folder.

Each Ray worker (and evaluation) loads the index with ``trainers/set_arrays.py`` into dense
tensors on its device, then wraps them in a :class:`~trainers.batches.BatchBuilder` that
builds only the fields the model declares.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conf.schema import PipelineConfig
from spark_jobs.manifest import join
from trainers import set_arrays
from trainers.batches import BatchBuilder, NegativeSampler, PositiveSequences, Samples
from trainers.registry import DataSizes


@dataclass
class SplitData:
    """Loaded index tensors for some splits.

    Attributes:
        builder: batch builder over the (co-)interaction sets / sequences.
        splits: split name -> Samples.
        sizes: the sizes a model is built for.
        num_slices: T.
    """

    builder: BatchBuilder
    splits: dict[str, Samples]
    sizes: DataSizes
    num_slices: int
    index_uri: str

    def negative_sampler(self, cfg: PipelineConfig) -> NegativeSampler | None:
        """The per-epoch resampler of training negatives, or None when they stay fixed.

        Popularity weights follow the index stage (spark_jobs/negatives.py): 1 + positive
        interactions of the item in slices 0..target of the train split (add-one keeps every
        item possible).
        """
        if not cfg.index.resample_train_negatives:
            return None
        train = self.splits["train"]
        weights = None
        if cfg.index.negative_sampling == "popularity":
            target = int(train.slice.max())
            counts = torch.as_tensor(set_arrays.load_popularity(self.index_uri))  # (I+1, T)
            weights = 1.0 + counts[:, :target + 1].sum(1).double()
        return NegativeSampler(train, self.sizes.num_items, weights)


def load_split_data(cfg: PipelineConfig, inputs: frozenset[str], splits: tuple[str, ...],
                    device: torch.device | str) -> SplitData:
    """Load the index arrays the model's ``inputs`` need, and the named splits.

    Args:
        cfg: composed config (paths.work_dir, index.sequence_max_len).
        inputs: the model's declared inputs.
        splits: e.g. ("train", "valid").
        device: where the tensors live (the worker's device).

    Returns:
        SplitData with tensors on ``device``.

    Raises:
        FileNotFoundError: no index output (run ``seqrec index`` first).
        ValueError: a split is empty.
    """
    index_uri = join(cfg.paths.work_dir, "index")
    manifest = set_arrays.index_manifest(index_uri)
    num_slices = manifest["num_slices"]
    user_sets = item_sets = sequences = None
    if "slice_sets" in inputs:  # (U+1, T, 2, S), (I+1, T, 2, S): GBs at full scale
        arrays = set_arrays.load_set_arrays(index_uri)
        user_sets = torch.as_tensor(arrays.users, device=device)
        item_sets = torch.as_tensor(arrays.items, device=device)
    if "sequence" in inputs:
        seq = set_arrays.load_sequences(index_uri)
        sequences = PositiveSequences.from_csr(seq.offsets, seq.items, seq.slice, seq.label,
                                               num_slices, device)
    builder = BatchBuilder(inputs, user_sets, item_sets, num_slices, sequences,
                           cfg.index.sequence_max_len)
    loaded = {}
    for split in splits:
        samples = Samples.from_arrays(set_arrays.load_samples(index_uri, split), device)
        if len(samples) == 0:
            raise ValueError(f"split {split!r} of {index_uri} has no rows")
        loaded[split] = samples
    sizes = DataSizes(num_users=manifest["num_users"], num_items=manifest["num_items"],
                      history_slices=num_slices - 1, set_size=manifest["set_size"],
                      sequence_len=cfg.index.sequence_max_len)
    return SplitData(builder, loaded, sizes, num_slices, index_uri)
