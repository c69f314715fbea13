"""Files and folders on any filesystem pyarrow knows (local, HDFS, S3), and atomic writes.

Every stage writes its whole output folder beside the final one (``<out>.tmp-<uuid>``) and
renames it into place only when complete (:func:`staged_output`), so a crash never leaves a
half-written output that a later run would trust; a JSON record is written the same way
(:func:`write_json`). Spark writes to the same URIs.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow.fs as pafs


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


def write_json(uri: str, payload: dict[str, Any]) -> None:
    """Write beside the target, then rename over it: a crash leaves the old file or the new."""
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(payload, indent=2, sort_keys=True, default=str).encode())
    fs.move(tmp, path)


@contextmanager
def staged_output(stage_uri: str) -> Iterator[str]:
    """Yield a temporary folder beside ``stage_uri``; on success publish it by rename.

    On error the temporary folder is removed and the previous output stays untouched.
    Replacing an existing output renames the old one aside first, then deletes it, so a
    reader never sees a mix of both. A writer killed with SIGKILL cleans nothing up: the
    next writer of the same output deletes its ``.tmp-`` / ``.old-`` folders first (one
    writer per work folder: the work lock, or on HDFS/S3 the deployment's concurrency
    limit).
    """
    fs, final = filesystem(stage_uri)
    _remove_leftovers(fs, final.rstrip("/"))
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


def remove_dir(uri: str) -> None:
    """Delete a folder and everything in it (no error when it is absent)."""
    fs, path = filesystem(uri)
    if "://" not in uri:
        shutil.rmtree(path, ignore_errors=True)
    elif fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def _remove_leftovers(fs: pafs.FileSystem, final: str) -> None:
    """Delete ``<final>.tmp-*`` and ``<final>.old-*`` left by a writer that was killed."""
    parent, name = final.rsplit("/", 1) if "/" in final else (".", final)
    if fs.get_file_info(parent).type != pafs.FileType.Directory:
        return
    for info in fs.get_file_info(pafs.FileSelector(parent)):
        if info.base_name.startswith((f"{name}.tmp-", f"{name}.old-")):
            if info.type == pafs.FileType.Directory:
                fs.delete_dir(info.path)
            else:
                fs.delete_file(info.path)
