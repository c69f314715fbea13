"""One run at a time per work folder (store/lock.py, issue 25), and the next writer's clean-up
of a killed writer's half-written folders (store/files.py). Two real ``seqrec pipeline``
processes on one work folder: tests/test_unattended.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from store.files import staged_output
from store.lock import LOCK_FILE, WorkFolderBusy, work_lock


def _owner_file(folder: Path, host: str, pid: int, started: str = "2026-01-01T00:00:00+00:00"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps(
        {"host": host, "pid": pid, "started": started, "command": "seqrec pipeline x"}))


def test_a_live_lock_stops_a_second_run_and_a_dead_ones_is_taken_over(tmp_path):
    work = tmp_path / "work"
    with work_lock(str(work), "seqrec pipeline a"):
        assert json.loads((work / LOCK_FILE).read_text())["pid"] == os.getpid()
        with work_lock(str(work), "seqrec train"):  # re-entrant in the owner's process
            pass
        assert (work / LOCK_FILE).exists()
    assert not (work / LOCK_FILE).exists()

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _owner_file(work, socket.gethostname(), sleeper.pid)
        with pytest.raises(WorkFolderBusy, match=f"pid {sleeper.pid} on {socket.gethostname()}"):
            with work_lock(str(work), "seqrec pipeline b"):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with work_lock(str(work), "seqrec pipeline b"):  # its PID is gone: stale, taken over
        assert json.loads((work / LOCK_FILE).read_text())["command"] == "seqrec pipeline b"

    _owner_file(work, "elsewhere", 1)  # another host: never taken; old: named stale
    with pytest.raises(WorkFolderBusy, match=f"older than 12 h on another host.*{LOCK_FILE}"):
        with work_lock(str(work), "seqrec pipeline c", stale_hours=12):
            pass
    assert json.loads((work / LOCK_FILE).read_text())["host"] == "elsewhere"


def test_a_waiting_run_starts_when_the_owner_finishes(tmp_path):
    work, lines = tmp_path / "work", []
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from store.lock import work_lock\n"
         f"with work_lock({str(work)!r}, 'seqrec pipeline first'):\n"
         "    print('held', flush=True); time.sleep(1.5)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    assert holder.stdout.readline().strip() == "held"
    with work_lock(str(work), "seqrec pipeline second", wait=True, poll_s=0.05,
                   log=lines.append):
        assert holder.poll() is not None  # the first run had finished
    holder.wait()
    assert len(lines) == 1 and lines[0].startswith(f"waiting for {work}: in use by pid")


def test_the_next_writer_deletes_a_killed_writers_half_written_folders(tmp_path):
    out = tmp_path / "index"
    for leftover in ("index.tmp-1a2b3c4d", "index.old-5e6f7a8b"):
        (tmp_path / leftover / "samples").mkdir(parents=True)
    (tmp_path / "index.tmp-9").write_text("x")
    (tmp_path / "indexes.tmp-1").mkdir()  # another output's: kept
    with staged_output(str(out)) as tmp:
        Path(tmp, "manifest.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "indexes.tmp-1"]
