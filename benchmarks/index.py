"""Benchmark raw -> ingest -> index on generated Taobao-format data of growing size, under
each evaluation protocol.

    .venv/bin/python benchmarks/index.py                        # 1M and 10M rows under data/bench
    .venv/bin/python benchmarks/index.py --rows 1000000 --protocols leave_one_out feedback
    .venv/bin/python benchmarks/index.py --rows 100000000 --protocols slices \\
        --set spark.shuffle_partitions=48 > data/bench/index-100m.log 2>&1 &   # the headline run

Per size: the raw file is generated once (``spark_jobs.sample_data.generate``, reused later,
not timed against the target), the work folder is cleared, then one fresh child process per
protocol (its own JVM, ``spark.driver_memory`` from the config: 12g by default) runs ingest
(the first child only: later ones find it up to date) and the index with ``index.protocol``
set (the protocol is part of the index's config hash, so each child rebuilds it).
leave_one_out runs with the presets' 99 evaluation negatives and 1 training negative,
feedback with 9 and 9. Generated Taobao rows are all positive feedback, so feedback's labels
are all 1: the run measures the index's cost, not the labels.

Printed per (size, protocol): wall time of ingest and of the index with its steps, index
rows/s (input lines / index seconds), CPU seconds of the child's process tree (steadier than
wall time on a shared box), peak RSS of the child's whole process tree (Python driver +
Spark JVM + Python workers, sampled from /proc every 0.2 s), Parquet sizes, and per protocol
the per-row cost ratio between consecutive sizes (1.0 = linear). Users and items grow with
rows in Taobao's proportions (1 user per 100 rows, 1 item per 25 rows). Targets: 100M rows
end to end (slices) <= 15 min on 2 cores, peak <= 16 GiB, per-row cost growing <= 1.3x per
10x.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

from conf.schema import FEEDBACK, LEAVE_ONE_OUT, SLICES
from process_tree import folder_bytes, run_child, sized_overrides


CHILD = """
import json, sys, time
from conf.loading import load_config
from spark_jobs.ingest import run_ingest
from spark_jobs.index import run_index
cfg = load_config("taobao", overrides=json.loads(sys.argv[1]))
t0 = time.perf_counter()
ingest = run_ingest(cfg)
t1 = time.perf_counter()
index = run_index(cfg)
t2 = time.perf_counter()
print("RESULT " + json.dumps({"ingest_s": t1 - t0, "index_s": t2 - t1,
                              "ingest": ingest["manifest"], "index": index["manifest"]}))
"""


def overrides_for(rows: int, scratch: Path, extra: list[str]) -> list[str]:
    """One size's overrides; shuffle partitions grow with rows (about 2M rows each)."""
    partitions = f"spark.shuffle_partitions={max(8, math.ceil(rows / 2_000_000))}"
    return sized_overrides(rows, scratch, "index-work", [partitions, *extra])


PROTOCOL_SETTINGS = {
    SLICES: [],
    LEAVE_ONE_OUT: ["index.eval_negatives=99", "index.train_negatives=1"],
    FEEDBACK: ["index.eval_negatives=9", "index.train_negatives=9"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--protocols", nargs="+", choices=list(PROTOCOL_SETTINGS),
                        default=list(PROTOCOL_SETTINGS))
    parser.add_argument("--scratch", type=Path, default=Path("data/bench"))
    parser.add_argument("--set", dest="extra", action="append", default=[],
                        help="extra config override key.sub=value (e.g. spark.driver_memory=8g)")
    parser.add_argument("--keep", action="store_true", help="keep the work folders afterwards")
    args = parser.parse_args()

    from conf.loading import load_config
    from spark_jobs.sample_data import generate

    table = []
    for rows in args.rows:
        base = overrides_for(rows, args.scratch.resolve(), args.extra)
        cfg = load_config("taobao", overrides=base)
        raw = Path(cfg.paths.raw_dir) / cfg.dataset.files[0]
        if not raw.exists():
            start = time.perf_counter()
            generate(cfg)
            print(f"generated {rows:,} rows in {time.perf_counter() - start:.1f} s -> {raw}",
                  flush=True)
        work = Path(cfg.paths.work_dir)
        shutil.rmtree(work, ignore_errors=True)  # force ingest (once) and every index to run
        for protocol in args.protocols:
            overrides = [*base, f"index.protocol={protocol}", *PROTOCOL_SETTINGS[protocol]]
            result, peak, cpu = run_child(CHILD, overrides)
            lines = result["ingest"]["counts"]["input_lines"]
            idx = result["index"]
            row = {
                "protocol": protocol, "rows": lines,
                "ingest_s": round(result["ingest_s"], 1), "index_s": round(result["index_s"], 1),
                "index_rows_per_s": round(lines / result["index_s"]), "cpu_s": round(cpu, 1),
                "peak_rss_gib": round(peak / 2**30, 2),
                "ingest_mb": round(folder_bytes(work / "ingest") / 2**20, 1),
                "index_mb": round(folder_bytes(work / "index") / 2**20, 1),
                "index_timings": idx["timings"], "index_counts": idx["counts"],
                "partitions": cfg.spark.shuffle_partitions,
            }
            table.append(row)
            print(json.dumps(row), flush=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'protocol':>13} {'rows':>12} {'ingest s':>9} {'index s':>8} {'rows/s':>9}"
          f" {'CPU s':>8} {'peak GiB':>9} {'index MB':>9}  index steps (s)")
    for r in table:
        steps = " ".join(f"{k}={v:.1f}" for k, v in r["index_timings"].items())
        print(f"{r['protocol']:>13} {r['rows']:>12,} {r['ingest_s']:>9.1f} {r['index_s']:>8.1f}"
              f" {r['index_rows_per_s']:>9,} {r['cpu_s']:>8.1f} {r['peak_rss_gib']:>9.2f}"
              f" {r['index_mb']:>9.1f}  {steps}")
    for protocol in args.protocols:
        runs = [r for r in table if r["protocol"] == protocol]
        for a, b in zip(runs, runs[1:]):
            ratio = (b["index_s"] / b["rows"]) / (a["index_s"] / a["rows"])
            print(f"{protocol} index per-row cost {b['rows']:,} / {a['rows']:,}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
