"""Shared by benchmarks/ingest.py and benchmarks/index.py: the config of one data size, and a
meter for a child process and everything it starts (Spark JVM, Python workers).

Linux /proc only (no psutil).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def tree_usage(root: int) -> dict[int, tuple[int, int]]:
    """{pid: (resident bytes, CPU ticks user+system)} of ``root`` and its descendants."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))
    usage, todo = {}, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        if pid in stats:  # fields after "(comm)": [1] ppid, [11] utime, [12] stime, [21] rss pages
            fields = stats[pid]
            usage[pid] = (int(fields[21]) * PAGE, int(fields[11]) + int(fields[12]))
    return usage


def run_child(code: str, overrides: list[str]) -> tuple[dict, int, float]:
    """Run ``python -c code overrides-json``; the child prints one ``RESULT {json}`` line.

    Returns:
        (that result, the tree's peak summed RSS in bytes sampled every 0.2 s, CPU seconds of
        the tree: the last sample per process, so it misses at most 0.2 s of each).

    Raises:
        RuntimeError: the child failed or printed no result (its stderr tail attached).
    """
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(overrides)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, ticks = 0, {}
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            usage = tree_usage(proc.pid)
            peak = max(peak, sum(rss for rss, _ in usage.values()))
            ticks.update({pid: cpu for pid, (_, cpu) in usage.items()})
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child failed (rc {proc.returncode}):\n{err[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):]), peak, sum(ticks.values()) / TICKS


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def sized_overrides(rows: int, scratch: Path, work_name: str, extra: list[str]) -> list[str]:
    """Config overrides for one benchmark size, with users and items in Taobao's proportions
    (about 1 user per 100 rows and 1 item per 25 rows)."""
    return [
        f"paths.raw_dir={scratch / f'raw-{rows}'}",
        f"paths.work_dir={scratch / f'{work_name}-{rows}'}",
        f"generate.rows={rows}",
        f"generate.users={max(rows // 100, 10)}",
        f"generate.items={max(rows // 25, 10)}",
        *extra,
    ]
