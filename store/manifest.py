"""Stage manifests and the skip-if-unchanged rule.

A published stage folder (written through ``store.files.staged_output``) holds
``manifest.json``: schema version, input hash, config hash, counts, timings and the stage's
own facts. A rerun with input and config hashes unchanged is a no-op (:func:`up_to_date`);
the manifest's own hash is the next stage's input hash (:func:`manifest_hash`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow.fs as pafs

from store.files import filesystem, join, read_json

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def read_manifest(stage_uri: str) -> dict[str, Any] | None:
    """The manifest of a published stage folder, or None if there is none."""
    return read_json(join(stage_uri, MANIFEST))


def up_to_date(stage_uri: str, input_hash: str, config_hash: str) -> bool:
    """True when the published stage was built from the same input and config."""
    manifest = read_manifest(stage_uri)
    return bool(
        manifest
        and manifest.get("schema_version") == SCHEMA_VERSION
        and manifest.get("input_hash") == input_hash
        and manifest.get("config_hash") == config_hash
    )


def file_fingerprint(uris: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """Hash of input files by path, size and modification time (cheap at 100M rows).

    Returns:
        (hash, [{"path", "size", "mtime"}...]) in sorted path order.
    """
    entries = []
    for uri in sorted(uris):
        fs, path = filesystem(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(uri)
        mtime = info.mtime.timestamp() if info.mtime else None
        entries.append({"path": uri, "size": info.size, "mtime": mtime})
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:16]
    return digest, entries


def manifest_hash(stage_uri: str) -> str:
    """Hash identifying a published stage's content, used as the next stage's input hash."""
    manifest = read_manifest(stage_uri)
    if manifest is None:
        raise FileNotFoundError(f"no {MANIFEST} in {stage_uri}: run the previous stage first")
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


class StageTimer:
    """Collects wall time per named step for the manifest's ``timings`` field."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - start, 3)


class StageResult(dict):
    """What a stage function returns: ``uri`` of its output, ``manifest``, and ``skipped``
    (True when inputs and config were unchanged and nothing ran) with ``reason``."""

    @classmethod
    def of(cls, uri: str, manifest: dict[str, Any], skipped: bool, reason: str) -> StageResult:
        return cls(uri=uri, manifest=manifest, skipped=skipped, reason=reason)
