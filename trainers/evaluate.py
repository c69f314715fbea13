"""Evaluation stage: the best checkpoint on the test lists, next to the popularity reference,
plus full ranking for a seeded sample of users. The index's protocol picks the metrics
(trainers/metrics.py) and the references.

* Candidate lists: each test list is the target and its negatives, scored in chunks of
  ``train.eval_batch_size`` lists, pessimistic ties. ``slices`` (paper Section 4.1.2) and
  ``leave_one_out``: HR@1/5/10/20, NDCG@5/10/20, MRR, AUC, GAUC. ``feedback`` (DFAR Section
  4.1.3): AUC, GAUC, MRR@10, NDCG@10, auc_pos (:class:`~trainers.metrics.FeedbackAccumulator`);
  the log says how many users GAUC skipped (one class only), and ``random_test`` holds a
  random scorer's expected metrics on these groups (``metrics.random_floor``) beside them.
* Popularity reference (trainers/popularity.py): the same lists scored by the item's count in
  the slice before the target (``slices``) or in the users' train parts (other protocols);
  logged as ``popularity_test_*``, and on the validation lists as ``popularity_valid_*`` (the
  reference for the validation metric that picks the checkpoint).
* Full ranking: for every user (``train.full_rank_users: all``; a number: a seeded sample;
  target-aware models at most ``train.full_rank_sample``, labelled ``sampled``) one test
  target is ranked against every item (chunked over items, so millions of items fit); padding never
  competes. Items that do not compete, by protocol: ``slices``, the user's other
  target-slice positives (right answers too); ``leave_one_out`` and ``feedback``, every item
  of the user's history before the target (items the user already met, liked or not, are
  not recommendations; FMLP-Rec's full ranking masks them alike). Under ``feedback`` only
  users with a positive test target are sampled, and their first such row is ranked.
  HR/NDCG/MRR as the ranking protocols; logged as ``full_*``. A next-item model
  (``NextItemRecommender``) encodes each user once and scores all items by matmuls with its
  item table, so thousands of users are cheap; any other model scores every chunk of items
  through ``forward``, re-reading the history per chunk.

Everything is logged to the training run in MLflow (``run.json`` names it) together with a
markdown table artifact.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch

from conf.schema import PipelineConfig
from store.runs import read_run, run_dir
from trainers import tracking
from trainers.batches import BatchBuilder, EventSequences, Samples
from trainers.checkpoints import load_checkpoint
from trainers.metrics import (
    FeedbackAccumulator,
    RankHistogram,
    RankingAccumulator,
    items_ranked_above,
)
from trainers.models.item_scoring import candidate_scores
from trainers.protocols import EvaluationProtocol
from trainers.registry import (
    DataSizes,
    NextItemRecommender,
    Recommender,
    build_model,
    model_class,
    variable_length,
)
from trainers.split_data import declared_inputs, load_split_data

log = logging.getLogger(__name__)

PER_USER_FILE = "per_user_test.parquet"  # each test user's metrics (issue 26's paired tests)
USERS_PER_MATMUL = 256  # full ranking of next-item models: users scored against items at once


def run_evaluation(cfg: PipelineConfig) -> dict[str, Any]:
    """Evaluate the best checkpoint of ``<work_dir>/train/<run>``.

    Returns:
        dict: ``run_id``, ``protocol``, ``test`` / ``popularity_test`` / ``popularity_valid``
        / ``full`` (unless ``train.full_rank_users`` is 0) / ``random_test`` (``feedback``)
        / ``fit`` metric dicts, ``table`` (markdown) and ``logged`` (the flat metrics
        written to MLflow). Each test user's metrics (the accumulator's ``per_user``) go to
        the run as the artifact ``per_user_test.parquet``, not into the returned dict (a
        flow records it). ``fit`` is the memorisation check (issue 15): the best
        checkpoint's AUC on its own training lists (``train_auc``), on the validation lists
        (``valid_auc``) and their difference (``gap_auc``). AUC, because it does not depend
        on a list's length (train lists hold 1 + ``index.train_negatives`` candidates,
        validation lists 1 + ``index.eval_negatives``).

    Raises:
        FileNotFoundError: no finished training run for this model.
    """
    record = read_run(cfg)
    if record is None or record["status"] != "finished":
        raise FileNotFoundError(f"no finished training run in {run_dir(cfg)}: run `seqrec train` "
                                "with the same dataset and model first")
    device = torch.device("cuda" if cfg.train.use_gpu and torch.cuda.is_available() else "cpu")
    model = load_best_model(cfg, record["result"]["checkpoint"], device)
    required, optional = declared_inputs(type(model))
    data = load_split_data(cfg, required, ("train", "valid", "test"), device, optional)
    data.builder.trim_padding = variable_length(model)
    protocol, test = data.protocol, data.splits["test"]
    popularity = protocol.popularity_scorer(data.popularity())

    def evaluate(scorer, split: str) -> dict[str, float]:
        return score_lists(scorer, data.builder, data.splits[split], cfg.train.eval_batch_size,
                           protocol, f"{split} lists")

    tested = accumulate(lambda b, c, i: model(b).scores, data.builder, test,
                        cfg.train.eval_batch_size, protocol)
    results = {
        "test": tested.compute(),
        "popularity_test": evaluate(popularity, "test"),
        # the reference for the validation metric that early stopping and the champion use
        "popularity_valid": evaluate(popularity, "valid"),
    }
    if protocol.random_reference:
        results["random_test"] = protocol.random_floor(test.candidates.shape[1])
    fit = {split: evaluate(lambda b, c, i: model(b).scores, split)["auc"]
           for split in ("train", "valid")}
    results["fit"] = {"train_auc": fit["train"], "valid_auc": fit["valid"],
                      "gap_auc": fit["train"] - fit["valid"]}
    users = full_rank_count(cfg, model)
    if users != 0:
        results["full"] = full_ranking(model, data.builder, test, data.sizes.num_items,
                                       users, cfg.train.seed,
                                       cfg.train.eval_batch_size * test.candidates.shape[1],
                                       data.events)
    logged = {f"{prefix}_{k}": v for prefix, values in results.items() for k, v in values.items()}
    table = markdown_table(results)
    run_id = record["run_id"]
    tracking.log_metrics(cfg, run_id, logged)
    tracking.log_text(cfg, run_id, table, "evaluation.md")
    tracking.log_table(cfg, run_id, tested.per_user(), PER_USER_FILE)
    return {"run_id": run_id, "protocol": protocol.name, **results, "table": table,
            "logged": logged}


def full_rank_count(cfg: PipelineConfig, model: Recommender) -> int | None:
    """How many users full ranking covers: None for every user, 0 for none.

    A next-item model ranks ``train.full_rank_users`` (``all`` or a seeded sample of N); a
    target-aware model, which pushes every item through ``forward`` per user, at most
    ``train.full_rank_sample`` of them.
    """
    wanted = cfg.train.full_rank_users
    if isinstance(model, NextItemRecommender):
        return None if wanted == "all" else wanted
    cap = cfg.train.full_rank_sample
    return cap if wanted == "all" else min(wanted, cap)


def load_best_model(cfg: PipelineConfig, checkpoint: str, device: torch.device) -> Recommender:
    """The model of a training checkpoint (``state.pt`` inside a Ray checkpoint folder)."""
    from ray.train import Checkpoint

    importlib.import_module(model_class(cfg.model.name).__module__)
    with Checkpoint(checkpoint).as_directory() as folder:
        payload = load_checkpoint(folder, device)
    model = build_model(cfg.model.name, dict(cfg.model.params), DataSizes(**payload["sizes"]))
    model.load_state_dict(payload["model"])
    return model.to(device).eval()


@torch.no_grad()
def score_lists(scorer, builder: BatchBuilder, samples: Samples, batch_size: int,
                protocol: EvaluationProtocol, what: str = "lists") -> dict[str, float]:
    """Metrics of a scorer over all candidate lists, chunk by chunk.

    Args:
        scorer: ``(batch, cut (B,), candidates (B, C)) -> (B, C)`` scores.
        builder: batch builder of the model's inputs.
        samples: the split's lists.
        batch_size: lists per chunk.
        protocol: the index's protocol (which metrics: its ``new_accumulator``).
        what: names the lists in the log line on GAUC's skipped users (``feedback``).

    Returns:
        the protocol's metric dict.
    """
    accumulator = accumulate(scorer, builder, samples, batch_size, protocol)
    metrics = accumulator.compute()
    if isinstance(accumulator, FeedbackAccumulator) and accumulator.gauc_skipped_users:
        log.info("%s: GAUC over %d users; %d users with one class only (every target "
                 "negative) have no AUC and are skipped", what, accumulator.gauc_users,
                 accumulator.gauc_skipped_users)
    return metrics


@torch.no_grad()
def accumulate(scorer, builder: BatchBuilder, samples: Samples, batch_size: int,
               protocol: EvaluationProtocol) -> RankingAccumulator | FeedbackAccumulator:
    """The protocol's accumulator fed with every list's scores (:func:`score_lists`' args);
    its ``compute()`` gives the metrics, its ``per_user()`` each user's."""
    accumulator = protocol.new_accumulator()
    for start in range(0, len(samples), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(samples)),
                           device=samples.user.device)
        batch = builder.rows(samples, idx)
        scores = scorer(batch, samples.cut[idx], samples.candidates[idx])
        accumulator.update(scores, samples.user[idx], samples.target_label[idx])
    return accumulator


