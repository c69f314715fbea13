"""Evaluation stage: the best checkpoint on the test lists, next to the popularity reference,
plus full ranking for a seeded sample of users.

* Candidate lists (paper Section 4.1.2): each test list is the positive and
  ``index.eval_negatives`` negatives, scored in chunks of ``train.eval_batch_size`` lists;
  HR@1/5/10, NDCG@5/10, MRR, AUC, GAUC with pessimistic ties (trainers/metrics.py).
* Popularity reference (trainers/popularity.py): the same lists scored by the item's count in
  the slice before the target; logged as ``popularity_test_*``, and on the validation lists
  as ``popularity_valid_*`` (the reference for the validation MRR that picks the checkpoint).
* Full ranking: for ``train.full_rank_users`` users (seeded) one test positive is ranked
  against every item (chunked over items, so millions of items fit); the user's other
  target-slice positives and the padding id do not compete. Logged as ``full_*``.

Everything is logged to the training run in MLflow (``run.json`` names it) together with a
markdown table artifact.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from conf.schema import PipelineConfig
from trainers import set_arrays, tracking
from trainers.batches import BatchBuilder, Samples
from trainers.metrics import RankHistogram, RankingAccumulator, items_ranked_above
from trainers.popularity import popularity_scores
from trainers.registry import DataSizes, build_model, model_class
from trainers.split_data import load_split_data
from trainers.train import CHECKPOINT_FILE, read_run, run_dir


def run_evaluation(cfg: PipelineConfig) -> dict[str, Any]:
    """Evaluate the best checkpoint of ``<work_dir>/train/<model>``.

    Returns:
        dict: ``run_id``, ``test`` / ``popularity_test`` / ``popularity_valid`` / ``full``
        metric dicts, ``table``
        (markdown) and ``logged`` (the flat metrics written to MLflow).

    Raises:
        FileNotFoundError: no finished training run for this model.
    """
    record = read_run(cfg)
    if record is None or record["status"] != "finished":
        raise FileNotFoundError(f"no finished training run in {run_dir(cfg)}: run `seqrec train` "
                                "with the same dataset and model first")
    device = torch.device("cuda" if cfg.train.use_gpu and torch.cuda.is_available() else "cpu")
    model = load_best_model(cfg, record["result"]["checkpoint"], device)
    data = load_split_data(cfg, model.inputs, ("valid", "test"), device)
    test = data.splits["test"]
    counts = torch.as_tensor(set_arrays.load_popularity(data.index_uri), device=device)

    def popularity(split: str) -> dict[str, float]:
        return score_lists(lambda b, s, i: popularity_scores(counts, b["items"], s),
                           data.builder, data.splits[split], cfg.train.eval_batch_size)

    results = {
        "test": score_lists(lambda b, s, i: model(b), data.builder, test,
                            cfg.train.eval_batch_size),
        "popularity_test": popularity("test"),
        # the reference for the validation MRR that early stopping and the champion use
        "popularity_valid": popularity("valid"),
    }
    if cfg.train.full_rank_users > 0:
        results["full"] = full_ranking(model, data.builder, test, data.sizes.num_items,
                                       cfg.train.full_rank_users, cfg.train.seed,
                                       cfg.train.eval_batch_size * test.candidates.shape[1])
    logged = {f"{prefix}_{k}": v for prefix, values in results.items() for k, v in values.items()}
    table = markdown_table(results)
    run_id = record["run_id"]
    tracking.log_metrics(cfg, run_id, logged)
    tracking.log_text(cfg, run_id, table, "evaluation.md")
    return {"run_id": run_id, **results, "table": table, "logged": logged}


def load_best_model(cfg: PipelineConfig, checkpoint: str, device: torch.device):
    """The model of a training checkpoint (``state.pt`` inside a Ray checkpoint folder)."""
    from ray.train import Checkpoint

    importlib.import_module(model_class(cfg.model.name).__module__)
    with Checkpoint(checkpoint).as_directory() as folder:
        payload = torch.load(Path(folder) / CHECKPOINT_FILE, map_location=device,
                             weights_only=False)
    model = build_model(cfg.model.name, dict(cfg.model.params), DataSizes(**payload["sizes"]))
    model.load_state_dict(payload["model"])
    return model.to(device).eval()


@torch.no_grad()
def score_lists(scorer, builder: BatchBuilder, samples: Samples, batch_size: int
                ) -> dict[str, float]:
    """Metrics of a scorer over all candidate lists, chunk by chunk.

    Args:
        scorer: ``(batch, target (B,), candidates (B, C)) -> (B, C)`` scores.
        builder: batch builder of the model's inputs.
        samples: the split's lists.
        batch_size: lists per chunk.

    Returns:
        hr@1/5/10, ndcg@5/10, mrr, auc, gauc.
    """
    accumulator = RankingAccumulator()
    for start in range(0, len(samples), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(samples)),
                           device=samples.user.device)
        user, target, cand = samples.user[idx], samples.slice[idx], samples.candidates[idx]
        batch = builder.build(user, target, cand)
        accumulator.update(scorer(batch, target, cand), user)
    return accumulator.compute()


@torch.no_grad()
def full_ranking(model, builder: BatchBuilder, samples: Samples, num_items: int,
                 num_users: int, seed: int, item_chunk: int) -> dict[str, float]:
    """Rank one positive per sampled user against all items 1..I.

    Args:
        model: scorer of batches.
        samples: the test lists; a user's first list gives the positive.
        num_items: I.
        num_users: how many users to sample (all if fewer).
        seed: sampling seed.
        item_chunk: items scored per forward (bounds memory like one evaluation batch).

    Returns:
        hr@1/5/10, ndcg@5/10, mrr over the sampled users (pessimistic ties).
    """
    device = samples.user.device
    users, first = _first_row_per_user(samples.user)
    g = torch.Generator().manual_seed(seed)
    pick = first[torch.randperm(len(users), generator=g)[:num_users].to(device)]  # (U',)
    user, target, positive = samples.user[pick], samples.slice[pick], samples.candidates[pick, 0]
    # The user's other positives of the target slice are right answers too: they must not
    # push the positive down.
    known = torch.unique(samples.user * (num_items + 1) + samples.candidates[:, 0])
    histogram = RankHistogram()
    # Few users per forward: a forward holds (users x item_chunk) candidate sets.
    per_forward = max(1, min(len(pick), item_chunk // 1024))
    chunk = max(1, item_chunk // per_forward)
    for start in range(0, len(pick), per_forward):
        u, t, p = (x[start:start + per_forward] for x in (user, target, positive))
        pos_score = model(builder.build(u, t, torch.stack([p, p], 1)))[:, 0]  # (B,)
        above = torch.zeros(len(u), dtype=torch.int64)
        for lo in range(1, num_items + 1, chunk):
            items = torch.arange(lo, min(lo + chunk, num_items + 1), device=device)  # (N,)
            cand = items[None, :].expand(len(u), -1)  # (B, N)
            scores = model(builder.build(u, t, cand))  # (B, N)
            keys = u[:, None] * (num_items + 1) + cand
            hit = torch.searchsorted(known, keys).clamp(max=len(known) - 1)
            above += items_ranked_above(pos_score, scores, known[hit] == keys)
        histogram.add(1 + above)
    return histogram.metrics()


def _first_row_per_user(user: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct users, index of each one's first row)."""
    users, inverse = torch.unique(user, return_inverse=True)
    rows = torch.arange(len(user), device=user.device)
    first = torch.full((len(users),), len(user), dtype=torch.int64, device=user.device)
    first.scatter_reduce_(0, inverse, rows, reduce="amin")
    return users, first


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    """One row per evaluation (test, popularity_test, full), one column per metric."""
    columns = list(dict.fromkeys(k for values in results.values() for k in values))
    lines = ["| evaluation | " + " | ".join(columns) + " |",
             "|---|" + "---|" * len(columns)]
    for name, values in results.items():
        cells = [f"{values[c]:.4f}" if c in values else "" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
