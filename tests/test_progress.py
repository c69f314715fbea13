"""Progress lines of long Spark stages (spark_jobs/progress.py) on a tiny slow job."""

from __future__ import annotations

import re
import time

from spark_jobs.progress import duration, progress


def test_progress_lines_per_running_stage_and_a_summary(spark, capsys):
    def slow(rows):  # nested: pickled by value for Spark's Python workers
        for row in rows:
            time.sleep(0.002)  # 500 rows a partition: ~1 s a partition, 2 at a time
            yield row

    sc = spark.sparkContext
    sc.setJobGroup("caller", "caller's job")
    spark.range(0, 10, numPartitions=2).count()  # outside the block: not reported
    with progress(spark, "tiny", every_s=0.3):
        assert spark.range(0, 4000, numPartitions=8).rdd.mapPartitions(slow).count() == 4000
    lines = capsys.readouterr().err.splitlines()
    running = [m for m in map(re.compile(
        r"tiny: Spark stage (\d+): (\d)/8 partitions, ([\d,]+) rows read, \d+s \(tiny \d+s\)$"
    ).match, lines) if m]
    assert len(running) >= 3, lines  # ~4 s of work, a line every 0.3 s
    assert len({m.group(1) for m in running}) == 1  # the one stage of the block
    done = [int(m.group(2)) for m in running]
    rows = [int(m.group(3).replace(",", "")) for m in running]
    assert done == sorted(done) and rows == sorted(rows) and done[-1] > done[0]
    # finished partitions' input rows, plus running ones' as of their last heartbeat
    assert all(500 * d <= r <= 4000 for d, r in zip(done, rows))
    assert re.fullmatch(r"tiny: done in \d+s: 1 Spark stages, 8 partitions, 4,000 rows read "
                        r"\(summed over stages\)", lines[-1]), lines
    # the caller's job group is back
    assert sc.getLocalProperty("spark.jobGroup.id") == "caller"
    assert sc.getLocalProperty("spark.job.description") == "caller's job"
    sc.setLocalProperty("spark.jobGroup.id", None)
    sc.setLocalProperty("spark.job.description", None)


def test_duration():
    assert [duration(s) for s in (0, 42.9, 75.4, 3725)] == ["0s", "42s", "1m15s", "1h02m05s"]
