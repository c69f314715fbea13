"""Embedding update cost at Taobao scale: dense Adam vs SparseAdam vs row-sparse lazy Adam.

A SCoRe-like lookup pattern: a batch of B samples, each looking up ~320 ids (target user and
items plus their time-sliced (co-)interaction sets) drawn with a popularity skew from a
5.15M x 16 table. One step = lookup, a cheap loss, backward, optimizer step, so the table
row traffic dominates. Prints one row per method.

Run: .venv/bin/python benchmarks/embedding.py [--rows 5150000] [--batch 1024] [--steps 6]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from trainers.embedding import RowAdam, RowSparseEmbedding


def lookup_ids(rows: int, batch: int, per_sample: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, per_sample) ids, power-law popular: a few rows recur across samples."""
    u = torch.rand(batch, per_sample, generator=gen)
    return (rows * u**3).long().clamp_(1, rows - 1)  # density ~ id^(-2/3)


def dense_adam(rows: int, dim: int):
    emb = nn.Embedding(rows, dim)
    return emb, torch.optim.Adam(emb.parameters(), lr=1e-3)


def sparse_adam(rows: int, dim: int):
    emb = nn.Embedding(rows, dim, sparse=True)
    return emb, torch.optim.SparseAdam(emb.parameters(), lr=1e-3)


def row_adam(rows: int, dim: int):
    emb = RowSparseEmbedding(rows, dim, init_std=0.1)
    return emb, RowAdam([emb], lr=1e-3, weight_decay=1e-5)


def measure(build, args, batches: list[torch.Tensor]) -> tuple[list[float], list[float]]:
    """Wall and process CPU seconds per step (CPU time is steadier on a shared machine)."""
    emb, opt = build(args.rows, args.dim)
    wall, cpu = [], []
    for ids in batches:
        start, start_cpu = time.perf_counter(), time.process_time()
        opt.zero_grad()
        emb(ids).sum(dim=1).pow(2).mean().backward()
        opt.step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall[1:], cpu[1:]  # the first step allocates optimizer state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_150_000)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--ids-per-sample", type=int, default=320)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    batches = [lookup_ids(args.rows, args.batch, args.ids_per_sample, gen)
               for _ in range(args.steps + 1)]
    unique = sum(b.unique().numel() for b in batches) / len(batches)
    print(f"table {args.rows:,} x {args.dim}, batch {args.batch} x {args.ids_per_sample} ids "
          f"(~{unique:,.0f} distinct rows per batch), {torch.get_num_threads()} threads")
    print(f"{'method':<24}{'wall ms/step min':>18}{'median':>9}{'CPU ms/step min':>17}"
          f"{'samples/s (best wall)':>23}")
    for name, build in (("dense Adam", dense_adam), ("SparseAdam", sparse_adam),
                        ("row-sparse lazy Adam", row_adam)):
        wall, cpu = (sorted(t) for t in measure(build, args, batches))
        print(f"{name:<24}{wall[0] * 1e3:>18.1f}{wall[len(wall) // 2] * 1e3:>9.1f}"
              f"{cpu[0] * 1e3:>17.1f}{args.batch / wall[0]:>23,.0f}")


if __name__ == "__main__":
    main()
