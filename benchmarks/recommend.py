"""Top-100 for every user: users/s and peak RSS of trainers/top_k.py, the scorer each Ray
Data actor of ``seqrec recommend`` runs (issue 24), on a Beauty-shaped catalogue.

Two paths, each in its own process (so each peak RSS is its own):
  * fast: a next-item model (SASRec, d = 64, L = 50) encodes each user once and scores all
    items by matmul (``NextItemRecommender``);
  * rerank: a target-aware model (DIN, the feedback preset) scores the 500 most popular
    unseen items of each user through ``forward``.

The histories are drawn (8.6 events a user, popularity-skewed items, as the Amazon 5-core
files); the models are untrained (speed does not depend on the weights).

    .venv/bin/python benchmarks/recommend.py                  # 100k users x 12k items
    .venv/bin/python benchmarks/recommend.py --users 20000 --paths rerank
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {"fast": ("sasrec", "sample-loo"), "rerank": ("din", "sample-feedback")}


def snapshot(users: int, items: int, per_user: float, protocol: str, seed: int = 0):
    import numpy as np

    from trainers.snapshot import Snapshot

    rng = np.random.default_rng(seed)
    lengths = np.maximum(5, rng.poisson(per_user, users))
    offsets = np.zeros(users + 2, dtype=np.int64)
    np.cumsum(lengths, out=offsets[2:])
    weights = 1.0 / np.arange(1, items + 1) ** 0.8
    flat = rng.choice(np.arange(1, items + 1), size=int(lengths.sum()), p=weights / weights.sum())
    return Snapshot(protocol=protocol, num_slices=0, string_ids=False,
                    user_ids=np.arange(users + 1).astype(str),
                    item_ids=np.arange(items + 1).astype(str), offsets=offsets,
                    items=flat.astype(np.int32),
                    labels=(rng.random(len(flat)) < 0.8).astype(np.int8), slices=None,
                    user_sets=None, item_sets=None)


def measure(path: str, users: int, items: int, k: int, batch: int, candidates: int) -> dict:
    import torch

    from conf.loading import load_config
    from trainers.registry import DataSizes, build_model
    from trainers.top_k import TopK

    torch.set_num_threads(2)
    name, dataset = MODELS[path]
    cfg = load_config(dataset, name, "local", [])
    snap = snapshot(users, items, 8.6, cfg.index.protocol)
    L = cfg.index.sequence_max_len
    model = build_model(name, dict(cfg.model.params), DataSizes(users, items, 0, 0, L))
    top = TopK(model, snap, users, L)
    started = time.perf_counter()
    for lo in range(1, users + 1, batch):
        top.top(torch.arange(lo, min(lo + batch, users + 1)), k, True, candidates)
    seconds = time.perf_counter() - started
    return {"path": path, "model": name, "users": users, "items": items, "k": k,
            "seconds": round(seconds, 2), "users_per_s": round(users / seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=12_101)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256, help="recommend.users_per_batch")
    parser.add_argument("--candidates", type=int, default=500, help="recommend.candidates")
    parser.add_argument("--paths", default="fast,rerank")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one path
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.users, args.items, args.k, args.batch,
                                 args.candidates)))
        return
    rows = []
    for path in args.paths.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", path, "--users",
                              str(args.users), "--items", str(args.items), "--k", str(args.k),
                              "--batch", str(args.batch), "--candidates", str(args.candidates)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print("| path | model | users | items | k | seconds | users/s | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['model']} | {r['users']:,} | {r['items']:,} | {r['k']} | "
              f"{r['seconds']} | {r['users_per_s']:,} | {r['peak_rss_mb']:,} |")
    print("\nGPU: not measured here (run the same command on a GPU machine: TopK runs on "
          "the actor's device).")


if __name__ == "__main__":
    main()
