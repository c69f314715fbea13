"""Progress lines while a Spark stage of the pipeline runs (ingest, index).

At 100M rows the index runs ~13 minutes; without this nothing shows that it moves. Inside
``with progress(spark, "index"):`` every Spark job the block submits joins one job group,
and a daemon thread prints, every ``every_s`` seconds, one line per running Spark stage of
that group::

    index: Spark stage 12: 37/200 partitions, 12,345,678 rows read, 1m20s (index 7m02s)

and a block that finishes ends with one summary line (Spark stages, partitions, rows read
summed over stages). Partitions come from ``SparkContext.statusTracker()``; rows read (input plus
shuffle-read records) from Spark's status store, the numbers behind the Spark UI's stage
table: finished tasks count at once, running ones at each executor heartbeat.

Lines go to stderr, as Spark's own console progress bar does (``spark.ui.showConsoleProgress``
stays off in the session: it redraws one line with carriage returns, which log files and
Prefect's logs do not render).
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

EVERY_S = 15.0  # a line per running stage this often (running tasks' rows move every 10 s)
_GROUP_PROPERTIES = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")


@dataclass(frozen=True)
class StageCounts:
    """One Spark stage as the status store sees it now."""

    stage_id: int
    partitions: int
    done: int  # finished partitions
    rows_read: int  # input records + shuffle-read records of finished (and reported) tasks
    seconds: float  # since the stage was submitted
    active: bool


def duration(seconds: float) -> str:
    """``75.4`` -> ``"1m15s"``; ``3725`` -> ``"1h02m05s"``; under a minute ``"42s"``."""
    s = int(seconds)
    h, m, s = s // 3600, s % 3600 // 60, s % 60
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _stage_ids(sc, group: str) -> list[int]:
    """Stages of the group's jobs that were submitted (skipped ones never ran)."""
    tracker = sc.statusTracker()
    ids = set()
    for job in tracker.getJobIdsForGroup(group):
        info = tracker.getJobInfo(job)
        if info is not None:
            ids.update(info.stageIds)
    return sorted(i for i in ids if tracker.getStageInfo(i) is not None)


def stage_counts(sc, group: str) -> list[StageCounts]:
    """The group's submitted stages, by stage id (status store, latest attempt each)."""
    store = sc._jsc.sc().statusStore()  # the Spark UI's backing store (no Python API)
    now_ms = time.time() * 1000
    out = []
    for stage_id in _stage_ids(sc, group):
        data = store.lastStageAttempt(stage_id)
        status = data.status().toString()
        if status in ("PENDING", "SKIPPED"):
            continue
        submitted = data.submissionTime()
        seconds = (now_ms - submitted.get().getTime()) / 1000 if submitted.isDefined() else 0.0
        out.append(StageCounts(stage_id, data.numTasks(), data.numCompleteTasks(),
                               data.inputRecords() + data.shuffleReadRecords(), seconds,
                               status == "ACTIVE"))
    return out


def _emit(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextmanager
def progress(spark, label: str, every_s: float = EVERY_S) -> Iterator[None]:
    """Report the Spark jobs of the ``with`` block as ``label`` (see the module docstring).

    The block's thread gets its own job group (the caller's group and description are put
    back afterwards), so only this block's stages are reported.

    Args:
        spark: the SparkSession the block uses.
        label: the pipeline stage, e.g. ``"index"``; it prefixes every line.
        every_s: seconds between progress lines.
    """
    sc = spark.sparkContext
    group = f"{label}-{uuid.uuid4().hex[:8]}"
    previous = {key: sc.getLocalProperty(key) for key in _GROUP_PROPERTIES}
    sc.setJobGroup(group, label)
    start = time.monotonic()
    stop = threading.Event()

    def watch() -> None:
        from py4j.protocol import Py4JError

        while not stop.wait(every_s):
            elapsed = duration(time.monotonic() - start)
            try:
                stages = stage_counts(sc, group)
            except Py4JError:
                return  # the JVM is gone: the block itself fails with the reason
            for stage in stages:
                if stage.active:
                    _emit(f"{label}: Spark stage {stage.stage_id}: {stage.done}/"
                          f"{stage.partitions} partitions, {stage.rows_read:,} rows read, "
                          f"{duration(stage.seconds)} ({label} {elapsed})")

    thread = threading.Thread(target=watch, name=f"progress-{label}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for key, value in previous.items():
            sc.setLocalProperty(key, value)  # None removes the property
    stages = stage_counts(sc, group)
    _emit(f"{label}: done in {duration(time.monotonic() - start)}: {len(stages)} Spark stages, "
          f"{sum(s.done for s in stages):,} partitions, "
          f"{sum(s.rows_read for s in stages):,} rows read (summed over stages)")
