"""Benchmark raw -> ingest -> index on generated Taobao-format data of growing size.

    .venv/bin/python benchmarks/index.py                        # 1M and 10M rows under data/bench
    .venv/bin/python benchmarks/index.py --rows 100000000 \\
        --set spark.shuffle_partitions=48 > data/bench/index-100m.log 2>&1 &   # the headline run

Per size: the raw file is generated once (``spark_jobs.sample_data.generate``, reused later,
not timed against the target), then ingest and index run in one fresh child process (its
own JVM, ``spark.driver_memory`` from the config: 12g by default), both forced to rerun.
Printed: wall time per stage (ingest; index steps slices, user_sets, item_sets, popularity,
samples, sequences), rows/s end to end, CPU seconds of the child's process tree (steadier
than wall time on a shared box), peak RSS of the child's whole process tree (Python
driver + Spark JVM + Python workers, sampled from /proc every 0.2 s), Parquet sizes, and the
per-row cost ratio between consecutive sizes (1.0 = linear). Users and items grow with rows in
Taobao's proportions (1 user per 100 rows, 1 item per 25 rows). Targets: 100M rows end to end
<= 15 min on 2 cores, peak <= 16 GiB, per-row cost growing <= 1.3x per 10x.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--scratch", type=Path, default=Path("data/bench"))
    parser.add_argument("--set", dest="extra", action="append", default=[],
                        help="extra config override key.sub=value (e.g. spark.driver_memory=8g)")
    parser.add_argument("--keep", action="store_true", help="keep the work folders afterwards")
    args = parser.parse_args()

    from conf.loading import load_config
    from spark_jobs.sample_data import generate

    table = []
    for rows in args.rows:
        overrides = overrides_for(rows, args.scratch.resolve(), args.extra)
        cfg = load_config("taobao", overrides=overrides)
        raw = Path(cfg.paths.raw_dir) / cfg.dataset.files[0]
        if not raw.exists():
            start = time.perf_counter()
            generate(cfg)
            print(f"generated {rows:,} rows in {time.perf_counter() - start:.1f} s -> {raw}",
                  flush=True)
        work = Path(cfg.paths.work_dir)
        shutil.rmtree(work, ignore_errors=True)  # force both stages to run
        result, peak, cpu = run_child(CHILD, overrides)
        total = result["ingest_s"] + result["index_s"]
        lines = result["ingest"]["counts"]["input_lines"]
        idx = result["index"]
        row = {
            "rows": lines, "ingest_s": round(result["ingest_s"], 1),
            "index_s": round(result["index_s"], 1), "total_s": round(total, 1),
            "rows_per_s": round(lines / total), "cpu_s": round(cpu, 1),
            "peak_rss_gib": round(peak / 2**30, 2),
            "ingest_mb": round(folder_bytes(work / "ingest") / 2**20, 1),
            "index_mb": round(folder_bytes(work / "index") / 2**20, 1),
            "index_timings": idx["timings"], "index_counts": idx["counts"],
            "capped": idx["capped"], "empty_share": idx["empty_share"],
            "partitions": cfg.spark.shuffle_partitions,
        }
        table.append(row)
        print(json.dumps(row), flush=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    steps = ("slices", "user_sets", "item_sets", "popularity", "samples", "sequences")
    print(f"\n{'rows':>12} {'ingest s':>9} " + " ".join(f"{s:>10}" for s in steps)
          + f" {'total s':>8} {'rows/s':>9} {'CPU s':>8} {'peak GiB':>9} {'ingest MB':>10}"
            f" {'index MB':>9}")
    for r in table:
        print(f"{r['rows']:>12,} {r['ingest_s']:>9.1f} "
              + " ".join(f"{r['index_timings'].get(s, 0):>10.1f}" for s in steps)
              + f" {r['total_s']:>8.1f} {r['rows_per_s']:>9,} {r['cpu_s']:>8.1f}"
              f" {r['peak_rss_gib']:>9.2f}"
              f" {r['ingest_mb']:>10.1f} {r['index_mb']:>9.1f}")
    for a, b in zip(table, table[1:]):
        ratio = (b["total_s"] / b["rows"]) / (a["total_s"] / a["rows"])
        print(f"per-row cost {b['rows']:,} / {a['rows']:,}: {ratio:.2f}x "
              f"(ingest {(b['ingest_s'] / b['rows']) / (a['ingest_s'] / a['rows']):.2f}x, "
              f"index {(b['index_s'] / b['rows']) / (a['index_s'] / a['rows']):.2f}x)")


if __name__ == "__main__":
    main()
