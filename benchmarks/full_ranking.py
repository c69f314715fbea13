"""Full ranking of every user against every item: the item-table path against the forward
path, and against RecBole 1.2.1's full-sort evaluation of SASRec (issue 24's benchmark).

    .venv/bin/python benchmarks/full_ranking.py [--forward-users 200] [--threads 2]
        [--work data/bench/recbole] [--recbole-result data/bench/recbole/full.json]

1. The Beauty-sized leave-one-out index of benchmarks/recbole_sasrec.py (generated S3-Rec
   ``Bench.txt``, 22k users and 12k items; built by the real ingest and index stages if
   missing).
2. SASRec at its preset's d = 64 (weights as initialised: the time does not depend on
   them), in eval mode. Ours, ``trainers.evaluate.full_ranking`` over **every** test user:
   ``encode_users`` once per user, one matmul per 256 users and item chunk with the item
   table, the user's history masked. The path before it, ``_above_by_forward`` (every item
   chunk through ``forward``, the history re-read per chunk), on a seeded sample of
   ``--forward-users`` users, timed and scaled to every user; on those users both paths
   must give the same ranks (checked).
3. RecBole: benchmarks/recbole_runner.py in RecBole's own venv with ``--mode full``
   (``full_sort_predict`` over all users, history masked), one training epoch; its test
   evaluation time is the figure.

Prints a table: seconds for every user, users per second, and the two ratios. Measured
(22,315 users, 11,844 items, 2 torch threads, a quiet 2-core box): ours 3.0 s (7,452
users/s); the forward path 45.9 s scaled (15.3x slower); RecBole 7.3 s (2.4x slower). The
first draft of ours looked each (user, item) of a chunk up in the sorted history keys
(B x I binary searches): 43.7 s; the history mask is now scattered from each user's own
key range (``_known_items``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.recbole_sasrec import RECBOLE_PYTHON, SASREC, config
from trainers.evaluate import (
    _above_by_forward,
    _above_by_item_table,
    _history_keys,
    full_ranking,
)
from trainers.registry import build_model, model_class, variable_length
from trainers.split_data import declared_inputs, load_split_data


def build_index(cfg) -> None:
    from spark_jobs.index import run_index
    from spark_jobs.ingest import run_ingest
    from spark_jobs.sample_data import generate, why_generate

    if why_generate(cfg) is not None:
        generate(cfg)
    run_ingest(cfg)
    run_index(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forward-users", type=int, default=200,
                        help="users the forward path ranks (its time is scaled to all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench" / "recbole")
    parser.add_argument("--recbole-result", type=Path, default=None,
                        help="reuse RecBole's JSON of an earlier --mode full run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = config(args.work.resolve(), "by_length", 256, 2024)
    build_index(cfg)
    required, optional = declared_inputs(model_class("sasrec"))
    data = load_split_data(cfg, required, ("test",), "cpu", optional)
    torch.manual_seed(0)
    model = build_model("sasrec", dict(cfg.model.params), data.sizes).eval()
    data.builder.trim_padding = variable_length(model)
    test, num_items = data.splits["test"], data.sizes.num_items
    chunk = cfg.train.eval_batch_size * test.candidates.shape[1]

    start = time.perf_counter()
    ours = full_ranking(model, data.builder, test, num_items, None, 0, chunk, data.events)
    ours_s = time.perf_counter() - start
    users = int(ours["users"])

    g = torch.Generator().manual_seed(0)
    rows = test.take(torch.randperm(len(test), generator=g)[:args.forward_users])
    known = torch.unique(torch.cat([
        _history_keys(data.events, rows.user, rows.cut, num_items),
        rows.user * (num_items + 1) + rows.candidates[:, 0]]))
    with torch.no_grad():
        start = time.perf_counter()
        by_forward = _above_by_forward(model, data.builder, rows, known, num_items, chunk)
        forward_s = (time.perf_counter() - start) * users / len(rows)
        by_table = _above_by_item_table(model, data.builder, rows, known, num_items, chunk)
    if not torch.equal(by_forward, by_table):
        sys.exit("the two paths rank differently: the benchmark's numbers would be meaningless")

    recbole_out = args.recbole_result or args.work / "recbole-full.json"
    if args.recbole_result is None:
        if not RECBOLE_PYTHON.exists():
            sys.exit(f"RecBole's venv is missing: see benchmarks/recbole_runner.py for the "
                     f"install line ({RECBOLE_PYTHON})")
        subprocess.run([str(RECBOLE_PYTHON), str(ROOT / "benchmarks" / "recbole_runner.py"),
                        "--sequences", str(Path(cfg.paths.raw_dir) / "Bench.txt"),
                        "--epochs", "1", "--mode", "full", "--out", str(recbole_out),
                        "--threads", str(args.threads), "--embed-dim", "64",
                        *(f"--{k}={v}" for k, v in (("blocks", SASREC["num_blocks"]),
                                                    ("heads", SASREC["num_heads"]),
                                                    ("dropout", SASREC["dropout"]))),
                        "--max-len", "50", "--lr", "0.001", "--batch-size", "256"],
                       check=True, env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
                       cwd=args.work)
    recbole = json.loads(recbole_out.read_text())
    recbole_s = recbole["test_seconds"]

    print(f"\n{users} users, {num_items} items, d = {SASREC['embed_dim']}, "
          f"{args.threads} torch threads; SASRec full ranking of every test user\n")
    print("| path | users | seconds | users/s | ours is faster by |")
    print("|---|---|---|---|---|")
    table = (("ours: encode_users + item-table matmuls", users, ours_s),
             (f"before: item chunks through forward ({len(rows)} users, scaled to all)", users,
              forward_s),
             ("RecBole 1.2.1: full_sort_predict", recbole["users"], recbole_s))
    for name, n, seconds in table:
        ratio = "" if seconds is ours_s else f"{(seconds / n) / (ours_s / users):.1f}x"
        print(f"| {name} | {n} | {seconds:.1f} | {n / seconds:.0f} | {ratio} |")
    print(f"\nours: HR@10 {ours['hr@10']:.4f} (untrained weights: a speed figure only)")


if __name__ == "__main__":
    main()
