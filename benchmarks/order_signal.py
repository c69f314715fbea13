"""How much a log's order tells about the next item beyond what its items tell as a set.

    .venv/bin/seqrec index --dataset sample-loo        # generate, ingest, index first
    .venv/bin/python benchmarks/order_signal.py --dataset sample-loo
    .venv/bin/python benchmarks/order_signal.py --dataset toys   # a real log, once indexed

The index is the dataset's ``{paths.work_dir}/index`` (``--set paths.work_dir=...`` for
another run's, e.g. a benchmark's work folder).

Issue 23: the generator (spark_jobs/sample_data.py) drew each fresh item from the user's
main or drifting community, with no item-to-item transitions; this table showed it (the last
item told no more than any earlier one, where the real Toys gives it 1.22x popularity's
HR@10), and ``sample-loo``'s taste and transition shares (point 5) are now set so that its
table matches the real Toys' (docs/baselines.md, section 4, "DualRec against the filters").

No training: count scorers rank each test list (a built ``leave_one_out`` index), with
counts from every user's train part (the events before their first evaluation target, as
popularity's), ties broken by popularity, and ranked pessimistically as the models are:

* ``popularity``: positive events in the train parts;
* ``co-occurrence (set)``: Σ over the history's items h of C[h, c], C counting the users
  whose train part holds both h and c, in any order;
* ``after the last item``: T[last, c], T counting train parts where c comes right after
  ``last`` (first-order transitions);
* ``after a random earlier item``: T[h, c] for one uniformly drawn earlier history item h;
* ``before the last item``: T[c, last], the same pairs read backwards.

Order signal: ``after the last item`` against ``after a random earlier item`` (recency) and
against ``before the last item`` (direction). Where a log has none, the three are level.
Run it on a real log and on its generated sample: a gap only the real one shows is signal
the generator lacks. Prints one table (test lists; HR@10, MRR, AUC) and the seconds taken.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from conf.loading import load_config
from conf.schema import LEAVE_ONE_OUT
from store.index import (index_manifest, load_samples, load_sequences, protocol_of,
                         train_popularity)
from trainers.metrics import RankingAccumulator


def train_parts(offsets: np.ndarray, items: np.ndarray, end: np.ndarray) -> list[np.ndarray]:
    """Each user's train part: items[offsets[u] : offsets[u] + end[u]]."""
    return [items[offsets[u]:offsets[u] + end[u]] for u in range(len(end))]


