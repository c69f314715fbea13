"""The index stage's output: its Parquet layout (docs/architecture.md, "Parquet contracts")
and the readers that load its tables into dense numpy arrays with pyarrow (no Spark, no
Python loop over rows), so training gathers batches by fancy indexing.

Shapes (U = num_users, I = num_items from the index manifest, T slices, S set size):
  SetArrays.users  (U+1, T, 2, S) int32   [u, t, 0] = G_t(u) items, [u, t, 1] = G_t(v|u) users
  SetArrays.items  (I+1, T, 2, S) int32   [v, t, 0] = G_t(v) users, [v, t, 1] = G_t(u|v) items
Zeros where a set is empty (the shared "empty slice" id 0); row 0 is padding. Taobao scale:
~1M x 9 x 2 x 10 int32 = 0.7 GB for users and 4.2M items = 3 GB.

Sequences come back in CSR form (``Sequences``): user u's interactions, in time order, are
positions ``offsets[u]:offsets[u+1]`` of the flat ``items``/``ts``/``label`` arrays (and
``slice`` under the ``slices`` protocol); a dense (U+1, L) array would waste memory on the
long tail and fix L at load time.

The index manifest's ``protocol`` (docs/architecture.md, "Evaluation protocols") says how the
samples' ``cut`` reads: a target slice (``slices``; a manifest without the key is a slices
index) or the target's position in the user's sequence (``leave_one_out``, ``feedback``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from conf.schema import LEGACY_PROTOCOL, PROTOCOLS
from store.files import filesystem, join
from store.manifest import read_manifest

SPLITS = ("train", "valid", "test")
SAMPLE_COLUMNS = ("user", "cut", "candidates", "real_negatives", "target_label")


@dataclass(frozen=True)
class SetArrays:
    users: np.ndarray  # (U+1, T, 2, S) int32
    items: np.ndarray  # (I+1, T, 2, S) int32


@dataclass(frozen=True)
class Sequences:
    offsets: np.ndarray  # (U+2,) int64; user u's events are [offsets[u], offsets[u+1])
    items: np.ndarray  # (E,) int32
    ts: np.ndarray  # (E,) int64, UTC seconds
    slice: np.ndarray | None  # (E,) int16 under the slices protocol, else None
    label: np.ndarray  # (E,) int8


def index_manifest(index_uri: str) -> dict:
    """The index manifest.

    Raises:
        FileNotFoundError: the index stage has not been published at ``index_uri``.
    """
    manifest = read_manifest(index_uri)
    if manifest is None:
        raise FileNotFoundError(f"no index manifest in {index_uri}: run `seqrec index` first")
    return manifest


def protocol_of(manifest: dict) -> str:
    """The index's evaluation protocol (``slices`` when the manifest predates the key).

    Raises:
        ValueError: an unknown protocol name.
    """
    name = manifest.get("protocol", LEGACY_PROTOCOL)
    if name not in PROTOCOLS:
        raise ValueError(f"index manifest names unknown protocol {name!r}; "
                         f"expected one of {', '.join(PROTOCOLS)}")
    return name


def index_protocol(work_dir: str) -> str:
    """:func:`protocol_of` the index manifest under ``<work_dir>/index``."""
    return protocol_of(index_manifest(join(work_dir, "index")))


def _dataset(uri: str) -> pads.Dataset:
    fs, path = filesystem(uri)
    try:
        return pads.dataset(path, filesystem=fs, format="parquet")
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(_unreadable(uri, exc)) from None


def _unreadable(uri: str, exc: Exception) -> str:
    return (f"{uri} is not a readable Parquet output ({str(exc).splitlines()[0]}): the index "
            "is damaged; rebuild it with `seqrec index` (after removing the index folder)")


def check_readable(index_uri: str) -> None:
    """Every Parquet file of the index opens (footers only: cheap at any scale), so a damaged
    index is one clear error on the driver, not a traceback from each worker.

    Raises:
        ValueError: naming the first unreadable file.
    """
    fs, root = filesystem(index_uri)
    selector = pafs.FileSelector(root, recursive=True)
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File and info.path.endswith(".parquet"):
            try:
                pq.ParquetFile(fs.open_input_file(info.path))
            except (pa.ArrowInvalid, OSError) as exc:
                raise ValueError(_unreadable(info.path, exc)) from None


def _fill_sets(uri: str, out: np.ndarray) -> None:
    """Scatter one sets table into ``out`` (N+1, T, 2, S), batch by batch."""
    n, T, _, S = out.shape
    rows_of = out.reshape(n * T, 2, S)  # a view: row entity * T + slice
    columns = ["entity", "slice", "interaction", "co_interaction"]
    for batch in _dataset(uri).to_batches(columns=columns, batch_size=1 << 21):
        if batch.num_rows == 0:
            continue
        entity = batch.column("entity").to_numpy()
        slc = batch.column("slice").to_numpy()
        if entity.max() >= n or slc.max() >= T or entity.min() < 1 or slc.min() < 0:
            raise ValueError(f"{uri}: entity/slice out of range for arrays of shape {out.shape}")
        pair = np.empty((batch.num_rows, 2, S), dtype=np.int32)
        for k, name in enumerate(("interaction", "co_interaction")):
            flat = pc.list_flatten(batch.column(name)).to_numpy()
            if flat.size != batch.num_rows * S:
                raise ValueError(f"{uri}: {name} lists are not all of length S={S}")
            pair[:, k] = flat.reshape(batch.num_rows, S)
        rows_of[entity.astype(np.int64) * T + slc] = pair


def load_set_arrays(index_uri: str) -> SetArrays:
    """Dense (co-)interaction sets of both sides.

    Args:
        index_uri: the index stage folder (``<work_dir>/index``).

    Returns:
        SetArrays with ``users`` (U+1, T, 2, S) and ``items`` (I+1, T, 2, S) int32.

    Raises:
        FileNotFoundError: no index manifest.
        ValueError: a row's entity or slice does not fit the manifest's sizes, or a list is
            not of length S.
    """
    m = index_manifest(index_uri)
    T, S = m["num_slices"], m["set_size"]
    users = np.zeros((m["num_users"] + 1, T, 2, S), dtype=np.int32)
    items = np.zeros((m["num_items"] + 1, T, 2, S), dtype=np.int32)
    _fill_sets(join(index_uri, "user_sets"), users)
    _fill_sets(join(index_uri, "item_sets"), items)
    return SetArrays(users=users, items=items)


def load_samples(index_uri: str, split: str) -> dict[str, np.ndarray]:
    """One split's candidate lists.

    Returns:
        {"user": (n,) int32, "cut": (n,) int32 (target slice, or the target's position in
        the user's sequence), "candidates": (n, C) int32 with the target in column 0,
        "real_negatives": (n,) int16, "target_label": (n,) int8}, rows sorted by
        (user, cut, target).

    Raises:
        ValueError: unknown split, missing columns, or lists of unequal length.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    uri = join(index_uri, "samples", split)
    table = _dataset(uri).to_table()
    missing = sorted(set(SAMPLE_COLUMNS) - set(table.column_names))
    if missing:
        raise ValueError(f"{uri}: samples lack columns {missing} (contract: "
                         f"{', '.join(SAMPLE_COLUMNS)}); rebuild the index with `seqrec index`")
    cand_col = table.column("candidates").combine_chunks()
    lengths = pc.list_value_length(cand_col).to_numpy(zero_copy_only=False)
    if table.num_rows and (lengths != lengths[0]).any():
        raise ValueError(f"{uri}: candidate lists of unequal length")
    width = int(lengths[0]) if table.num_rows else 0
    cand = pc.list_flatten(cand_col).to_numpy().reshape(table.num_rows, width)
    user = table.column("user").to_numpy()
    cut = table.column("cut").to_numpy()
    order = np.lexsort((cand[:, 0], cut, user)) if table.num_rows else np.arange(0)
    return {
        "user": user[order],
        "cut": cut[order],
        "candidates": cand[order],
        "real_negatives": table.column("real_negatives").to_numpy()[order],
        "target_label": table.column("target_label").to_numpy()[order],
    }


def dense_popularity(uri: str, num_items: int, num_slices: int) -> np.ndarray:
    """(num_items+1, T) int64 counts from an ``item_popularity`` table (zeros elsewhere)."""
    table = _dataset(uri).to_table(columns=["item", "slice", "count"])
    out = np.zeros((num_items + 1, num_slices), dtype=np.int64)
    out[table.column("item").to_numpy(), table.column("slice").to_numpy()] = \
        table.column("count").to_numpy()
    return out


def load_popularity(index_uri: str) -> np.ndarray:
    """Positive interactions per item and slice: (num_items+1, T) int64 (``slices`` only)."""
    m = index_manifest(index_uri)
    return dense_popularity(join(index_uri, "item_popularity"), m["num_items"], m["num_slices"])


def slice_negative_weights(counts: np.ndarray, sampling: str, target: int,
                           active_min_slices: int) -> np.ndarray | None:
    """The item weights the ``slices`` protocol draws sampled negatives by, for target slice
    ``target`` (the index's candidate lists and the trainers' per-epoch draws share them).

    Args:
        counts: (I+1, T) positive interactions per item and slice (``load_popularity``).
        sampling: ``index.negative_sampling``: ``uniform`` (the paper: "randomly sample"),
            ``popularity`` (1 + the item's positives in slices 0..target) or ``active`` (the
            released code's Taobao/Tmall ``pop_items``: uniform over the items with positives
            in at least ``active_min_slices`` of all T slices, others never drawn).
        target: the target slice of the lists.
        active_min_slices: ``index.active_min_slices``.

    Returns:
        None for uniform, else (I+1,) float64 weights (index 0 is never drawn).

    Raises:
        ValueError: ``active`` leaves no item to draw.
    """
    if sampling == "uniform":
        return None
    if sampling == "popularity":
        return 1.0 + counts[:, : target + 1].sum(axis=1).astype(np.float64)
    active = (counts[1:] > 0).sum(axis=1) >= active_min_slices
    if not active.any():
        raise ValueError(f"index.negative_sampling: active draws from items with positives in "
                         f"at least {active_min_slices} of {counts.shape[1]} slices, and no "
                         "item has: lower index.active_min_slices")
    return np.concatenate([[0.0], active.astype(np.float64)])


def train_popularity(sequences: Sequences, eval_user: np.ndarray, eval_cut: np.ndarray,
                     num_items: int) -> np.ndarray:
    """Positive events per item in the train part of every user's sequence (the
    ``leave_one_out`` and ``feedback`` popularity, which has no slices).

    A user's train part is the events before the earliest cut of their validation and test
    rows (all events for a user without such rows), so no evaluation target is counted.

    Args:
        sequences: the users' events (``load_sequences``).
        eval_user: (n,) users of the validation and test rows; eval_cut: (n,) their cuts.
        num_items: I.

    Returns:
        (num_items+1,) int64 counts; index 0 (padding) is 0.
    """
    counts = np.diff(sequences.offsets)  # (U+1,) events per user
    end = counts.copy()  # exclusive train end per user
    np.minimum.at(end, eval_user.astype(np.int64), eval_cut.astype(np.int64))
    user = np.repeat(np.arange(len(counts)), counts)  # (E,)
    position = np.arange(len(user)) - sequences.offsets[user]  # (E,) position in the user
    keep = (position < end[user]) & (sequences.label == 1)
    return np.bincount(sequences.items[keep], minlength=num_items + 1).astype(np.int64)


def load_sequences(index_uri: str) -> Sequences:
    """Every user's interactions in time order, in CSR form (see module docstring); the
    ``slice`` lists are read where the table has them (``slices`` protocol)."""
    m = index_manifest(index_uri)
    table = _dataset(join(index_uri, "sequences")).to_table()
    user = table.column("user").to_numpy()
    order = np.argsort(user, kind="stable")
    table = table.take(order)
    user = user[order]
    lengths = pc.list_value_length(table.column("items")).to_numpy(zero_copy_only=False)
    counts = np.zeros(m["num_users"] + 1, dtype=np.int64)
    counts[user] = lengths
    offsets = np.zeros(m["num_users"] + 2, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])

    def flat(name: str, dtype) -> np.ndarray:
        return pc.list_flatten(table.column(name)).to_numpy().astype(dtype, copy=False)

    has_slice = "slice" in table.column_names
    return Sequences(offsets=offsets, items=flat("items", np.int32), ts=flat("ts", np.int64),
                     slice=flat("slice", np.int16) if has_slice else None,
                     label=flat("label", np.int8))
