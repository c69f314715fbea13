"""SCoRe training-step throughput: forward + backward + optimizer step on random batches.

A training sample is one (user, positive) with one sampled negative: C = 2 candidate pairs.
Default sizes: B = 1024 samples, H = 8 slices, S = 10, the model sizes of
conf/models/score.yaml, and two id tables: 200k ids and Taobao's ~5.15M ids. About a third
of the slices are all-empty, as early slices are in real data. Prints wall time (min and
median of the steps) and process CPU time per step; on a shared machine the CPU time is the
steadier number.

Run: .venv/bin/python benchmarks/score.py [--steps 8] [--threads 2] [--params JSON]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from conf.loading import load_config
from trainers.embedding import build_optimizer
from trainers.registry import DataSizes, build_model


def random_batch(sizes: DataSizes, batch: int, candidates: int,
                 gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A batch with the registry's fields; ids uniform over each id range."""
    H, S, M, N = sizes.history_slices, sizes.set_size, sizes.num_users, sizes.num_items
    users = lambda *shape: torch.randint(1, M + 1, shape, generator=gen)  # noqa: E731
    items = lambda *shape: torch.randint(1, N + 1, shape, generator=gen)  # noqa: E731
    user_sets = torch.stack([items(batch, H, S), users(batch, H, S)], dim=2)
    item_sets = torch.stack([users(batch, candidates, H, S), items(batch, candidates, H, S)], dim=3)
    user_sets[:, : H // 3] = 0
    item_sets[:, :, : H // 3] = 0
    label = torch.zeros(batch, candidates)
    label[:, 0] = 1.0
    return {"user": users(batch), "items": items(batch, candidates), "user_sets": user_sets,
            "item_sets": item_sets, "label": label}


def measure(num_ids: int, args) -> tuple[list[float], list[float]]:
    cfg = load_config("sample", "score")
    half = num_ids // 2
    sizes = DataSizes(num_users=half, num_items=num_ids - half, history_slices=args.slices,
                      set_size=args.set_size, sequence_len=1)
    model = build_model("score", {**cfg.model.params, **args.params}, sizes).train()
    opt = build_optimizer(model, lr=cfg.train.lr, l2=cfg.train.l2)
    gen = torch.Generator().manual_seed(0)
    batches = [random_batch(sizes, args.batch, 2, gen) for _ in range(4)]
    wall, cpu = [], []
    for step in range(args.steps + 2):
        batch = batches[step % len(batches)]
        start, start_cpu = time.perf_counter(), time.process_time()
        opt.zero_grad()
        out = model(batch)
        (model.loss(out, batch) + cfg.train.l2 * model.regularization()).backward()
        opt.step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return sorted(wall[2:]), sorted(cpu[2:])  # two warm-up steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--set-size", type=int, default=10)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--ids", type=int, nargs="+", default=[200_000, 5_150_000])
    parser.add_argument("--params", type=json.loads, default={},
                        help='model.params overrides as JSON, e.g. \'{"hidden_dim": 16}\'')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"B={args.batch} samples (2 pairs each), H={args.slices}, S={args.set_size}, "
          f"{args.threads} threads, params overrides {args.params}")
    print(f"{'table ids':>12}{'wall ms min':>13}{'median':>9}{'CPU ms min':>12}"
          f"{'samples/s (min wall)':>22}{'(median wall)':>15}")
    for num_ids in args.ids:
        wall, cpu = measure(num_ids, args)
        median = wall[len(wall) // 2]
        print(f"{num_ids:>12,}{wall[0] * 1e3:>13.0f}{median * 1e3:>9.0f}{cpu[0] * 1e3:>12.0f}"
              f"{args.batch / wall[0]:>22,.0f}{args.batch / median:>15,.0f}")


if __name__ == "__main__":
    main()
