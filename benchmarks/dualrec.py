"""Training throughput of SASRec, FMLP-Rec, DualRec and the dual backbones on Beauty-sized
sequences.

Generates, in memory (no Spark), a leave-one-out training split of Beauty's size (PROTOCOLS
§2: 22,363 users, 12,101 items, 198,502 interactions): each user's length is 5 + a geometric
draw (mean ~8.9 events, the 5-core's floor), items drawn from a Zipf-like popularity. One
training row per user as the ``leave_one_out`` index builds it: cut = n-3, candidates =
[target, one uniform negative]. Each model then trains through the real loop code in this
process (``trainers.batches.BatchBuilder`` gathering ``sequence`` = the last L = 50 events
before the cut, ``trainers.train.train_epoch``: forward, loss, backward, grad clip,
``build_optimizer``'s step with the preset's weight decay) at batch 256 with
``torch.set_num_threads`` threads; the table gives seconds per epoch and training rows per
second. Model hyper-parameters are the conf/models/<name>.yaml presets; SASRec runs at
d = 64 (its preset's d = 16 is SCoRe's size; DualRec's comparison uses d = 64).

FMLP-Rec (global filter) also runs one L-slot prefix per history position of each row.

Run: .venv/bin/python benchmarks/dualrec.py [--models sasrec,fmlp,dualrec,dual_gru4rec,dual_fmlp]
     [--threads 2] [--steps 0 (whole epoch; N > 0 times N steps and scales to an epoch)]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf.schema import LEAVE_ONE_OUT  # noqa: E402
from trainers.batches import BatchBuilder, EventSequences, Samples  # noqa: E402
from trainers.embedding import build_optimizer  # noqa: E402
from trainers.protocols import PROTOCOLS  # noqa: E402
from trainers.registry import DataSizes, build_model  # noqa: E402
from trainers.train import train_epoch  # noqa: E402

USERS, ITEMS, INTERACTIONS = 22_363, 12_101, 198_502  # Beauty after the 5-core (PROTOCOLS §2)
L, BATCH = 50, 256  # DualRec's settings (PROTOCOLS §3)
OVERRIDES = {"sasrec": {"embed_dim": 64}}


def beauty_sized_split(seed: int) -> tuple[EventSequences, Samples]:
    """Every generated user's events, and one leave-one-out training row per user."""
    g = np.random.default_rng(seed)
    lengths = 5 + g.geometric(1 / (INTERACTIONS / USERS - 4), USERS) - 1  # >= 5 events
    popularity = 1 / np.arange(1, ITEMS + 1) ** 0.8
    events = g.choice(ITEMS, int(lengths.sum()), p=popularity / popularity.sum()) + 1
    offsets = np.concatenate([[0, 0], np.cumsum(lengths)])  # user 0 is padding
    users = np.arange(1, USERS + 1)
    cut = lengths - 3  # train target: position n-3; valid n-2, test n-1
    target = events[offsets[users] + cut]
    candidates = np.stack([target, g.integers(1, ITEMS + 1, USERS)], 1)
    train = Samples.from_arrays({"user": users, "cut": cut, "candidates": candidates,
                                 "real_negatives": np.zeros(USERS),
                                 "target_label": np.ones(USERS)})
    return EventSequences.from_csr(offsets, events, np.ones_like(events)), train


def train_one_epoch(name: str, sequences: EventSequences, train: Samples, steps: int
                    ) -> tuple[float, float]:
    """(seconds for one epoch, rows per second) of one model."""
    preset = yaml.safe_load((ROOT / "conf" / "models" / f"{name}.yaml").read_text())
    params = {**preset["model"]["params"], **OVERRIDES.get(name, {})}
    recipe = preset.get("train", {})
    l2 = recipe.get("l2", 0.0)
    sizes = DataSizes(num_users=USERS, num_items=ITEMS, history_slices=0, set_size=0,
                      sequence_len=L)
    torch.manual_seed(0)
    model = build_model(name, params, sizes)
    optimizer = build_optimizer(model, recipe.get("lr", 1e-3), l2, recipe.get("weight_decay", 0.0))
    builder = BatchBuilder(PROTOCOLS[LEAVE_ONE_OUT], model.inputs, None, None, 0, sequences, L)
    rows = torch.randperm(USERS)
    if steps > 0:
        rows = rows[:steps * BATCH]
    _, rate = train_epoch(model, model, optimizer, builder, train, rows, BATCH, l2, 1, 0, 1,
                          recipe.get("grad_clip"))
    return USERS / rate, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sasrec,fmlp,dualrec,dual_gru4rec,dual_fmlp")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=0,
                        help="0: the whole epoch; N: time N steps and scale to an epoch")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sequences, train = beauty_sized_split(args.seed)
    print(f"{USERS} users, {ITEMS} items, {len(sequences.items)} interactions; "
          f"batch {BATCH}, L {L}, {args.threads} threads"
          + (f", {args.steps} steps scaled to an epoch" if args.steps > 0 else ""))
    print("| model | s / epoch | rows / s |\n|---|---:|---:|")
    for name in args.models.split(","):
        seconds, rate = train_one_epoch(name, sequences, train, args.steps)
        print(f"| {name} | {seconds:.1f} | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