def _history_keys(events: EventSequences, user: torch.Tensor, cut: torch.Tensor,
                  num_items: int) -> torch.Tensor:
    """``user * (I + 1) + item`` of every event ``[0, cut)`` of each row: (sum(cut),)."""
    row = torch.repeat_interleave(torch.arange(len(user), device=user.device), cut)  # (E',)
    first = torch.cumsum(cut, 0) - cut  # (B,) where each row's events start in the flat list
    position = torch.arange(len(row), device=user.device) - first[row]  # (E',) 0..cut-1
    return user[row] * (num_items + 1) + events.items[events.offsets[user[row]] + position]


@torch.no_grad()
def full_ranking(model: Recommender, builder: BatchBuilder, samples: Samples, num_items: int,
                 num_users: int | None, seed: int, item_chunk: int,
                 events: EventSequences | None) -> dict[str, float]:
    """Rank one target per user (every user, or a seeded sample) against all items 1..I.

    Args:
        model: a registered model in eval mode (``model(batch).scores``).
        samples: the test lists; a user's first list (with a positive target) gives the
            target.
        num_items: I.
        num_users: how many users to sample (all if fewer); None: every user, in user
            order.
        seed: sampling seed.
        item_chunk: items scored per forward (bounds memory like one evaluation batch).
        events: the users' event sequences (``leave_one_out``, ``feedback``: their history
            items do not compete), or None (``slices``: the user's other target-slice
            positives do not compete).

    Returns:
        hr@1/5/10/20, ndcg@5/10/20, mrr over the ranked users (pessimistic ties), ``users``
        (how many) and ``sampled`` (1.0 when a seeded sample of the users, 0.0 when all).

    Raises:
        ValueError: no test row has a positive target.
    """
    device = samples.user.device
    positive = (samples.target_label == 1).nonzero(as_tuple=True)[0]  # rows with a real target
    if len(positive) == 0:
        raise ValueError("full ranking needs a test row with a positive target")
    users, first = _first_row_per_user(samples.user[positive])
    first = positive[first]
    sampled = num_users is not None and num_users < len(users)
    if sampled:
        g = torch.Generator().manual_seed(seed)
        pick = first[torch.randperm(len(users), generator=g)[:num_users].to(device)]  # (U',)
    else:
        pick = first
    rows = samples.take(pick)
    user, cut, target = rows.user, rows.cut, rows.candidates[:, 0]
    # Items that must not push the target down: see the module docstring.
    if events is None:
        known = samples.user * (num_items + 1) + samples.candidates[:, 0]
    else:
        known = torch.cat([_history_keys(events, user, cut, num_items),
                           user * (num_items + 1) + target])
    known = torch.unique(known)  # sorted
    rank_above = (_above_by_item_table if isinstance(model, NextItemRecommender)
                  else _above_by_forward)
    histogram = RankHistogram()
    histogram.add(1 + rank_above(model, builder, rows, known, num_items, item_chunk))
    return {**histogram.metrics(), "users": float(len(pick)), "sampled": float(sampled)}


