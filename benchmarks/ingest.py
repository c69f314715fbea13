"""Benchmark the ingest stage on generated Taobao-format files of growing size.

    .venv/bin/python benchmarks/ingest.py                      # 1M and 10M rows under data/bench
    .venv/bin/python benchmarks/ingest.py --rows 1000000 --scratch /big/disk/bench \
        --set spark.driver_memory=8g

For each size the raw file is generated once (``spark_jobs.sample_data.generate``; reused on
later runs) and ingest runs in a fresh child process, so each size gets its own JVM and the
peak memory is that run's alone. Peak RSS is the largest sum over the child's process tree
(Python driver + the Spark JVM it starts), sampled from /proc every 0.2 s; CPU seconds are
that tree's user+system time, which a busy shared machine inflates less than wall time.
Quarantine counts must equal the malformed lines generate() reports. Output size is
the published ``<work>/ingest`` folder on disk. Users and items grow with rows in Taobao's
proportions (about 1 user per 100 rows and 1 item per 25 rows).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from process_tree import folder_bytes, run_child, sized_overrides

CHILD = """
import json, sys, time
from conf.loading import load_config
from spark_jobs.ingest import run_ingest
cfg = load_config("sample", overrides=json.loads(sys.argv[1]))
start = time.perf_counter()
result = run_ingest(cfg)
print("RESULT " + json.dumps({"seconds": time.perf_counter() - start,
                              "skipped": result["skipped"], "manifest": result["manifest"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--scratch", type=Path, default=Path("data/bench"))
    parser.add_argument("--set", dest="extra", action="append", default=[],
                        help="extra config override key.sub=value (e.g. spark.driver_memory=8g)")
    args = parser.parse_args()

    from conf.loading import load_config
    from spark_jobs.sample_data import generate

    table = []
    for rows in args.rows:
        overrides = sized_overrides(rows, args.scratch.resolve(), "work", args.extra)
        cfg = load_config("sample", overrides=overrides)
        raw = Path(cfg.paths.raw_dir) / cfg.dataset.files[0]
        made = raw.parent / "generate.json"  # generate's own counts, kept for reruns
        if not made.exists():
            start = time.perf_counter()
            made.parent.mkdir(parents=True, exist_ok=True)
            made.write_text(json.dumps(generate(cfg), default=str))
            print(f"generated {rows:,} rows in {time.perf_counter() - start:.1f} s -> {raw}")
        malformed = json.loads(made.read_text())["malformed"]
        work = Path(cfg.paths.work_dir) / "ingest"
        if work.exists():  # force a real run: the skip rule would make it a no-op
            (work / "manifest.json").unlink()
        result, peak, cpu = run_child(CHILD, overrides)
        counts = result["manifest"]["counts"]
        found = {k: v for k, v in counts["quarantined"].items() if v}
        if found != {k: v for k, v in malformed.items() if v}:
            raise RuntimeError(f"quarantine {found} differs from generated malformed {malformed}")
        table.append({
            "rows": counts["input_lines"],
            "raw_mb": raw.stat().st_size / 2**20,
            "seconds": result["seconds"],
            "cpu_seconds": cpu,
            "rows_per_s": counts["input_lines"] / result["seconds"],
            "peak_rss_gib": peak / 2**30,
            "output_mb": folder_bytes(work) / 2**20,
            "kept": counts["kept"],
            "quarantined": sum(counts["quarantined"].values()),
            "timings": result["manifest"]["timings"],
        })
        print(json.dumps(table[-1]))

    load = os.getloadavg()[0]
    print(f"\nmachine: {os.cpu_count()} cores, load average {load:.1f} at the end (shared box)")
    print(f"{'rows':>12} {'raw MB':>8} {'seconds':>8} {'CPU s':>8} {'rows/s':>10} "
          f"{'peak RSS GiB':>13} {'output MB':>10} {'kept':>12} {'quarantined':>12}")
    for r in table:
        print(f"{r['rows']:>12,} {r['raw_mb']:>8.0f} {r['seconds']:>8.1f} {r['cpu_seconds']:>8.1f} "
              f"{r['rows_per_s']:>10,.0f} {r['peak_rss_gib']:>13.2f} {r['output_mb']:>10.1f} "
              f"{r['kept']:>12,} {r['quarantined']:>12,}")


if __name__ == "__main__":
    main()
