"""Training throughput of DFAR (each attention variant), THA4Rec and the feedback baselines
(DIN, DIEN, DFN, FeedRec) on a generated Amazon-Toys-sized feedback dataset.

The data is built in memory (no Spark): 6,919 users and 28,695 items (DFAR Table 1,
"Amazon"); each user has 10 + Geometric events (mean 17.39, the table's records per user,
~120k records), items uniform, labels positive with probability ``--positive-share``
(not fitted to any result). As the ``feedback`` protocol trains: every event after a user's
first is a row whose history is the last L = 20 earlier (item, label) events, left-padded,
and whose candidates are the real event (its label) + 9 uniform items (label 0; they are
not filtered against the user's items, which does not change the cost). All rows count as
one epoch (the protocol holds the last two active days out; the sizes stay within ~15%).

For each model (its preset, batch ``--batch`` = 200 rows as the DFAR paper trains Amazon)
it times the full training step (forward, loss + L2, backward, row-sparse Adam step) on
``--steps`` consecutive batches after one warm-up step: samples/s (rows/s) from the median
step, and seconds per epoch = rows / samples/s. The machine may be shared: the CPU seconds
per step are printed beside the wall time.

Run: .venv/bin/python benchmarks/dfar.py [--models dfar,din] [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conf.loading import load_config  # noqa: E402
from trainers.embedding import build_optimizer  # noqa: E402
from trainers.registry import Batch, DataSizes, build_model  # noqa: E402

USERS, ITEMS, RECORDS_PER_USER, MIN_EVENTS, L, NEGATIVES = 6919, 28695, 17.39, 10, 20, 9
# (label, preset, overrides): DFAR's attention variants (Table 3's w/o FHA and w/o MO)
VARIANTS = {
    "dfar": ("dfar", {}),
    "dfar-nomo": ("dfar", {"label_mask": False}),
    "dfar-tha": ("dfar", {"attention": "tha", "label_mask": False}),
    "dfar-mha": ("dfar", {"attention": "mha", "label_mask": False}),
    "tha4rec": ("tha4rec", {}),
    "din": ("din", {}),
    "dien": ("dien", {}),
    "dfn": ("dfn", {}),
    "feedrec": ("feedrec", {}),
}


def feedback_rows(seed: int, positive_share: float) -> dict[str, np.ndarray]:
    """Every training row of the generated dataset: history (R, L), its labels, target, label."""
    rng = np.random.default_rng(seed)
    lengths = MIN_EVENTS - 1 + rng.geometric(1 / (RECORDS_PER_USER - MIN_EVENTS + 1), USERS)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    items = rng.integers(1, ITEMS + 1, lengths.sum())
    labels = (rng.random(lengths.sum()) < positive_share).astype(np.int64)
    owner = np.repeat(np.arange(USERS), lengths)
    targets = np.flatnonzero(np.arange(lengths.sum()) > starts[owner])  # not a user's first
    back = targets[:, None] - np.arange(L, 0, -1)[None, :]  # (R, L) positions, oldest first
    real = back >= starts[owner[targets]][:, None]
    back = np.where(real, back, 0)
    return {"user": owner[targets] + 1, "sequence": np.where(real, items[back], 0),
            "sequence_label": np.where(real, labels[back], 0), "target": items[targets],
            "target_label": labels[targets], "records": np.array(lengths.sum())}


def batch_at(rows: dict[str, np.ndarray], index: np.ndarray, rng: np.random.Generator) -> Batch:
    """The batch contract of the ``feedback`` protocol for the rows ``index``."""
    B = len(index)
    items = np.concatenate([rows["target"][index, None],
                            rng.integers(1, ITEMS + 1, (B, NEGATIVES))], axis=1)
    label = np.zeros((B, 1 + NEGATIVES), np.float32)
    label[:, 0] = rows["target_label"][index]
    return {"user": torch.from_numpy(rows["user"][index]), "items": torch.from_numpy(items),
            "label": torch.from_numpy(label),
            "sequence": torch.from_numpy(rows["sequence"][index]),
            "sequence_label": torch.from_numpy(rows["sequence_label"][index])}


def time_model(preset: str, overrides: dict, rows: dict[str, np.ndarray], batch_size: int,
               steps: int) -> dict[str, float]:
    """Median wall and mean CPU seconds of a full training step over ``steps`` batches."""
    torch.manual_seed(0)
    cfg = load_config("sample", preset, "local", [])
    sizes = DataSizes(num_users=USERS, num_items=ITEMS, history_slices=0, set_size=0,
                      sequence_len=L)
    model = build_model(preset, {**dict(cfg.model.params), **overrides}, sizes).train()
    optimizer = build_optimizer(model, lr=cfg.train.lr, l2=cfg.train.l2)
    rng = np.random.default_rng(1)
    order = rng.permutation(len(rows["target"]))
    walls, cpu = [], 0.0
    for s in range(steps + 1):
        batch = batch_at(rows, order[s * batch_size:(s + 1) * batch_size], rng)
        start, cpu0 = time.perf_counter(), time.process_time()
        optimizer.zero_grad()
        loss = model.loss(model(batch), batch) + cfg.train.l2 * model.regularization()
        loss.backward()
        optimizer.step()
        if s:  # step 0 warms up (allocations, lazy init)
            walls.append(time.perf_counter() - start)
            cpu += time.process_time() - cpu0
    return {"params": float(sum(p.numel() for p in model.parameters())),
            "wall": statistics.median(walls), "cpu": cpu / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--positive-share", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    unknown = set(args.models.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    rows = feedback_rows(args.seed, args.positive_share)
    R = len(rows["target"])
    print(f"{USERS} users, {ITEMS} items, {int(rows['records'])} records, {R} training rows "
          f"(C = {1 + NEGATIVES}, L = {L}); batch {args.batch}, {args.threads} threads, "
          f"torch {torch.__version__}")
    print(f"{'model':10s} {'params':>9s} {'samples/s':>10s} {'s/epoch':>8s} {'wall s':>7s} "
          f"{'cpu s':>7s}")
    for name in args.models.split(","):
        preset, overrides = VARIANTS[name]
        r = time_model(preset, overrides, rows, args.batch, args.steps)
        rate = args.batch / r["wall"]
        print(f"{name:10s} {r['params']:9.0f} {rate:10.0f} {R / rate:8.1f} {r['wall']:7.3f} "
              f"{r['cpu']:7.3f}", flush=True)


if __name__ == "__main__":
    main()
