"""Recommend stage: top-K items for every user of today's index (or the users of a file),
from a registered model, in the dataset's original ids.

The model comes from the registry by alias (``models:/<name>@champion``) or version. It
carries its weights and the original ids it was trained with (trainers/tracking.py), so a
champion older than today's index still serves: today's histories are translated through
the original ids into its ids (trainers/snapshot.py; unseen items leave the histories, unseen
users get the popularity ranking; the manifest counts both). "Next" and the two scoring paths
are trainers/top_k.py's.

Scaled out with Ray Data: ``map_batches`` over user batches (``recommend.users_per_batch``),
``recommend.actors`` actors each holding one copy of the model (a GPU each when
``train.use_gpu`` and one is present), written by Ray's Parquet writer. With
``recommend.actors: 0`` the same scorer runs in this process (small data: no Ray start-up).

Output: ``<work>/recommendations/<name>/v<version>/`` (a users file's:
``v<version>-users-<hash>/`` beside it), published atomically (temp folder, then rename):
Parquet rows ``user_id``, ``item_id`` (original ids: text where the raw file has text),
``rank`` (1 = best), ``score``, and ``_manifest.json`` (model, version, run id, index hash,
k, users, seconds, the counts above, and a few users' last events and top-10 as
``examples``; the leading ``_`` keeps Parquet readers off it). A rerun with the same model
version, index, ``recommend`` settings (less ``actors`` and ``users_per_batch``, which
change where and how fast, not what) and users file is skipped; a new champion writes a
new folder beside the old one.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from conf.loading import section_hash
from conf.schema import PipelineConfig
from store.files import join, read_json, staged_output, write_json
from store.manifest import SCHEMA_VERSION, file_fingerprint, manifest_hash
from trainers import tracking
from trainers.snapshot import (
    Snapshot,
    Translation,
    lookup,
    snapshot_of_index,
    translate,
)

log = logging.getLogger(__name__)

CHAMPION = "champion"
# "_" first: Spark, pyarrow, pandas and DuckDB read the folder as Parquet and skip it
MANIFEST = "_manifest.json"
EXAMPLE_USERS = 3  # users whose history and top-10 the result shows


def output_uri(cfg: PipelineConfig, name: str, version: int, users_hash: str | None) -> str:
    """``v<version>`` for every user; ``v<version>-users-<hash>`` for a users file's."""
    folder = f"v{version}" if users_hash is None else f"v{version}-users-{users_hash[:8]}"
    return join(cfg.paths.work_dir, "recommendations", name, folder)


def model_version(cfg: PipelineConfig, name: str, version: int | None):
    """The registry's ``version`` of ``name``, or its champion.

    Raises:
        LookupError: no such model, version or champion.
    """
    from mlflow.exceptions import MlflowException

    client = tracking.client(cfg)
    try:
        if version is None:
            return client.get_model_version_by_alias(name, CHAMPION)
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        which = f"version {version}" if version is not None else f"a '{CHAMPION}' alias"
        raise LookupError(f"registered model {name!r} has no {which} in {cfg.tracking.uri} "
                          f"(run `seqrec pipeline` first): {exc.message}") from None


def read_user_ids(path: str) -> np.ndarray:
    """Original user ids, one per line (a first line ``user_id`` is a header)."""
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    ids = [line for line in lines if line]
    if ids and ids[0] == "user_id":
        ids = ids[1:]
    if not ids:
        raise ValueError(f"{path} lists no user ids (one per line)")
    return np.asarray(ids, dtype=str)


