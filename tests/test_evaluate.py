"""Evaluation on a hand-made index: chunked metrics equal one direct computation, the
popularity reference equals a hand count, full ranking equals ranking every item at once.

No Ray: the "training run" is a checkpoint folder and run.json written here, in the layout
trainers/train.py produces.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny_index
from trainers import tracking
from trainers.batches import BatchBuilder, Samples
from trainers.evaluate import run_evaluation
from trainers.metrics import ranking_metrics
from trainers.popularity import popularity_scores
from trainers.registry import DataSizes, build_model
from trainers.set_arrays import load_samples, load_set_arrays
from trainers.train import CHECKPOINT_FILE, TrainState


@pytest.fixture
def trained(tmp_path):
    """Index + a 'best checkpoint' of the tiny model + run.json + an MLflow run."""
    work = tmp_path / "work"
    truth = tiny_index.write_index(work)
    cfg = tiny_index.tiny_config(tmp_path)
    sizes = DataSizes(tiny_index.NUM_USERS, tiny_index.NUM_ITEMS, tiny_index.T - 1,
                      tiny_index.S, cfg.index.sequence_max_len)
    torch.manual_seed(3)
    model = build_model("test_tiny", {"dim": 4}, sizes)
    checkpoint = work / "train" / "test_tiny" / "checkpoint_epoch_0001"
    checkpoint.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "sizes": asdict(sizes),
                "state": asdict(TrainState(epoch=1, best_epoch=1))},
               checkpoint / CHECKPOINT_FILE)
    run_id = tracking.open_run(cfg, "hand", None)
    (checkpoint.parent / "run.json").write_text(json.dumps(
        {"status": "finished", "run_id": run_id, "resume_key": "x",
         "result": {"checkpoint": str(checkpoint)}}))
    return cfg, model.eval(), truth


def _test_lists(work: Path):
    arrays = load_set_arrays(str(work / "index"))
    samples = Samples.from_arrays(load_samples(str(work / "index"), "test"))
    builder = BatchBuilder(frozenset({"slice_sets"}), torch.as_tensor(arrays.users),
                           torch.as_tensor(arrays.items), tiny_index.T)
    return builder, samples


def test_evaluation_matches_direct_metrics(trained):
    cfg, model, truth = trained
    result = run_evaluation(cfg)
    builder, samples = _test_lists(Path(cfg.paths.work_dir))

    # Model: one big batch instead of chunks of eval_batch_size (7) lists.
    with torch.no_grad():
        scores = model(builder.build(samples.user, samples.slice, samples.candidates))
    expected = ranking_metrics(scores, samples.user)
    assert result["test"] == pytest.approx(expected, abs=1e-12)

    # Popularity: count in the slice before the target, ranked by hand (pessimistic ties).
    counts = truth["counts"]
    rr = []
    for cand, target in zip(samples.candidates.tolist(), samples.slice.tolist()):
        s = [counts[i, target - 1] for i in cand]
        rank = 1 + sum(x >= s[0] for x in s[1:])
        rr.append(1.0 / rank)
    assert result["popularity_test"]["mrr"] == pytest.approx(np.mean(rr), abs=1e-12)
    pop = popularity_scores(torch.as_tensor(counts), samples.candidates, samples.slice)
    assert result["popularity_test"] == pytest.approx(ranking_metrics(pop, samples.user))
    # The validation lists get the same reference (their target slice is one earlier).
    valid = Samples.from_arrays(load_samples(str(Path(cfg.paths.work_dir) / "index"), "valid"))
    assert int(valid.slice.max()) == int(samples.slice.min()) - 1
    pop = popularity_scores(torch.as_tensor(counts), valid.candidates, valid.slice)
    assert result["popularity_valid"] == pytest.approx(ranking_metrics(pop, valid.user))

    # Full ranking: 8 sampled users, their positive against all 40 items in one batch; the
    # user's other test positives (none here: one list per user) and padding excluded.
    assert set(result["full"]) == {"hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "mrr"}
    all_items = torch.arange(1, tiny_index.NUM_ITEMS + 1)
    full_rr = []
    with torch.no_grad():
        for row in range(len(samples)):
            u, t, pos = samples.user[row:row + 1], samples.slice[row:row + 1], samples.candidates[row, 0]
            s = model(builder.build(u, t, all_items[None]))[0]
            pos_score = model(builder.build(u, t, torch.stack([pos, pos])[None]))[0, 0]
            full_rr.append(1.0 / (1 + int(((s >= pos_score) & (all_items != pos)).sum())))
    # One list per user, rows sorted by user: the seeded sample of users is a seeded
    # permutation of the rows.
    g = torch.Generator().manual_seed(cfg.train.seed)
    picked = torch.randperm(len(samples), generator=g)[:cfg.train.full_rank_users]
    assert result["full"]["mrr"] == pytest.approx(np.mean([full_rr[i] for i in picked]), abs=1e-6)

    # Logged to the training run with prefixes, plus the markdown table.
    client = tracking.client(cfg)
    run = client.get_run(result["run_id"])
    assert run.data.metrics["test_mrr"] == pytest.approx(expected["mrr"])
    assert "popularity_test_hr_at_10" in run.data.metrics and "full_mrr" in run.data.metrics
    assert "evaluation.md" in {a.path for a in client.list_artifacts(result["run_id"])}
    assert result["table"].startswith("| evaluation |") and "| popularity_test |" in result["table"]


def test_evaluation_without_training_run_names_the_fix(tmp_path):
    cfg = tiny_index.tiny_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="seqrec train"):
        run_evaluation(cfg)


def test_popularity_scores_use_previous_slice_only():
    counts = torch.tensor([[0, 0, 0], [5, 1, 9], [0, 3, 9]])  # (I+1=3, T=3)
    cand = torch.tensor([[1, 2], [2, 1], [1, 2]])
    got = popularity_scores(counts, cand, torch.tensor([2, 1, 0]))
    assert got.tolist() == [[1.0, 3.0], [0.0, 5.0], [0.0, 0.0]]  # slice 0: nothing before
    with pytest.raises(ValueError, match="target slices"):
        popularity_scores(counts, cand, torch.tensor([3, 0, 0]))
