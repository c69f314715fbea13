"""Stage outputs: atomic publication, manifests and the skip-if-unchanged rule.

Every stage writes its whole output folder beside the final one (``<out>.tmp-<uuid>``) and
renames it into place only when complete, so a crash never leaves a half-written stage that
a later run would trust. The folder's ``manifest.json`` records the input hash and config
hash; a rerun with both unchanged is a no-op. Works on any filesystem pyarrow knows (local,
HDFS, S3) through ``pyarrow.fs``; Spark writes to the same URIs.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow.fs as pafs

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path for a local path or URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    return pafs.FileSystem.from_uri(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_json(uri: str) -> dict[str, Any] | None:
    """A JSON file's content, or None when there is no such file."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def read_manifest(stage_uri: str) -> dict[str, Any] | None:
    """The manifest of a published stage folder, or None if there is none."""
    return read_json(join(stage_uri, MANIFEST))


def write_json(uri: str, payload: dict[str, Any]) -> None:
    """Write beside the target, then rename over it: a crash leaves the old file or the new."""
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(payload, indent=2, sort_keys=True, default=str).encode())
    fs.move(tmp, path)


def up_to_date(stage_uri: str, input_hash: str, config_hash: str) -> bool:
    """True when the published stage was built from the same input and config."""
    manifest = read_manifest(stage_uri)
    return bool(
        manifest
        and manifest.get("schema_version") == SCHEMA_VERSION
        and manifest.get("input_hash") == input_hash
        and manifest.get("config_hash") == config_hash
    )


@contextmanager
def staged_output(stage_uri: str) -> Iterator[str]:
    """Yield a temporary folder beside ``stage_uri``; on success publish it by rename.

    On error the temporary folder is removed and the previous output stays untouched.
    Replacing an existing output renames the old one aside first, then deletes it, so a
    reader never sees a mix of both.
    """
    fs, final = filesystem(stage_uri)
    tag = uuid.uuid4().hex[:8]
    tmp_path = f"{final.rstrip('/')}.tmp-{tag}"
    scheme = stage_uri.split("://", 1)[0] + "://" if "://" in stage_uri else ""
    fs.create_dir(tmp_path, recursive=True)
    try:
        yield scheme + tmp_path
    except BaseException:
        fs.delete_dir(tmp_path)
        raise
    old_path = f"{final.rstrip('/')}.old-{tag}"
    had_old = fs.get_file_info(final).type != pafs.FileType.NotFound
    if had_old:
        fs.move(final, old_path)
    fs.move(tmp_path, final)
    if had_old:
        fs.delete_dir(old_path)


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
