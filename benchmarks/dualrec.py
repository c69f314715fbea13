"""Training throughput of SASRec, DualRec and the dual backbones on Beauty-sized sequences.

Generates, in memory (no Spark), a leave-one-out training split of Beauty's size (PROTOCOLS
§2: 22,363 users, 12,101 items, 198,502 interactions): each user's length is 5 + a geometric
draw (mean ~9 events, the 5-core's floor), items drawn from a Zipf-like popularity. One
training row per user as the ``leave_one_out`` protocol builds it: ``sequence`` = the events
before position n-3 (the last L = 50, left-padded), ``items`` = [target, one uniform
negative], ``label`` = [1, 0]. Each model then trains one epoch the way trainers/train.py's
``train_epoch`` does (forward, ``loss`` + ``train.l2`` x ``regularization()``, backward,
``build_optimizer``'s step), at batch 256 with ``torch.set_num_threads`` threads; the table
gives seconds per epoch and training rows per second. Model hyper-parameters are the
conf/models/<name>.yaml presets; SASRec is run at d = 64 (its preset's d = 16 is SCoRe's
size; DualRec's comparison uses d = 64).

Run: .venv/bin/python benchmarks/dualrec.py [--models sasrec,dualrec,dual_gru4rec,dual_fmlp]
     [--threads 2] [--steps 0 (whole epoch; N > 0 times N steps and scales to an epoch)]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainers.embedding import build_optimizer  # noqa: E402
from trainers.registry import DataSizes, build_model  # noqa: E402

USERS, ITEMS, INTERACTIONS = 22_363, 12_101, 198_502  # Beauty after the 5-core (PROTOCOLS §2)
L, BATCH, LR, L2 = 50, 256, 1e-3, 1e-4  # DualRec's settings (PROTOCOLS §3)
OVERRIDES = {"sasrec": {"embed_dim": 64}}


def beauty_sized_rows(seed: int) -> dict[str, torch.Tensor]:
    """One leave-one-out training row per generated user (batch fields, unbatched)."""
    g = torch.Generator().manual_seed(seed)
    extra_mean = INTERACTIONS / USERS - 5
    geometric = torch.distributions.Geometric(probs=torch.tensor(1 / (1 + extra_mean)))
    lengths = 5 + geometric.sample((USERS,)).long()  # (U,): >= 5 events
    popularity = 1 / torch.arange(1, ITEMS + 1, dtype=torch.float64) ** 0.8
    events = torch.multinomial(popularity, int(lengths.sum()), replacement=True, generator=g) + 1
    sequence = torch.zeros(USERS, L, dtype=torch.int64)
    targets = torch.empty(USERS, dtype=torch.int64)
    for u, seq in enumerate(events.split(lengths.tolist())):
        cut = len(seq) - 3  # train target: position n-3; valid n-2, test n-1
        history = seq[:cut][-L:]
        sequence[u, L - len(history):] = history
        targets[u] = seq[cut]
    negatives = torch.randint(1, ITEMS + 1, (USERS,), generator=g)
    return {"user": torch.arange(1, USERS + 1), "sequence": sequence,
            "items": torch.stack([targets, negatives], 1),
            "label": torch.tensor([1.0, 0.0]).expand(USERS, 2).contiguous(),
            "interactions": lengths.sum()}


def train_epoch(name: str, rows: dict[str, torch.Tensor], steps: int) -> tuple[float, float]:
    """(seconds for one epoch, rows per second) of one model."""
    params = yaml.safe_load((ROOT / "conf" / "models" / f"{name}.yaml").read_text())
    params = {**params["model"]["params"], **OVERRIDES.get(name, {})}
    sizes = DataSizes(num_users=USERS, num_items=ITEMS, history_slices=0, set_size=0,
                      sequence_len=L)
    torch.manual_seed(0)
    model = build_model(name, params, sizes)
    optimizer = build_optimizer(model, LR, L2)
    model.train()
    order = torch.randperm(USERS)
    total_steps = -(-USERS // BATCH)
    run = total_steps if steps <= 0 else min(steps, total_steps)
    start = time.perf_counter()
    done = 0
    for step in range(run):
        idx = order[step * BATCH:(step + 1) * BATCH]
        batch = {k: v[idx] for k, v in rows.items() if k != "interactions"}
        optimizer.zero_grad()
        loss = model.loss(model(batch), batch) + L2 * model.regularization()
        loss.backward()
        optimizer.step()
        done += len(idx)
    seconds = time.perf_counter() - start
    return seconds * USERS / done, done / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sasrec,dualrec,dual_gru4rec,dual_fmlp")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=0,
                        help="0: the whole epoch; N: time N steps and scale to an epoch")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = beauty_sized_rows(args.seed)
    print(f"{USERS} users, {ITEMS} items, {int(rows['interactions'])} interactions; "
          f"batch {BATCH}, L {L}, {args.threads} threads"
          + (f", {args.steps} steps scaled to an epoch" if args.steps > 0 else ""))
    print(f"| model | s / epoch | rows / s |\n|---|---:|---:|")
    for name in args.models.split(","):
        seconds, rate = train_epoch(name, rows, args.steps)
        print(f"| {name} | {seconds:.1f} | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
