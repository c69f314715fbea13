"""Training-step throughput of the SCoRe baselines (and SCoRe for reference) on random batches.

A training sample is one (user, positive) with one sampled negative: C = 2 candidates.
Default sizes: B = 1024, H = 8 slices (Taobao/sample: T = 9), S = 10, L = 50 (the
``index.sequence_max_len`` default), 100k users and 100k items, each model's preset
(conf/models/<name>.yaml). About 30% of set slots and a random share of each sequence are
padding. For each model it times forward + loss + backward ("fwd+bwd") and the full step
with the row-sparse optimizer ("step"): the best wall time over the steps, as samples/s,
and the process CPU seconds per step, the steadier number on a shared machine.

Run: .venv/bin/python benchmarks/baselines.py [--models svdpp,rrn] [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conf.loading import load_config  # noqa: E402
from trainers.embedding import build_optimizer  # noqa: E402
from trainers.registry import Batch, DataSizes, build_model  # noqa: E402

MODELS = "svdpp,delf,gru4rec,caser,sasrec,rrn,deems,score"


def random_batch(sizes: DataSizes, B: int, C: int, gen: torch.Generator) -> Batch:
    """Every batch field of trainers/registry.py; ~30% padding in sets and sequences."""
    H, S, L = sizes.history_slices, sizes.set_size, sizes.sequence_len

    def ids(high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(1, high + 1, shape, generator=gen) * (
            torch.rand(shape, generator=gen) > 0.3)

    lengths = torch.randint(0, L + 1, (B,), generator=gen)
    label = torch.zeros(B, C)
    label[:, 0] = 1.0
    return {
        "user": torch.randint(1, sizes.num_users + 1, (B,), generator=gen),
        "items": torch.randint(1, sizes.num_items + 1, (B, C), generator=gen),
        "label": label,
        "user_sets": torch.stack([ids(sizes.num_items, (B, H, S)),
                                  ids(sizes.num_users, (B, H, S))], dim=2),
        "item_sets": torch.stack([ids(sizes.num_users, (B, C, H, S)),
                                  ids(sizes.num_items, (B, C, H, S))], dim=3),
        "sequence": torch.randint(1, sizes.num_items + 1, (B, L), generator=gen)
        * (torch.arange(L) >= L - lengths[:, None]),
    }


def time_steps(name: str, sizes: DataSizes, batch: Batch, steps: int) -> dict[str, float]:
    """Best wall seconds and mean CPU seconds per step, without and with optimizer step."""
    torch.manual_seed(0)
    params = dict(load_config("sample", name, "local", []).model.params)
    model = build_model(name, params, sizes).train()
    optimizer = build_optimizer(model, lr=1e-3, l2=1e-5)

    def step(update: bool) -> None:
        optimizer.zero_grad()
        loss = model.loss(model(batch), batch) + 1e-5 * model.regularization()
        loss.backward()
        if update:
            optimizer.step()
        else:  # forget the rows this step touched, as step() would
            for table in (m for m in model.modules() if hasattr(m, "touched")):
                table.touched = []

    step(True)  # warm-up (allocations, lazy init)
    out = {"params": float(sum(p.numel() for p in model.parameters()))}
    for label, update in (("fwd+bwd", False), ("step", True)):
        walls, cpu0 = [], time.process_time()
        for _ in range(steps):
            start = time.perf_counter()
            step(update)
            walls.append(time.perf_counter() - start)
        out[f"{label}_wall"] = min(walls)
        out[f"{label}_cpu"] = (time.process_time() - cpu0) / steps
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = DataSizes(num_users=100_000, num_items=100_000, history_slices=8, set_size=10,
                      sequence_len=50)
    batch = random_batch(sizes, args.batch, 2, torch.Generator().manual_seed(0))
    print(f"B={args.batch} C=2 H=8 S=10 L=50, {args.threads} threads, torch {torch.__version__}")
    print(f"{'model':8s} {'params':>9s} {'fwd+bwd/s':>10s} {'cpu s':>7s} {'step/s':>8s} "
          f"{'cpu s':>7s}")
    for name in args.models.split(","):
        r = time_steps(name, sizes, batch, args.steps)
        print(f"{name:8s} {r['params']:9.0f} {args.batch / r['fwd+bwd_wall']:10.0f} "
              f"{r['fwd+bwd_cpu']:7.2f} {args.batch / r['step_wall']:8.0f} {r['step_cpu']:7.2f}",
              flush=True)


if __name__ == "__main__":
    main()
