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
import tiny_index
import torch

from conf.loading import load_config
from store.index import load_samples, load_set_arrays
from store.runs import CHECKPOINT_FILE
from trainers import tracking
from trainers.batches import BatchBuilder, Samples
from trainers.evaluate import PER_USER_FILE, run_evaluation
from trainers.metrics import FeedbackAccumulator, ranking_metrics
from trainers.popularity import popularity_scores
from trainers.protocols import PROTOCOLS
from trainers.registry import DataSizes, build_model
from trainers.train import TrainState


def _checkpoint(cfg, model, sizes) -> None:
    """A 'best checkpoint' of ``model`` + run.json + an MLflow run, as training leaves them."""
    checkpoint = Path(cfg.paths.work_dir) / "train" / cfg.model.name / "checkpoint_epoch_0001"
    checkpoint.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "sizes": asdict(sizes),
                "state": asdict(TrainState(epoch=1, best_epoch=1))},
               checkpoint / CHECKPOINT_FILE)
    run_id = tracking.open_run(cfg, "hand", None)
    (checkpoint.parent / "run.json").write_text(json.dumps(
        {"status": "finished", "run_id": run_id, "resume_key": "x",
         "result": {"checkpoint": str(checkpoint)}}))


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
    builder = BatchBuilder(PROTOCOLS["slices"], frozenset({"slice_sets"}),
                           torch.as_tensor(arrays.users),
                           torch.as_tensor(arrays.items), tiny_index.T)
    return builder, samples


def test_evaluation_matches_direct_metrics(trained):
    cfg, model, truth = trained
    result = run_evaluation(cfg)
    builder, samples = _test_lists(Path(cfg.paths.work_dir))

    # Model: one big batch instead of chunks of eval_batch_size (7) lists.
    with torch.no_grad():
        scores = model(builder.rows(samples, torch.arange(len(samples)))).scores
    expected = ranking_metrics(scores, samples.user)
    assert result["test"] == pytest.approx(expected, abs=1e-12)

    # Popularity: count in the slice before the target, ranked by hand (pessimistic ties).
    counts = truth["counts"]
    rr = []
    for cand, target in zip(samples.candidates.tolist(), samples.cut.tolist()):
        s = [counts[i, target - 1] for i in cand]
        rank = 1 + sum(x >= s[0] for x in s[1:])
        rr.append(1.0 / rank)
    assert result["popularity_test"]["mrr"] == pytest.approx(np.mean(rr), abs=1e-12)
    pop = popularity_scores(torch.as_tensor(counts), samples.candidates, samples.cut)
    assert result["popularity_test"] == pytest.approx(ranking_metrics(pop, samples.user))
    # The validation lists get the same reference (their target slice is one earlier).
    valid = Samples.from_arrays(load_samples(str(Path(cfg.paths.work_dir) / "index"), "valid"))
    assert int(valid.cut.max()) == int(samples.cut.min()) - 1
    pop = popularity_scores(torch.as_tensor(counts), valid.candidates, valid.cut)
    assert result["popularity_valid"] == pytest.approx(ranking_metrics(pop, valid.user))

    # Full ranking: 8 sampled users, their positive against all 40 items in one batch; the
    # user's other test positives (none here: one list per user) and padding excluded.
    assert set(result["full"]) == {"hr@1", "hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10",
                                   "ndcg@20", "mrr", "users", "sampled"}
    all_items = torch.arange(1, tiny_index.NUM_ITEMS + 1)
    full_rr = []
    with torch.no_grad():
        for row in range(len(samples)):
            u, t = samples.user[row:row + 1], samples.cut[row:row + 1]
            pos = samples.candidates[row, 0]
            one = torch.ones(1, dtype=torch.int64)
            s = model(builder.build(u, t, all_items[None], one)).scores[0]
            pair = builder.build(u, t, torch.stack([pos, pos])[None], one)
            pos_score = model(pair).scores[0, 0]
            full_rr.append(1.0 / (1 + int(((s >= pos_score) & (all_items != pos)).sum())))
    # One list per user, rows sorted by user: the seeded sample of users is a seeded
    # permutation of the rows.
    g = torch.Generator().manual_seed(cfg.train.seed)
    picked = torch.randperm(len(samples), generator=g)[:cfg.train.full_rank_users]
    assert result["full"]["mrr"] == pytest.approx(np.mean([full_rr[i] for i in picked]), abs=1e-6)
    assert result["full"]["users"] == len(picked) == 8 and result["full"]["sampled"] == 1.0

    # Memorisation check: the same model's AUC on its train lists (3 candidates) and on
    # the validation lists, and their difference.
    for split in ("train", "valid"):
        lists = Samples.from_arrays(load_samples(str(Path(cfg.paths.work_dir) / "index"), split))
        with torch.no_grad():
            s = model(builder.rows(lists, torch.arange(len(lists)))).scores
        # pessimistic pairwise AUC per list, averaged over lists
        auc = ((s[:, :1] > s[:, 1:]).double().mean(1)).mean().item()
        assert result["fit"][f"{split}_auc"] == pytest.approx(auc, abs=1e-9)
    assert result["fit"]["gap_auc"] == pytest.approx(
        result["fit"]["train_auc"] - result["fit"]["valid_auc"])

    # Logged to the training run with prefixes, plus the markdown table.
    client = tracking.client(cfg)
    run = client.get_run(result["run_id"])
    assert run.data.metrics["test_mrr"] == pytest.approx(expected["mrr"])
    assert "popularity_test_hr_at_10" in run.data.metrics and "full_mrr" in run.data.metrics
    assert run.data.metrics["fit_gap_auc"] == pytest.approx(result["fit"]["gap_auc"])
    assert "evaluation.md" in {a.path for a in client.list_artifacts(result["run_id"])}
    assert result["table"].startswith("| evaluation |") and "| popularity_test |" in result["table"]
    # Each test user's metrics, the artifact compare --seeds pairs by user (one list a user
    # here, so their mean is the split's MRR)
    per_user = tracking.read_table(cfg, result["run_id"], PER_USER_FILE)
    assert per_user["user"].tolist() == sorted(set(samples.user.tolist()))
    assert per_user["mrr"].mean() == pytest.approx(expected["mrr"], abs=1e-6)
    assert {"hr@1", "hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20"} <= set(per_user)
    assert "per_user" not in result  # the flow records its result: no per-user lists there


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