def _is_known(known: torch.Tensor, user: torch.Tensor, items: torch.Tensor,
              num_items: int) -> torch.Tensor:
    """(B, N) bool: ``(user, item)`` is in the sorted ``known`` keys (does not compete)."""
    keys = user[:, None] * (num_items + 1) + items
    hit = torch.searchsorted(known, keys).clamp(max=len(known) - 1)
    return known[hit] == keys


def _above_by_item_table(model: NextItemRecommender, builder: BatchBuilder, rows: Samples,
                         known: torch.Tensor, num_items: int, item_chunk: int) -> torch.Tensor:
    """Items ranked at or above each row's target, for a next-item model: each user's state
    is encoded once (``encode_users``) and scored against ``item_chunk`` items at a time by
    one matmul with its ``item_table`` (trainers/models/item_scoring.py), for
    ``USERS_PER_MATMUL`` users at once.

    Returns:
        (n,) int64 counts over the rows of ``rows``.
    """
    table, bias = model.item_table()  # (I+1, d), (I+1,) or None
    out = []
    for start in range(0, len(rows), USERS_PER_MATMUL):
        idx = torch.arange(start, min(start + USERS_PER_MATMUL, len(rows)),
                           device=rows.user.device)
        u, target = rows.user[idx], rows.candidates[idx, 0]
        states = model.encode_users(builder.rows(rows, idx))  # (B, d)
        pos_score = candidate_scores(states, table, bias, target[:, None])[:, 0]  # (B,)
        row, item = _known_items(known, u, num_items)  # (K,) each: these users' known items
        above = torch.zeros(len(idx), dtype=torch.int64, device=u.device)
        for lo in range(1, num_items + 1, item_chunk):
            hi = min(lo + item_chunk, num_items + 1)
            scores = states @ table[lo:hi].T  # (B, N) items lo..hi-1
            if bias is not None:
                scores = scores + bias[lo:hi]
            inside = (item >= lo) & (item < hi)
            exclude = torch.zeros(scores.shape, dtype=torch.bool, device=u.device)
            exclude[row[inside], item[inside] - lo] = True
            above += ((scores >= pos_score[:, None]) & ~exclude).sum(dim=1)
        out.append(above)
    return torch.cat(out)


