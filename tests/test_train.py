"""Batches, negative resampling and the Ray Train loop (MLflow, resume, two workers).

One local Ray for the module (start-up dominates); the Ray tests train the tiny test model
of tests/tiny_index.py on a hand-written index.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny_index
from trainers.batches import (BatchBuilder, NegativeSampler, PositiveSequences, Samples,
                              epoch_rows, shard_rows)

TESTS_DIR = Path(__file__).resolve().parent


# ------------------------------------------------------------------------- batches


def _coded_sets(n: int, T: int, S: int) -> torch.Tensor:
    """(n, T, 2, S) whose every entry encodes (entity, slice, kind): 1000e + 10t + kind + 1."""
    e = torch.arange(n)[:, None, None, None]
    t = torch.arange(T)[None, :, None, None]
    k = torch.arange(2)[None, None, :, None]
    out = (1000 * e + 10 * t + k + 1).expand(n, T, 2, S).clone()
    out[0] = 0  # padding row
    return out


def test_batch_shapes_and_history_window():
    T, S = 6, 3
    users, items = _coded_sets(5, T, S), _coded_sets(8, T, S)
    builder = BatchBuilder(frozenset({"slice_sets"}), users, items, T)
    user = torch.tensor([1, 2, 4])
    target = torch.tensor([1, 3, 5])  # earliest, middle, last slice
    cand = torch.tensor([[3, 5], [1, 2], [7, 6]])
    batch = builder.build(user, target, cand)
    H = T - 1
    assert set(batch) == {"user", "items", "label", "user_sets", "item_sets"}
    assert batch["user_sets"].shape == (3, H, 2, S)
    assert batch["item_sets"].shape == (3, 2, H, 2, S)
    assert batch["user_sets"].dtype == batch["item_sets"].dtype == torch.int64
    assert batch["label"].tolist() == [[1.0, 0.0]] * 3
    for b in range(3):
        for h in range(H):
            t = int(target[b]) - H + h
            got_u = batch["user_sets"][b, h]
            got_v = batch["item_sets"][b, :, h]
            if t < 0:  # before slice 0: all-empty
                assert (got_u == 0).all() and (got_v == 0).all()
            else:
                assert torch.equal(got_u, users[user[b], t])
                assert torch.equal(got_v, items[cand[b], t])
        # The window ends right before the target slice: no target or future slice leaks.
        seen_slices = (batch["user_sets"][b][batch["user_sets"][b] > 0] % 1000) // 10
        assert seen_slices.max() == target[b] - 1
        assert (seen_slices < target[b]).all()


def test_builder_builds_only_declared_fields_and_rejects_unknown():
    T = 4
    seq = PositiveSequences.from_csr(
        offsets=np.array([0, 0, 3, 4]), items=np.array([5, 6, 7, 8]),
        slices=np.array([0, 2, 3, 1], dtype=np.int16), labels=np.array([1, 1, 1, 1], np.int8),
        num_slices=T)
    builder = BatchBuilder(frozenset({"sequence"}), None, None, T, seq, sequence_len=3)
    batch = builder.build(torch.tensor([1, 1, 2]), torch.tensor([3, 1, 3]),
                          torch.tensor([[9, 4], [9, 4], [9, 4]]))
    assert set(batch) == {"user", "items", "label", "sequence"}
    # user 1: items 5 (slice 0), 6 (slice 2), 7 (slice 3). Before slice 3: [5, 6], left-padded.
    assert batch["sequence"].tolist() == [[0, 5, 6], [0, 0, 5], [0, 0, 8]]
    with pytest.raises(ValueError, match="unknown model inputs"):
        BatchBuilder(frozenset({"pictures"}), None, None, T)
    with pytest.raises(ValueError, match="slice_sets"):
        BatchBuilder(frozenset({"slice_sets"}), None, None, T)


def test_epoch_rows_shard_disjoint_and_cover():
    n, world = 103, 2
    parts = [epoch_rows(n, epoch=3, seed=1, rank=r, world_size=world) for r in range(world)]
    assert len(parts[0]) == len(parts[1]) == 52  # equal steps on every worker
    joined = torch.cat(parts)
    assert set(joined.tolist()) == set(range(n))  # every row, one padded repeat
    assert not torch.equal(epoch_rows(n, 3, 1, 0, 1), epoch_rows(n, 4, 1, 0, 1))  # reshuffled
    assert torch.equal(epoch_rows(n, 3, 1, 0, 1), epoch_rows(n, 3, 1, 0, 1))  # seeded
    shards = [shard_rows(n, r, 3) for r in range(3)]
    assert torch.cat(shards).tolist() == list(range(n))


@pytest.mark.parametrize("weighted", [False, True])
def test_resampled_negatives_avoid_target_slice_items(weighted):
    num_items, K = 12, 4
    gen = torch.Generator().manual_seed(0)
    # Users 1..5, three train rows each: their positives are the target-slice items.
    user = torch.arange(1, 6).repeat_interleave(3)
    cand = torch.stack([torch.randperm(num_items, generator=gen)[:K + 1] + 1 for _ in range(15)])
    pos = cand[:, 0]
    real = torch.tensor([2, 0, 1] * 5)
    train = Samples(user, torch.full((15,), 6), cand, real)
    weights = torch.arange(num_items + 1).double() if weighted else None
    sampler = NegativeSampler(train, num_items, weights)
    interacted = {u: set(pos[user == u].tolist()) for u in range(1, 6)}
    draws = []
    for epoch in (1, 2, 3):
        new = sampler.resample(train, epoch, seed=5).candidates
        assert torch.equal(new[:, 0], cand[:, 0])
        for row in range(15):
            r = int(real[row])
            assert new[row, 1:1 + r].tolist() == cand[row, 1:1 + r].tolist()  # real kept
            sampled = new[row, 1 + r:].tolist()
            assert not set(sampled) & interacted[int(user[row])]
            assert len(set(new[row].tolist())) == K + 1  # no repeats within a list
            assert all(1 <= i <= num_items for i in sampled)
        draws.append(new)
    assert not torch.equal(draws[0], draws[1])  # fresh each epoch
    assert torch.equal(sampler.resample(train, 2, seed=5).candidates, draws[1])  # seeded


def test_resampling_fails_clearly_when_no_item_is_left():
    train = Samples(torch.tensor([1, 1]), torch.tensor([3, 3]), torch.tensor([[1, 2], [2, 1]]),
                    torch.tensor([0, 0]))
    with pytest.raises(RuntimeError, match="no valid negative"):
        NegativeSampler(train, 2, None).resample(train, 1, seed=0)


# ------------------------------------------------------------------------ Ray Train


@pytest.fixture(scope="module")
def ray_local():
    import ray

    path = os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent)])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def _train(root: Path, overrides: list[str]):
    from trainers.train import run_training

    if not (root / "work" / "index").exists():
        tiny_index.write_index(root / "work")
    cfg = tiny_index.tiny_config(root, overrides)
    return cfg, run_training(cfg)


def test_training_logs_mlflow_run_and_resumes_on_two_workers(ray_local, tmp_path):
    from mlflow import MlflowClient

    root = tmp_path
    _, first = _train(root, ["train.epochs=1"])  # one worker, one epoch, then "interrupted"
    assert first["epochs"] == 1 and first["best_epoch"] == 1 and not first["skipped"]
    run_file = root / "work" / "train" / "test_tiny" / "run.json"
    assert json.loads(run_file.read_text())["run_id"] == first["run_id"]

    # The "interrupted" run goes on, now with 2 Ray workers of half a CPU each (the worker
    # count does not change what is learned, so it resumes the same run).
    cfg, second = _train(root, ["train.epochs=3", "train.num_workers=2",
                                "train.cpus_per_worker=0.5"])
    assert second["run_id"] == first["run_id"]
    assert second["epochs"] == 3
    # Two workers report what one worker reports.
    assert set(second) == set(first)
    assert set(second["valid"]) == set(first["valid"]) == {"hr@1", "hr@5", "hr@10", "ndcg@5",
                                                            "ndcg@10", "mrr"}
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in second["valid"].values())
    record = json.loads(run_file.read_text())
    assert record["status"] == "finished" and record["result"]["epochs"] == 3

    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    run = client.get_run(first["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.batch_size"] == "16"
    assert run.data.params["model.name"] == "test_tiny"
    assert run.data.tags["dataset"] == "sample" and run.data.tags["model"] == "test_tiny"
    assert len(run.data.tags["index_manifest_hash"]) == 16
    # Epoch 1 was trained once (not redone on resume), then epochs 2 and 3.
    history = client.get_metric_history(first["run_id"], "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    mrr = client.get_metric_history(first["run_id"], "valid_mrr")
    assert all(0.0 < m.value <= 1.0 for m in mrr)
    assert client.get_metric_history(first["run_id"], "samples_per_s")[0].value > 0
    artifacts = {a.path for a in client.list_artifacts(first["run_id"])}
    assert {"config.yaml", "curves.png"} <= artifacts
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert {m.name for m in models} >= {"model", "scorer"}
    import mlflow.pyfunc

    scorer = max((m for m in models if m.name == "scorer"), key=lambda m: m.creation_timestamp)
    pyfunc = mlflow.pyfunc.load_model(scorer.model_uri)
    example = pyfunc.input_example
    assert isinstance(example, dict)
    assert pyfunc.predict(example).shape == (2, 1 + cfg.index.eval_negatives)

    # Same config with its epochs done: skipped, nothing trained.
    _, third = _train(root, ["train.epochs=3", "train.num_workers=2",
                             "train.cpus_per_worker=0.5"])
    assert third["skipped"] and third["run_id"] == first["run_id"]
    checkpoints = sorted(p.name for p in run_file.parent.glob("checkpoint_epoch_*"))
    assert "checkpoint_epoch_0003" in checkpoints and len(checkpoints) <= 3
    assert Path(second["checkpoint"]).name in checkpoints
