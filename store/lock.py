"""One run at a time per work folder: a lock file ``<work>/.seqrec.lock`` holding the owner's
host, PID and start time.

Atomic publish keeps each stage's output whole, but two runs on one work folder would resume
from and write into the same training run and race on the registry's alias. A run takes the
lock before its first stage and drops it after its last. A lock whose PID is gone on this
host is stale and taken over; another host's lock is never taken (its PID cannot be checked
from here): one older than ``stale_hours`` is reported as probably stale, with the file to
delete. The lock is re-entrant within one process.

Local and NFS paths only (``O_CREAT | O_EXCL`` is atomic there); on ``hdfs://`` or
``s3a://`` work folders the deployments' Prefect concurrency limit is the guard.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".seqrec.lock"
EXIT_BUSY = 75  # EX_TEMPFAIL: try again later
_held: dict[str, int] = {}  # lock path -> depth, in this process


class WorkFolderBusy(RuntimeError):
    """Another live run holds the work folder's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # gone, or being written: look again


def describe(owner: dict, path: Path | None = None, stale_hours: float | None = None) -> str:
    text = (f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('started')} "
            f"({owner.get('command', 'seqrec')})")
    if (path is not None and stale_hours is not None
            and owner.get("host") != socket.gethostname() and _old(owner, stale_hours)):
        text += (f"; older than {stale_hours:g} h on another host: if that run is gone, "
                 f"delete {path}")
    return text


def _old(owner: dict, stale_hours: float) -> bool:
    try:
        started = dt.datetime.fromisoformat(owner["started"])
    except (KeyError, ValueError):
        return False
    return dt.datetime.now(dt.timezone.utc) - started > dt.timedelta(hours=stale_hours)


def _stale(owner: dict) -> bool:
    """This host's lock of a process that is gone (another host's is never stale here)."""
    return owner.get("host") == socket.gethostname() and not _alive(int(owner.get("pid", 0)))


def _try_take(path: Path, command: str) -> dict | None:
    """Take the lock; None when taken, else the live owner."""
    me = {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
          "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        owner = _owner(path)
        if owner is None:
            return {"host": "?", "pid": "?", "started": "?", "command": "a starting run"}
        if not _stale(owner):
            return owner
        path.unlink(missing_ok=True)  # a dead run's lock: take it over
        return _try_take(path, command)
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    return None


@contextmanager
def work_lock(work_dir: str, command: str, *, wait: bool = False, stale_hours: float = 12.0,
              poll_s: float = 2.0, log=None) -> Iterator[None]:
    """Hold the work folder's lock for the ``with`` block.

    Args:
        command: what the lock file says the owner runs (shown to a second run).
        wait: wait for a live owner to finish; False raises at once.
        log: called with one line while waiting.

    Raises:
        WorkFolderBusy: ``wait`` is False and a live run holds the lock (the message names
            the owner).
    """
    if "://" in work_dir and not work_dir.startswith("file://"):
        yield  # hdfs / s3a: the Prefect concurrency limit guards
        return
    folder = Path(work_dir.removeprefix("file://"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    key = str(path.resolve())
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    said = False
    while (owner := _try_take(path, command)) is not None:
        who = describe(owner, path, stale_hours)
        if not wait:
            raise WorkFolderBusy(f"{folder} is in use by {who}; wait for it (--wait) or use "
                                 "another paths.work_dir")
        if log is not None and not said:
            log(f"waiting for {folder}: in use by {who}")
            said = True
        time.sleep(poll_s)
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        path.unlink(missing_ok=True)