def run_recommend(cfg: PipelineConfig, name: str, version: int | None = None,
                  users_file: str | None = None) -> dict[str, Any]:
    """Write top-``recommend.k`` items per user (see the module docstring).

    Args:
        name: the registered model.
        version: a version number; None: the champion.
        users_file: original user ids, one per line; None: every user of today's index.

    Returns:
        dict: ``uri``, ``skipped``, ``reason``, ``manifest`` and ``examples`` (a few users'
        last events and top-10, original ids).

    Raises:
        LookupError: no such registered model / version / champion.
        FileNotFoundError: no index in the work folder.
        ValueError: today's index cannot feed the model (another protocol or slice count),
            or the users file is empty or holds text ids for a dataset of integer ids.
    """
    from mlflow.artifacts import download_artifacts

    from trainers.checkpoints import load_weights
    from trainers.snapshot import load

    started = time.time()
    found = model_version(cfg, name, version)
    users_hash = None if users_file is None else file_fingerprint([users_file])[0]
    out = output_uri(cfg, name, int(found.version), users_hash)
    index_hash = manifest_hash(join(cfg.paths.work_dir, "index"))
    input_hash = f"{found.run_id}:{index_hash}:{users_hash or 'all'}"
    config_hash = _settings_hash(cfg)
    previous = read_json(join(out, MANIFEST))
    if previous and (previous["input_hash"], previous["config_hash"]) == (input_hash,
                                                                          config_hash):
        return _result(out, previous, skipped=True, reason=f"version {found.version} already "
                       "recommended for this index, users and recommend settings")
    with tempfile.TemporaryDirectory() as tmp:
        where = tracking.client(cfg).get_model_version_download_uri(name, found.version)
        folder = download_artifacts(artifact_uri=where, dst_path=tmp,
                                    tracking_uri=cfg.tracking.uri)
        saved = load_weights(Path(folder) / "artifacts" / tracking.WEIGHTS_FILE)
        trained = load(str(Path(folder) / "artifacts" / tracking.SNAPSHOT_FILE))
    today = snapshot_of_index(cfg.paths.work_dir, trained.user_sets is not None)
    moved = translate(today, trained)
    users, user_ids, unknown = _users(today, moved, users_file)
    manifest = _publish(cfg, saved, moved.snapshot, users, user_ids, out, today, started, {
        "stage": "recommend", "schema_version": SCHEMA_VERSION, "input_hash": input_hash,
        "config_hash": config_hash, "model": name, "version": int(found.version),
        "run_id": found.run_id, "index_hash": index_hash, "k": cfg.recommend.k,
        "exclude_seen": cfg.recommend.exclude_seen, "users": len(users),
        "users_file": users_file, "users_not_in_index": unknown,
        "cold_users": moved.cold_users, "dropped_events": moved.dropped_events,
        "unknown_items": moved.unknown_items})
    log.info("recommend: top-%d for %d users from %s v%s in %s (%d rows)", cfg.recommend.k,
             len(users), name, found.version, out, manifest["rows"])
    return _result(out, manifest, skipped=False,
                   reason="new model version, index, users or settings")


def _users(today: Snapshot, moved: Translation, users_file: str | None
           ) -> tuple[np.ndarray, np.ndarray, int]:
    """(idx in the translated snapshot, original ids, how many listed users today's index
    lacks: they get the popularity ranking, as a user without history)."""
    if users_file is None:
        return moved.users, today.user_ids[1:], 0
    ids = read_user_ids(users_file)
    if not today.string_ids:
        bad = [i for i in ids if not i.lstrip("-").isdigit()]
        if bad:
            raise ValueError(f"{users_file}: this dataset's user ids are integers; not: "
                             f"{', '.join(bad[:3])}")
        ids = np.asarray([str(int(i)) for i in ids])  # as the id maps spell them
    at = lookup(today.user_ids, ids)  # today's idx, 0 if absent
    nobody = moved.snapshot.num_users + 1  # TopK.nobody
    return np.where(at > 0, moved.users[at - 1], nobody), ids, int((at == 0).sum())


class _Shard:
    """A Ray Data actor: one model over the translated snapshot, scoring user batches."""

    def __init__(self, saved: dict, snapshot: Snapshot, k: int, exclude_seen: bool,
                 candidates: int, use_gpu: bool) -> None:
        import torch

        from trainers.top_k import TopK

        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.top = TopK.from_weights(saved, snapshot, device)
        self.snapshot, self.k = snapshot, k
        self.exclude_seen, self.candidates = exclude_seen, candidates

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        user = torch.as_tensor(batch["user"].astype(np.int64))
        items, scores = self.top.top(user, self.k, self.exclude_seen, self.candidates)
        items, scores = items.cpu().numpy(), scores.cpu().numpy()
        keep = np.isfinite(scores)
        ranks = np.broadcast_to(np.arange(1, items.shape[1] + 1), items.shape)
        return {"user_id": np.broadcast_to(batch["user_id"][:, None], items.shape)[keep],
                "item_id": self.snapshot.original_ids(items[keep], "items"),
                "rank": ranks[keep].astype(np.int32), "score": scores[keep]}