@pytest.mark.parametrize("protocol", ["leave_one_out", "feedback"])
def test_evaluation_under_sequence_protocols(tmp_path, protocol):
    """Metrics, popularity reference and full ranking by hand on the hand-written index."""
    truth = tiny_index.write_sequence_index(tmp_path / "work", protocol)
    items, labels = truth["items"], truth["labels"]
    cfg = tiny_index.tiny_config(tmp_path, ["train.full_rank_users=6"], model="test_tiny_seq")
    L = cfg.index.sequence_max_len
    sizes = DataSizes(tiny_index.NUM_USERS, tiny_index.NUM_ITEMS, 0, 0, L)
    torch.manual_seed(5)
    model = build_model("test_tiny_seq", {"dim": 4}, sizes).eval()
    _checkpoint(cfg, model, sizes)
    result = run_evaluation(cfg)
    assert result["protocol"] == protocol
    index = Path(cfg.paths.work_dir) / "index"
    test = Samples.from_arrays(load_samples(str(index), "test"))

    def batch_of(row: int, candidates: torch.Tensor) -> dict:
        u, cut = int(test.user[row]), int(test.cut[row])
        history = items[u][:cut][-L:]  # events [0, cut), the last L
        batch = {"user": torch.tensor([u]), "items": candidates[None],
                 "sequence": torch.tensor([[0] * (L - len(history)) + history])}
        if protocol == "feedback":
            hist_labels = labels[u][:cut][-L:]
            batch["sequence_label"] = torch.tensor([[0] * (L - len(history)) + hist_labels])
        return batch

    with torch.no_grad():
        scores = torch.cat([model(batch_of(r, test.candidates[r])).scores
                            for r in range(len(test))])
    if protocol == "feedback":
        acc = FeedbackAccumulator()
        acc.update(scores, test.user, test.target_label)
        expected = acc.compute()
        floor = PROTOCOLS["feedback"].random_floor(1 + tiny_index.EVAL_NEGATIVES)
        assert result["random_test"] == floor
    else:
        expected = ranking_metrics(scores, test.user)
        assert "random_test" not in result
    assert result["test"] == pytest.approx(expected, abs=1e-6)

    # Popularity: positive events before each user's valid target (the train part).
    counts = np.zeros(tiny_index.NUM_ITEMS + 1)
    for u in items:
        n = len(items[u])
        for item, label in zip(items[u][:n - 2], labels[u][:n - 2]):
            counts[item] += label
    pop = torch.as_tensor(counts[test.candidates.numpy()]).float()
    if protocol == "feedback":
        acc = FeedbackAccumulator()
        acc.update(pop, test.user, test.target_label)
        assert result["popularity_test"] == pytest.approx(acc.compute())
    else:
        assert result["popularity_test"] == pytest.approx(ranking_metrics(pop, test.user))

    # Full ranking: users with a positive test target (seeded sample), their history items
    # and padding excluded, pessimistic ties.
    candidates = (test.target_label == 1).nonzero()[:, 0]  # one test row per user, sorted
    g = torch.Generator().manual_seed(cfg.train.seed)
    picked = candidates[torch.randperm(len(candidates), generator=g)[:6]]
    all_items = torch.arange(1, tiny_index.NUM_ITEMS + 1)
    reciprocal = []
    with torch.no_grad():
        for row in picked.tolist():
            u, target = int(test.user[row]), int(test.candidates[row, 0])
            s = model(batch_of(row, all_items)).scores[0]
            target_score = s[target - 1]
            competing = ~torch.isin(all_items, torch.tensor(items[u][:int(test.cut[row])] +
                                                              [target]))
            reciprocal.append(1 / (1 + int(((s >= target_score) & competing).sum())))
    assert result["full"]["mrr"] == pytest.approx(np.mean(reciprocal), abs=1e-6)
    client = tracking.client(cfg)
    run = client.get_run(result["run_id"])
    assert run.data.tags["protocol"] == protocol