def _known_items(known: torch.Tensor, user: torch.Tensor, num_items: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, item) of every sorted ``known`` key of these users: row indexes ``user`` (B,).
    Found by each user's key range, so the cost is these users' keys, not B x I lookups."""
    span = num_items + 1
    start = torch.searchsorted(known, user * span)
    counts = torch.searchsorted(known, (user + 1) * span) - start  # (B,)
    row = torch.repeat_interleave(torch.arange(len(user), device=user.device), counts)
    first = torch.cumsum(counts, 0) - counts  # (B,) where each row's keys start
    position = torch.arange(len(row), device=user.device) - first[row]
    return row, known[start[row] + position] - user[row] * span


def _above_by_forward(model: Recommender, builder: BatchBuilder, rows: Samples,
                      known: torch.Tensor, num_items: int, item_chunk: int) -> torch.Tensor:
    """The same for any model: every chunk of items goes through ``forward`` as candidates
    (a target-aware model re-reads the history for each chunk)."""
    user, cut, target, label = rows.user, rows.cut, rows.candidates[:, 0], rows.target_label
    # Few users per forward: a forward holds (users x item_chunk) candidate sets.
    per_forward = max(1, min(len(user), item_chunk // 1024))
    chunk = max(1, item_chunk // per_forward)
    out = []
    for start in range(0, len(user), per_forward):
        u, c, p, lab = (x[start:start + per_forward] for x in (user, cut, target, label))
        pos_score = model(builder.build(u, c, torch.stack([p, p], 1), lab)).scores[:, 0]  # (B,)
        above = torch.zeros(len(u), dtype=torch.int64)
        for lo in range(1, num_items + 1, chunk):
            items = torch.arange(lo, min(lo + chunk, num_items + 1), device=u.device)  # (N,)
            cand = items[None, :].expand(len(u), -1)  # (B, N)
            scores = model(builder.build(u, c, cand, lab)).scores  # (B, N)
            above += items_ranked_above(pos_score, scores, _is_known(known, u, cand, num_items))
        out.append(above)
    return torch.cat(out)


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
