"""What a model needs to recommend each user's next items, held apart from the work folder.

A :class:`Snapshot` is every user's history in one id space, with the original ids:

  user_ids (U+1,) / item_ids (I+1,)  str, the dataset's original id of each idx (0: padding)
  offsets (U+2,) int64, items (E,) int32, labels (E,) int8, slices (E,) int16 or None
      every user's events in time order, CSR (``store.index.Sequences``)
  user_sets (U+1, T, 2, S) / item_sets (I+1, T, 2, S) int32 or None
      the (co-)interaction sets (``slices``, for a model that reads ``slice_sets``)

The registered model carries the snapshot of the index it was trained on
(trainers/tracking.py), so it serves users after the next retrain has replaced the work
folder. ``seqrec recommend`` takes today's index instead and :func:`translate`\\s it into the
champion's ids: ingest reassigns idx at every run, so today's users and items go through
their original ids. Items the champion never saw leave the histories; users it never saw
are appended after its own users (idx > its ``num_users``), with their histories, and get
the popularity ranking (trainers/top_k.py).

Saved as one ``.npz`` without pickles (``np.load(allow_pickle=False)``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import pyarrow.parquet as pq

from store import index as index_store
from store.files import filesystem, join
from store.manifest import read_manifest


@dataclass(frozen=True)
class Snapshot:
    protocol: str
    num_slices: int  # T (0 without slices)
    string_ids: bool  # the original ids are text (else integers)
    user_ids: np.ndarray
    item_ids: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    slices: np.ndarray | None
    user_sets: np.ndarray | None
    item_sets: np.ndarray | None

    @property
    def num_users(self) -> int:
        return len(self.user_ids) - 1

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    def popularity(self) -> np.ndarray:
        """(I+1,) int64 positive events per item: in the last slice (``slices``, as its
        popularity reference), else over every history."""
        keep = self.labels == 1
        if self.slices is not None:
            keep &= self.slices == self.num_slices - 1
        return np.bincount(self.items[keep], minlength=self.num_items + 1).astype(np.int64)

    def original_ids(self, idx: np.ndarray, of: str) -> np.ndarray:
        """Original ids of ``of`` ("users" or "items") idx: int64, or str for text ids."""
        ids = (self.user_ids if of == "users" else self.item_ids)[idx]
        return ids if self.string_ids else ids.astype(np.int64)


def _id_table(uri: str) -> np.ndarray:
    """(n+1,) str: an ingest id map (raw string, idx int32) as a dense array by idx."""
    fs, path = filesystem(uri)
    table = pq.read_table(path, filesystem=fs, columns=["raw", "idx"])
    idx = table.column("idx").to_numpy()
    out = np.full(int(idx.max(initial=0)) + 1, "", dtype=object)
    out[idx] = table.column("raw").to_numpy(zero_copy_only=False)
    return out.astype(str)


def snapshot_of_index(work_dir: str, with_sets: bool) -> Snapshot:
    """Every user's history in the index of ``work_dir`` (its own ids).

    Args:
        with_sets: load the (co-)interaction sets too (a model reading ``slice_sets``).

    Raises:
        FileNotFoundError: no published ingest or index.
    """
    index_uri = join(work_dir, "index")
    manifest = index_store.index_manifest(index_uri)
    protocol = index_store.protocol_of(manifest)
    ingest = read_manifest(join(work_dir, "ingest"))
    if ingest is None:
        raise FileNotFoundError(f"no ingest manifest in {join(work_dir, 'ingest')}")
    # manifests before "string_ids" name the id order ("text order ..." for text ids)
    string_ids = ingest.get("string_ids", str(ingest.get("id_order", "")).startswith("text"))
    seq = index_store.load_sequences(index_uri)
    sets = index_store.load_set_arrays(index_uri) if with_sets else None
    users = _id_table(join(work_dir, "ingest", "id_maps", "users"))
    items = _id_table(join(work_dir, "ingest", "id_maps", "items"))
    return Snapshot(protocol=protocol, num_slices=int(manifest.get("num_slices") or 0),
                    string_ids=bool(string_ids),
                    user_ids=users[:manifest["num_users"] + 1],
                    item_ids=items[:manifest["num_items"] + 1],
                    offsets=seq.offsets, items=seq.items, labels=seq.label, slices=seq.slice,
                    user_sets=None if sets is None else sets.users,
                    item_sets=None if sets is None else sets.items)


def save(snapshot: Snapshot, path: str) -> None:
    """One compressed ``.npz`` (no pickled objects; the zero-padded set arrays, ~4 GB dense
    for SCoRe on Taobao, shrink most)."""
    arrays = {f.name: getattr(snapshot, f.name) for f in fields(snapshot)}
    arrays = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    np.savez_compressed(path, **arrays)


def load(path: str) -> Snapshot:
    with np.load(path, allow_pickle=False) as data:
        values = {f.name: data[f.name] if f.name in data.files else None
                  for f in fields(Snapshot)}
    return Snapshot(**{**values, "protocol": str(values["protocol"]),
                       "num_slices": int(values["num_slices"]),
                       "string_ids": bool(values["string_ids"])})


def lookup(known: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """idx in ``known`` (an idx -> id table, 0 padding) of each id; 0 where unknown."""
    order = np.argsort(known[1:], kind="stable")
    sorted_ids = known[1:][order]
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), dtype=np.int64)
    at = np.searchsorted(sorted_ids, ids).clip(max=len(sorted_ids) - 1)
    return np.where(sorted_ids[at] == ids, order[at] + 1, 0).astype(np.int64)


@dataclass(frozen=True)
class Translation:
    """Today's snapshot in the model's ids, and how much of it the model could not read.

    Attributes:
        snapshot: users 1..U are the model's, U+1.. today's users it never saw (cold).
        users: (n,) idx in ``snapshot`` of today's users, in today's idx order.
        cold_users: today's users the model never saw (popularity ranking).
        dropped_events: today's events on items the model never saw (left out).
        unknown_items: distinct such items.
    """

    snapshot: Snapshot
    users: np.ndarray
    cold_users: int
    dropped_events: int
    unknown_items: int


def translate(today: Snapshot, model: Snapshot) -> Translation:
    """``today``'s histories in ``model``'s ids (see the module docstring).

    Raises:
        ValueError: the protocols or the slice counts differ (a window of T slices cannot
            feed a model of another T).
    """
    if today.protocol != model.protocol or today.num_slices != model.num_slices:
        raise ValueError(f"today's index ({today.protocol}, {today.num_slices} slices) cannot "
                         f"feed the model's ({model.protocol}, {model.num_slices} slices): "
                         "train a model on today's index first")
    item_map = lookup(model.item_ids, today.item_ids)  # (I_t+1,) model idx or 0
    item_map[0] = 0
    known_user = lookup(model.user_ids, today.user_ids)  # (U_t+1,)
    cold = np.flatnonzero(known_user[1:] == 0) + 1  # today's idx of cold users
    user_map = known_user.copy()
    user_map[cold] = model.num_users + 1 + np.arange(len(cold))
    user_map[0] = 0
    total_users = model.num_users + len(cold)

    owner = np.repeat(np.arange(len(today.offsets) - 1), np.diff(today.offsets))  # (E,)
    mapped = item_map[today.items]
    keep = mapped > 0
    new_owner = user_map[owner[keep]]
    order = np.argsort(new_owner, kind="stable")  # each user's events stay in time order
    counts = np.bincount(new_owner, minlength=total_users + 1)
    offsets = np.zeros(total_users + 2, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    user_ids = np.concatenate([model.user_ids, today.user_ids[cold]])

    user_sets = item_sets = None
    if today.user_sets is not None and model.user_sets is not None:
        user_sets = np.zeros((total_users + 1, *today.user_sets.shape[1:]), dtype=np.int32)
        user_sets[user_map[1:]] = today.user_sets[1:]
        user_sets[..., 0, :] = item_map[user_sets[..., 0, :]]
        user_sets[..., 1, :] = np.where(user_sets[..., 1, :] > 0,
                                        known_user[user_sets[..., 1, :]], 0)
        item_sets = np.zeros((model.num_items + 1, *today.item_sets.shape[1:]), dtype=np.int32)
        seen = item_map[1:] > 0
        item_sets[item_map[1:][seen]] = today.item_sets[1:][seen]
        item_sets[..., 0, :] = known_user[item_sets[..., 0, :]]
        item_sets[..., 1, :] = item_map[item_sets[..., 1, :]]
    translated = replace(
        model, user_ids=user_ids, offsets=offsets,
        items=mapped[keep][order].astype(np.int32),
        labels=today.labels[keep][order],
        slices=None if today.slices is None else today.slices[keep][order],
        user_sets=user_sets, item_sets=item_sets)
    return Translation(snapshot=translated, users=user_map[1:], cold_users=len(cold),
                       dropped_events=int((~keep).sum()),
                       unknown_items=int((item_map[1:] == 0).sum()))