@pytest.mark.parametrize("name", ["sasrec", "svdpp"])
def test_full_ranking_by_item_table_equals_ranking_by_forward(tmp_path, name):
    """A next-item model's full ranking (states once, matmuls with the item table) gives
    every user the rank that scoring each chunk of items through ``forward`` gives."""
    from trainers.evaluate import _above_by_forward, _above_by_item_table, full_ranking
    from trainers.registry import model_class
    from trainers.split_data import declared_inputs, load_split_data

    tiny_index.write_sequence_index(tmp_path / "work", "leave_one_out")
    cfg = tiny_index.tiny_config(tmp_path, ["index.sequence_max_len=10"])
    required, optional = declared_inputs(model_class(name))
    data = load_split_data(cfg, required, ("test",), "cpu", optional)
    torch.manual_seed(0)
    params = dict(load_config("sample-loo", name, "local", []).model.params)
    model = build_model(name, params, data.sizes).eval()
    test = data.splits["test"]
    known = torch.unique(test.user * (tiny_index.NUM_ITEMS + 1) + test.candidates[:, 0])
    with torch.no_grad():
        fast = _above_by_item_table(model, data.builder, test, known, tiny_index.NUM_ITEMS, 7)
        slow = _above_by_forward(model, data.builder, test, known, tiny_index.NUM_ITEMS, 7)
    assert torch.equal(fast, slow) and fast.sum() > 0
    metrics = full_ranking(model, data.builder, test, tiny_index.NUM_ITEMS, 1000, 0, 7,
                           data.events)
    assert 0.0 < metrics["mrr"] <= 1.0


def test_full_ranking_covers_every_user_of_a_next_item_model_and_a_sample_otherwise(tmp_path):
    """Issue 24: ``full_rank_users: all`` ranks every user for a model with an item table;
    a target-aware model, which scores every item through ``forward``, at most
    ``full_rank_sample``; a number caps both, 0 turns full ranking off."""
    from trainers.evaluate import full_rank_count
    from trainers.registry import DataSizes, build_model

    sizes = DataSizes(num_users=5, num_items=9, history_slices=2, set_size=3, sequence_len=4)
    next_item = build_model("sasrec", dict(load_config("sample-loo", "sasrec", "local", [])
                                           .model.params), sizes)
    target_aware = build_model("score", dict(load_config("sample", "score", "local", [])
                                             .model.params), sizes)
    for overrides, expected in (([], (None, 200)),
                                (["train.full_rank_users=50"], (50, 50)),
                                (["train.full_rank_users=500"], (500, 200)),
                                (["train.full_rank_sample=30"], (None, 30)),
                                (["train.full_rank_users=0"], (0, 0))):
        cfg = load_config("sample", "score", "local", overrides)
        assert (full_rank_count(cfg, next_item), full_rank_count(cfg, target_aware)) == expected