def _publish(cfg: PipelineConfig, saved: dict, snapshot: Snapshot, users: np.ndarray,
             user_ids: np.ndarray, out: str, today: Snapshot, started: float,
             manifest: dict) -> dict:
    """Score every user (Ray Data actors, or this process when ``recommend.actors`` is 0)
    and publish ``out`` with its manifest (returned, with the rows, the seconds and a few
    users' ``examples``)."""
    import torch

    gpu = cfg.train.use_gpu and torch.cuda.is_available()
    ids = user_ids if snapshot.string_ids else user_ids.astype(np.int64)
    shard = {"saved": saved, "snapshot": snapshot, "k": cfg.recommend.k,
             "exclude_seen": cfg.recommend.exclude_seen,
             "candidates": cfg.recommend.candidates, "use_gpu": gpu}
    with staged_output(out) as tmp:
        if cfg.recommend.actors:
            _score_with_ray(cfg, shard, users, ids, tmp)
        else:
            _score_here(cfg, shard, users, ids, tmp)
        manifest = {**manifest, "rows": _count_rows(tmp),
                    "seconds": round(time.time() - started, 3),
                    "examples": examples(tmp, today)}
        write_json(join(tmp, MANIFEST), manifest)
    return manifest


def _score_with_ray(cfg: PipelineConfig, shard: dict, users: np.ndarray, ids: np.ndarray,
                    tmp: str) -> None:
    """Ray Data ``map_batches`` over user batches into Parquet files under ``tmp``."""
    import pandas as pd
    import ray

    from trainers.train import start_ray

    started_ray = start_ray(cfg)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.enable_operator_progress_bars = False
        # its plan, progress and sink lines: the stage's own log line says what was written
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        users_ds = ray.data.from_pandas(pd.DataFrame({"user": users, "user_id": ids}))
        users_ds.map_batches(
            _Shard, batch_format="numpy", batch_size=cfg.recommend.users_per_batch,
            # up to recommend.actors (one CPU each, one model each; the snapshot is shared
            # through the object store), as many as the cluster has room for
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.recommend.actors),
            num_gpus=1 if shard["use_gpu"] else 0, fn_constructor_kwargs=shard,
        ).write_parquet(tmp)
    finally:
        if started_ray:
            ray.shutdown()


def _score_here(cfg: PipelineConfig, shard: dict, users: np.ndarray, ids: np.ndarray,
                tmp: str) -> None:
    """The same scorer in this process, batch after batch, into one Parquet file: no Ray
    start-up (~15 s), for small data (``recommend.actors: 0``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from store.files import filesystem

    scorer, step = _Shard(**shard), cfg.recommend.users_per_batch
    parts = [scorer({"user": users[lo:lo + step], "user_id": ids[lo:lo + step]})
             for lo in range(0, len(users), step)]
    table = pa.table({key: np.concatenate([part[key] for part in parts]) for key in parts[0]})
    fs, path = filesystem(tmp)
    pq.write_table(table, f"{path}/part-00000.parquet", filesystem=fs)


def _settings_hash(cfg: PipelineConfig) -> str:
    """Hash of the ``recommend`` settings that shape the lists (not actors, batch size)."""
    same = cfg.recommend.model_copy(update={"actors": 1, "users_per_batch": 1})
    return section_hash(cfg.model_copy(update={"recommend": same}), "recommend")


def _count_rows(uri: str) -> int:
    """Rows of a Parquet folder, from the files' footers."""
    import pyarrow.dataset as pads

    from store.files import filesystem

    fs, path = filesystem(uri)
    return pads.dataset(path, filesystem=fs, format="parquet").count_rows()


def _result(out: str, manifest: dict, skipped: bool, reason: str) -> dict:
    return {"uri": out, "skipped": skipped, "reason": reason, "manifest": manifest,
            "examples": manifest["examples"]}


def examples(out: str, today: Snapshot, users: int = EXAMPLE_USERS, shown: int = 10
             ) -> list[dict]:
    """A few users' last ``shown`` events and top-``shown`` items, in original ids."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from store.files import filesystem

    fs, path = filesystem(out)
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table()
    first = table.column("user_id").unique()[:users]
    picked = []
    for user_id in first.to_pylist():
        rows = table.filter(pc.equal(table.column("user_id"), user_id))
        rows = rows.sort_by("rank")
        at = lookup(today.user_ids, np.asarray([str(user_id)]))[0]
        history = today.items[today.offsets[at]:today.offsets[at + 1]][-shown:] if at else []
        picked.append({"user_id": user_id,
                       "history": [str(i) for i in today.item_ids[history]],
                       "top": [str(i) for i in rows.column("item_id").to_pylist()[:shown]]})
    return picked
