"""Training and evaluation throughput of SCoRe through the real training-loop code.

Measures, in this process (no Ray, one worker: the per-step work is the same as in a Ray
worker), ``trainers.train.train_epoch`` (batch gathering + forward + loss + backward +
row-sparse Adam) in training samples/s and ``trainers.train.validate`` in evaluation
lists/s, at two scales:

  * sample: the sample preset's sizes (``generate.users`` x ``generate.items``: 20,000 x
    6,000; T=9, S=10);
  * taobao-ids: a 5.15M-id table (987,994 users + 4,162,024 items, Table 2) with the same
    T and S: dense set arrays of ~3.7 GB, a 5.15M x d embedding and its Adam moments.

Set arrays are random ids (throughput does not depend on the values); every list has the
config's candidates (1 + train_negatives for training, 1 + eval_negatives for evaluation).
Prints a table, peak RSS, and a torch.profiler breakdown of one training step.

Run: .venv/bin/python benchmarks/train.py [--scales sample,taobao-ids] [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conf.loading import load_config  # noqa: E402
from conf.schema import SLICES  # noqa: E402
from trainers.batches import BatchBuilder, Samples, epoch_rows  # noqa: E402
from trainers.embedding import build_optimizer  # noqa: E402
from trainers.protocols import PROTOCOLS  # noqa: E402
from trainers.registry import DataSizes, build_model  # noqa: E402
from trainers.train import train_epoch, validate  # noqa: E402

_SAMPLE = load_config("sample").generate
SCALES = {"sample": (_SAMPLE.users, _SAMPLE.items), "taobao-ids": (987_994, 4_162_024)}


def random_split(num_users: int, num_items: int, n: int, C: int, target: int,
                 g: torch.Generator) -> Samples:
    return Samples(torch.randint(1, num_users + 1, (n,), generator=g),
                   torch.full((n,), target, dtype=torch.int64),
                   torch.randint(1, num_items + 1, (n, C), generator=g),
                   torch.zeros(n, dtype=torch.int64), torch.ones(n, dtype=torch.int64))


def random_sets(n: int, T: int, S: int, high: tuple[int, int], g: torch.Generator
                ) -> torch.Tensor:
    """(n+1, T, 2, S) int32, ids of kind k in 1..high[k], ~30% empty slices, row 0 padding."""
    sets = torch.stack([torch.randint(1, h + 1, (n + 1, T, S), generator=g, dtype=torch.int32)
                        for h in high], dim=2)
    sets[torch.rand(n + 1, T, generator=g) < 0.3] = 0
    sets[0] = 0
    return sets


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def bench(scale: str, steps: int, threads: int) -> dict[str, float]:
    cfg = load_config("sample", "score")
    num_users, num_items = SCALES[scale]
    T, S, B = cfg.dataset.num_slices, cfg.index.set_size, cfg.train.batch_size
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    user_sets = random_sets(num_users, T, S, (num_items, num_users), g)  # G(u), G(v|u)
    item_sets = random_sets(num_items, T, S, (num_users, num_items), g)  # G(v), G(u|v)
    builder = BatchBuilder(PROTOCOLS[SLICES], frozenset({"slice_sets"}), user_sets, item_sets, T)
    sizes = DataSizes(num_users, num_items, T - 1, S, cfg.index.sequence_max_len)
    torch.manual_seed(0)
    model = build_model("score", dict(cfg.model.params), sizes)
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.l2)
    setup_s = time.perf_counter() - t0

    train = random_split(num_users, num_items, B * steps, 1 + cfg.index.train_negatives, T - 3, g)
    rows = epoch_rows(len(train), 1, 0, 0, 1)
    # Warm-up (allocator, lazy Adam state), then the timed epoch.
    train_epoch(model, model, optimizer, builder, train, rows[:2 * B], B, cfg.train.l2, 1, 1, 0,
                cfg.train.grad_clip)
    _, samples_per_s = train_epoch(model, model, optimizer, builder, train, rows, B,
                                   cfg.train.l2, 1, 1, 1, cfg.train.grad_clip)

    E = cfg.train.eval_batch_size
    valid = random_split(num_users, num_items, E * max(4, steps // 4),
                         1 + cfg.index.eval_negatives, T - 2, g)
    start = time.perf_counter()
    validate(model, builder, valid, E, 0, 1, PROTOCOLS[SLICES])
    lists_per_s = len(valid) / (time.perf_counter() - start)
    return {"scale": scale, "ids": num_users + num_items, "threads": threads,
            "load avg": os.getloadavg()[0],
            "train samples/s": samples_per_s, "eval lists/s": lists_per_s,
            "setup s": setup_s, "peak RSS GiB": peak_rss_gb()}, (model, optimizer, builder,
                                                                  train, rows, B, cfg.train.l2)


def profile_step(model, optimizer, builder, train, rows, B, l2) -> str:
    """torch.profiler table of one training step (batch gather, forward, backward, Adam)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    idx = rows[:B]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("gather_batch"):
            batch = builder.rows(train, idx)
        with record_function("forward"):
            out = model(batch)
            loss = model.loss(out, batch) + l2 * model.regularization()
        with record_function("backward"):
            optimizer.zero_grad()
            loss.backward()
        with record_function("optimizer_step"):
            optimizer.step()
    return prof.key_averages().table(sort_by="cpu_time_total", row_limit=18)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", default="sample,taobao-ids")
    parser.add_argument("--steps", type=int, default=30, help="training steps timed")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    results, last = [], None
    for scale in args.scales.split(","):
        result, last = bench(scale, args.steps, threads)
        results.append(result)
        print(f"done {scale}", flush=True)
    keys = list(results[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in results:
        print("| " + " | ".join(f"{r[k]:,.1f}" if isinstance(r[k], float) else str(r[k])
                                for k in keys) + " |")
    print("\nOne training step, last scale:\n" + profile_step(*last))


if __name__ == "__main__":
    main()