def pair_counts(parts: list[np.ndarray], num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys a * (I+1) + b and their counts for (1) ordered consecutive pairs a -> b
    and (2) unordered co-occurring pairs (both orders, once per user)."""
    width = num_items + 1
    steps = [p[:-1].astype(np.int64) * width + p[1:] for p in parts if len(p) > 1]
    both = []
    for p in parts:
        u = np.unique(p).astype(np.int64)
        if len(u) > 1:
            a, b = np.meshgrid(u, u, indexing="ij")
            off = a != b
            both.append(a[off] * width + b[off])
    return (np.concatenate(steps) if steps else np.zeros(0, np.int64),
            np.concatenate(both) if both else np.zeros(0, np.int64))


class PairTable:
    """Counts of item pairs, looked up in bulk."""

    def __init__(self, keys: np.ndarray, width: int):
        self.keys, self.counts = np.unique(keys, return_counts=True)
        self.width = width

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Counts of pairs (a, b), elementwise (any equal shapes); 0 for unseen pairs."""
        key = a.astype(np.int64) * self.width + b
        at = np.searchsorted(self.keys, key).clip(max=max(len(self.keys) - 1, 0))
        hit = (self.keys[at] == key) if len(self.keys) else np.zeros(key.shape, bool)
        return np.where(hit, self.counts[at] if len(self.keys) else 0, 0)


def places(counts: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """Each candidate's place in its list's order by (count, popularity), ascending, ties
    sharing the lowest place: (n, C) small integers, exact in the float32 the accumulator
    ranks in (count + popularity / (max + 1) loses the popularity part once counts are
    large)."""
    order = np.lexsort((popularity, counts), axis=-1)  # (n, C) ascending by count, then pop
    c = np.take_along_axis(counts, order, -1)
    p = np.take_along_axis(popularity, order, -1)
    new = np.ones_like(c, dtype=bool)
    new[:, 1:] = (c[:, 1:] != c[:, :-1]) | (p[:, 1:] != p[:, :-1])  # a new (count, pop)
    slot = np.arange(c.shape[1])[None, :].repeat(len(c), 0)
    first = np.maximum.accumulate(np.where(new, slot, 0), axis=1)  # tie group's first slot
    out = np.empty_like(first)
    np.put_along_axis(out, order, first, -1)
    return out.astype(np.float64)


def metrics(scores: np.ndarray, popularity: np.ndarray, users: np.ndarray) -> dict:
    """Rank metrics of (n, C) count scores, ties broken by popularity (n, C), ranked
    pessimistically as the models are."""
    acc = RankingAccumulator()
    acc.update(torch.from_numpy(places(scores, popularity)), torch.from_numpy(users))
    return acc.compute()


def order_scores(index_uri: str, seed: int = 0) -> dict[str, dict]:
    """Each count scorer's test metrics on a built ``leave_one_out`` index (module docstring),
    in the order of the printed table."""
    manifest = index_manifest(index_uri)
    if protocol_of(manifest) != LEAVE_ONE_OUT:
        raise ValueError(f"{index_uri} is a {protocol_of(manifest)} index; the order "
                         "scorers read leave_one_out test lists (cut = history length)")
    num_items = int(manifest["num_items"])
    seqs = load_sequences(index_uri)
    valid, test = load_samples(index_uri, "valid"), load_samples(index_uri, "test")
    if (test["cut"] < 2).any():  # the earlier item must come before the last one
        raise ValueError(f"{index_uri}: a test history under 2 events")
    eval_user = np.concatenate([valid["user"], test["user"]])
    eval_cut = np.concatenate([valid["cut"], test["cut"]])
    pop = train_popularity(seqs, eval_user, eval_cut, num_items).astype(np.float64)
    end = np.diff(seqs.offsets)
    np.minimum.at(end, eval_user.astype(np.int64), eval_cut.astype(np.int64))
    steps, both = pair_counts(train_parts(seqs.offsets, seqs.items, end), num_items)
    after, together = PairTable(steps, num_items + 1), PairTable(both, num_items + 1)

    cand, users, cut = test["candidates"], test["user"], test["cut"].astype(np.int64)
    first = seqs.offsets[users.astype(np.int64)]  # (n,) where each user's events start
    last = seqs.items[first + cut - 1]  # (n,) the newest history item
    rng = np.random.default_rng(seed)
    earlier = first + np.floor(rng.random(len(cut)) * np.maximum(cut - 1, 1)).astype(np.int64)
    co = np.zeros(cand.shape)
    for row in range(len(cut)):  # Σ_h C[h, c] over the history's distinct items
        history = np.unique(seqs.items[first[row]:first[row] + cut[row]])
        co[row] = together(np.repeat(history[:, None], cand.shape[1], 1),
                           np.broadcast_to(cand[row], (len(history), cand.shape[1]))).sum(0)
    scorers = {
        "popularity": np.zeros(cand.shape),
        "co-occurrence (set)": co,
        "after the last item": after(np.broadcast_to(last[:, None], cand.shape), cand),
        "after a random earlier item": after(
            np.broadcast_to(seqs.items[earlier][:, None], cand.shape), cand),
        "before the last item": after(cand, np.broadcast_to(last[:, None], cand.shape)),
    }
    return {name: metrics(scores, pop[cand], users) for name, scores in scorers.items()}


def order_table(scores: dict[str, dict]) -> str:
    """A markdown table of :func:`order_scores`: test HR@10, MRR, AUC per count scorer."""
    lines = ["| count scorer | test HR@10 | test MRR | test AUC |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {m['hr@10']:.4f} | {m['mrr']:.4f} | {m['auc']:.4f} |"
              for name, m in scores.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="sample-loo", help="a leave_one_out preset")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="config override key=value (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="the random earlier item's draw")
    args = parser.parse_args()
    cfg = load_config(args.dataset, "sasrec", "local", args.overrides)  # any model: paths only
    index = f"{cfg.paths.work_dir}/index"
    start = time.perf_counter()
    try:
        scores = order_scores(index, args.seed)
    except (FileNotFoundError, ValueError) as exc:  # not built, or not leave_one_out
        sys.exit(f"order_signal: {exc}")
    print(f"{index}\n\n{order_table(scores)}\n\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
