"""Batches, negative resampling and the Ray Train loop (MLflow, resume, two workers).

One local Ray for the module (start-up dominates); the Ray tests train the tiny test model
of tests/tiny_index.py on a hand-written index.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tiny_index
import torch

from conf.loading import load_config
from trainers.batches import (
    BatchBuilder,
    EventSequences,
    NegativeSampler,
    Samples,
    SliceSequences,
    epoch_rows,
    random_windows,
    shard_rows,
    target_keys,
)
from trainers.protocols import PROTOCOLS, protocol_named
from trainers.registry import Output
from trainers.train import TrainState, finished_under, lr_factor, step_lrs

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
    builder = BatchBuilder(PROTOCOLS["slices"], frozenset({"slice_sets"}), users, items, T)
    user = torch.tensor([1, 2, 4])
    target = torch.tensor([1, 3, 5])  # earliest, middle, last slice
    cand = torch.tensor([[3, 5], [1, 2], [7, 6]])
    batch = builder.build(user, target, cand, torch.ones(3, dtype=torch.int64))
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
    csr = dict(offsets=np.array([0, 0, 4, 5]), items=np.array([5, 6, 9, 7, 8]),
               slices=np.array([0, 2, 2, 3, 1], dtype=np.int16),
               labels=np.array([1, 1, 0, 1, 1], np.int8), num_slices=T)
    seq = SliceSequences.from_csr(**csr, positives_only=True)
    builder = BatchBuilder(PROTOCOLS["slices"], frozenset({"sequence"}), None, None, T, seq, sequence_len=3)
    user, cut = torch.tensor([1, 1, 2]), torch.tensor([3, 1, 3])
    cand, ones = torch.tensor([[9, 4], [9, 4], [9, 4]]), torch.ones(3, dtype=torch.int64)
    batch = builder.build(user, cut, cand, ones)
    assert set(batch) == {"user", "items", "label", "sequence"}
    # user 1: items 5 (slice 0), 6 (slice 2), 9 (slice 2, disliked), 7 (slice 3). A model
    # without labels sees the liked ones before slice 3: [5, 6], left-padded.
    assert batch["sequence"].tolist() == [[0, 5, 6], [0, 0, 5], [0, 0, 8]]
    # A labelled model sees every event with its feedback (issue 15: real negatives reach
    # the history), never one of the target slice or later.
    every = SliceSequences.from_csr(**csr, positives_only=False)
    labelled = BatchBuilder(PROTOCOLS["slices"], frozenset({"sequence", "sequence_label"}), None, None, T,
                            every, sequence_len=3)
    batch = labelled.build(user, cut, cand, ones)
    assert batch["sequence"].tolist() == [[5, 6, 9], [0, 0, 5], [0, 0, 8]]
    assert batch["sequence_label"].tolist() == [[1, 1, 0], [0, 0, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="unknown model inputs"):
        BatchBuilder(PROTOCOLS["slices"], frozenset({"pictures"}), None, None, T)
    with pytest.raises(ValueError, match="slice_sets"):
        BatchBuilder(PROTOCOLS["slices"], frozenset({"slice_sets"}), None, None, T)
    with pytest.raises(ValueError, match="'leave_one_out' protocol cannot feed .*sequence_label"):
        BatchBuilder(PROTOCOLS["leave_one_out"], frozenset({"sequence", "sequence_label"}), None, None, T,
                     seq, 3)


def test_slices_index_feeds_real_negatives_to_models_that_read_labels(tmp_path):
    """Issue 15: under ``slices`` a labelled model's history holds the user's disliked
    events too (label 0); a model without labels keeps the liked ones only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainers.split_data import load_split_data

    positives = tiny_index.write_index(tmp_path / "work")["positives"]
    path = tmp_path / "work" / "index" / "sequences" / "part-0.parquet"
    table = pq.read_table(path).to_pylist()
    disliked = 40 if positives[1, 0] != 40 else 39
    row = table[0]  # user 1: a disliked item in slice 0, after its liked one
    assert row["user"] == 1
    for key, value in (("items", disliked), ("ts", 1), ("slice", 0), ("label", 0)):
        row[key].insert(1, value)
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(path)), path)
    cfg = tiny_index.tiny_config(tmp_path, ["index.sequence_max_len=4"])
    T = tiny_index.T
    user, cut = torch.tensor([1]), torch.tensor([T - 3])  # the train target slice
    labelled = load_split_data(cfg, frozenset({"sequence"}), ("train",), "cpu",
                               frozenset({"sequence_label"}))
    batch = labelled.builder.build(user, cut, torch.tensor([[1, 2]]), torch.tensor([1]))
    liked = positives[1, :T - 3].tolist()  # one liked item per slice before the target
    assert T - 3 == 2  # so: 2 liked events + 1 disliked, left-padded to L = 4
    assert batch["sequence"][0].tolist() == [0, liked[0], disliked, liked[1]]
    assert batch["sequence_label"][0].tolist() == [0, 1, 0, 1]
    plain = load_split_data(cfg, frozenset({"sequence"}), ("train",), "cpu")
    batch = plain.builder.build(user, cut, torch.tensor([[1, 2]]), torch.tensor([1]))
    assert "sequence_label" not in batch and batch["sequence"][0].tolist() == [0, 0, *liked]


def _events() -> EventSequences:
    # user 1: items 5 6 7 8 with labels 1 0 1 1; user 2: 9 3; user 3: none
    return EventSequences.from_csr(np.array([0, 0, 4, 6, 6]), np.array([5, 6, 7, 8, 9, 3]),
                                   np.array([1, 0, 1, 1, 1, 0]))


def test_position_histories_and_feedback_labels():
    events = _events()
    builder = BatchBuilder(PROTOCOLS["feedback"], frozenset({"sequence", "sequence_label"}), None, None, 0,
                           events, sequence_len=3)
    user, cut = torch.tensor([1, 1, 1, 2]), torch.tensor([0, 2, 3, 1])
    cand = torch.tensor([[5, 1], [7, 1], [8, 2], [3, 4]])
    batch = builder.build(user, cut, cand, torch.tensor([1, 1, 1, 0]))
    assert set(batch) == {"user", "items", "label", "sequence", "sequence_label"}
    # History = events [cut - L, cut): never the target (position cut) or later.
    assert batch["sequence"].tolist() == [[0, 0, 0], [0, 5, 6], [5, 6, 7], [0, 0, 9]]
    assert batch["sequence_label"].tolist() == [[0, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1]]
    assert batch["label"].tolist() == [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]
    loo = BatchBuilder(PROTOCOLS["leave_one_out"], frozenset({"sequence"}), None, None, 0, events, 2)
    assert set(loo.build(user, cut, cand, torch.ones(4, dtype=torch.int64))) == {
        "user", "items", "label", "sequence"}
    with pytest.raises(ValueError, match="'leave_one_out' protocol cannot feed .*slice_sets"):
        BatchBuilder(PROTOCOLS["leave_one_out"], frozenset({"slice_sets"}), None, None, 0)
    with pytest.raises(ValueError, match="cannot feed .*sequence_label"):
        BatchBuilder(PROTOCOLS["leave_one_out"], frozenset({"sequence_label"}), None, None, 0, events, 2)
    bad = Samples(torch.tensor([2]), torch.tensor([2]), torch.tensor([[3, 4]]),
                  torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="cut 2 outside the user's 2 events"):
        events.check_cuts(bad, "test")


def test_resampled_negatives_never_touch_any_item_of_the_user():
    events = _events()
    num_items = 12
    # user 1's train rows predict items 6 and 7 (positions 1, 2); user 2's predicts 3.
    train = Samples(torch.tensor([1, 1, 2]), torch.tensor([1, 2, 1]),
                    torch.tensor([[6, 11, 1, 2], [7, 4, 1, 2], [3, 1, 2, 4]]),
                    torch.tensor([1, 0, 0]), torch.tensor([0, 1, 0]))
    sampler = NegativeSampler(events.touched_keys(num_items), num_items, None)
    touched = {1: {5, 6, 7, 8}, 2: {9, 3}}
    for epoch in range(1, 30):
        new = sampler.resample(train, epoch, seed=3).candidates
        assert new[0, :2].tolist() == [6, 11]  # target and real negative kept
        for row, u in enumerate((1, 1, 2)):
            start = 1 + int(train.real_negatives[row])
            # never an item the user touched: not the row's target only, but also later
            # events (8) and negative feedback (6 for user 1, 3 for user 2)
            assert not set(new[row, start:].tolist()) & touched[u]
            assert len(set(new[row].tolist())) == 4


def test_random_windows_cover_every_window_before_the_cut_and_never_later():
    # user 1: 10 events (items 101..110), train target at position 7; user 2: 4 events,
    # target at 2 (shorter than L: keeps its own window)
    events = EventSequences.from_csr(np.array([0, 0, 10, 14]),
                                     np.r_[np.arange(101, 111), [201, 202, 203, 204]],
                                     np.ones(14, dtype=np.int64))
    L = 3
    train = Samples(torch.tensor([1, 2]), torch.tensor([7, 2]),
                    torch.tensor([[108, 55, 56], [203, 57, 58]]), torch.tensor([0, 0]),
                    torch.tensor([1, 1]))
    builder = BatchBuilder(PROTOCOLS["leave_one_out"], frozenset({"sequence"}), None, None, 0, events, L)
    seen = {}
    for epoch in range(1, 200):
        moved = random_windows(train, events, L, epoch, seed=5)
        assert moved.cut[1] == 2 and moved.candidates[1].tolist() == [203, 57, 58]
        cut = int(moved.cut[0])
        # the window is L history events + its target, contiguous, ending at or before 7
        assert L <= cut <= 7
        assert moved.candidates[0].tolist() == [101 + cut, 55, 56]  # negatives kept
        history = builder.rows(moved, torch.tensor([0]))["sequence"][0].tolist()
        assert history == [101 + cut - 3, 101 + cut - 2, 101 + cut - 1]
        seen[cut] = seen.get(cut, 0) + 1
    assert sorted(seen) == [3, 4, 5, 6, 7]  # all cut - L + 1 windows, roughly uniform
    assert min(seen.values()) > 199 / 5 / 2
    # seeded by (seed, epoch): every worker and a resumed run draw the same windows
    assert torch.equal(random_windows(train, events, L, 4, 5).cut,
                       random_windows(train, events, L, 4, 5).cut)


class _FixedScores(torch.nn.Module):
    """Scores = a fixed function of (user, item, history): no parameters, same everywhere."""

    def forward(self, batch) -> Output:
        history = batch["sequence"].sum(1, keepdim=True)  # (B, 1)
        return Output(torch.sin(batch["items"] * 1.7 + batch["user"][:, None] * 0.3
                                + history * 0.1))


def _validation_samples() -> tuple[BatchBuilder, Samples]:
    gen = torch.Generator().manual_seed(4)
    n = 23  # not a multiple of the worker count
    offsets = np.arange(0, 6 * (n + 2), 6)  # (n+2,): users 0..n with 6 events each
    E = int(offsets[-1])
    events = EventSequences.from_csr(offsets, np.arange(E) % 17 + 1, np.arange(E) % 2)
    builder = BatchBuilder(PROTOCOLS["feedback"], frozenset({"sequence", "sequence_label"}), None, None, 0,
                           events, sequence_len=3)
    samples = Samples(torch.arange(1, n + 1), torch.randint(1, 6, (n,), generator=gen),
                      torch.randint(1, 18, (n, 10), generator=gen),
                      torch.zeros(n, dtype=torch.int64), torch.randint(0, 2, (n,), generator=gen))
    return builder, samples


def _validate_worker(rank: int, world: int, init: str, out: str, protocol: str) -> None:
    import torch.distributed as dist

    from trainers.train import validate

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    builder, samples = _validation_samples()
    if protocol != "feedback":
        samples = Samples(samples.user, samples.cut, samples.candidates, samples.real_negatives,
                          torch.ones_like(samples.target_label))
    metrics = validate(_FixedScores(), builder, samples, 4, rank, world,
                       protocol_named(protocol))
    if rank == 0:
        Path(out).write_text(json.dumps(metrics))
    dist.destroy_process_group()


@pytest.mark.parametrize("protocol", ["feedback", "leave_one_out"])
def test_sharded_validation_equals_one_process(tmp_path, protocol):
    """Two gloo processes (shards gathered or histograms all-reduced) report the metrics of
    one process over all rows."""
    import torch.multiprocessing as mp

    from trainers.train import validate

    out = tmp_path / "metrics.json"
    mp.spawn(_validate_worker, args=(2, f"file://{tmp_path}/init", str(out), protocol),
             nprocs=2)
    builder, samples = _validation_samples()
    if protocol != "feedback":
        samples = Samples(samples.user, samples.cut, samples.candidates, samples.real_negatives,
                          torch.ones_like(samples.target_label))
    single = validate(_FixedScores(), builder, samples, 5, 0, 1, protocol_named(protocol))
    assert json.loads(out.read_text()) == pytest.approx(single)


def test_weight_decay_reaches_every_parameter_and_lr_can_be_set():
    from torch import nn

    from trainers.embedding import RowSparseEmbedding, build_optimizer

    model = nn.ModuleDict({"dense": nn.Linear(3, 2), "table": RowSparseEmbedding(5, 2, 0.1)})
    opt = build_optimizer(model, lr=0.1, l2=0.01, weight_decay=0.001)
    assert opt.dense.param_groups[0]["weight_decay"] == 0.001  # Adam's coupled L2
    assert opt.rows.weight_decay == pytest.approx(0.011)  # λ + weight_decay on touched rows
    opt.set_lr(0.025)
    assert opt.dense.param_groups[0]["lr"] == 0.025 and opt.rows.lr == 0.025 == opt.lr


def test_plateau_halves_lr_and_patience_stops():
    state = TrainState(lr=0.01)
    scores = [0.5, 0.4, 0.4, 0.6, 0.6, 0.6, 0.6]  # best at epochs 1 and 4
    best = [state.after_validation(e, s, patience=4, lr_plateau_patience=2)
            for e, s in enumerate(scores, start=1)]
    assert best == [True, False, False, True, False, False, False]
    # 2 epochs without gain halve once (epoch 3); after the new best, again at epoch 6
    assert state.lr == pytest.approx(0.01 / 4)
    assert state.best_score == 0.6 and state.best_epoch == 4 and state.stale_epochs == 3
    assert not state.stopped_early
    state.after_validation(8, 0.1, patience=4, lr_plateau_patience=None)
    assert state.stopped_early and state.lr == pytest.approx(0.01 / 4)

    # min_epochs: a dip in the first epochs does not stop the run, a later plateau does
    dip = TrainState(lr=0.01)
    for epoch, score in enumerate([0.50, 0.45, 0.40, 0.42], start=1):
        dip.after_validation(epoch, score, patience=2, lr_plateau_patience=None, min_epochs=5)
    assert not dip.stopped_early and dip.stale_epochs == 3
    dip.after_validation(5, 0.49, patience=2, lr_plateau_patience=None, min_epochs=5)
    assert dip.stopped_early  # epoch 5 reached, 4 epochs without gain


def test_linear_warmup_and_decay_follow_berts_schedule():
    """``train.lr_warmup_steps`` / ``lr_decay_steps`` (BERT4Rec Section 4.3, "linear decay of
    the learning rate"; its code warms up over 100 steps, then decays to 0 at 400,000)."""
    assert [lr_factor(n, 4, 20) for n in (1, 2, 3)] == [0.25, 0.5, 0.75]  # warmup
    assert [lr_factor(n, 4, 20) for n in (4, 10, 20, 25)] == [0.8, 0.5, 0.0, 0.0]  # decay
    assert lr_factor(7, 0, None) == lr_factor(5, 4, None) == 1.0 and lr_factor(1, 0, 2) == 0.5
    # an epoch's k-th step goes on from the run's steps so far and the current base lr
    tc = load_config("beauty", "bert4rec", overrides=["train.lr=0.001"]).train
    assert (tc.lr_warmup_steps, tc.lr_decay_steps) == (100, 400_000)  # the released code's
    state = TrainState(lr=0.001, optimizer_steps=49)
    step_lr = step_lrs(tc, state)
    assert step_lr(1) == pytest.approx(0.001 * 50 / 100)
    assert step_lr(201) == pytest.approx(0.001 * (1 - 250 / 400_000))
    state.lr = 0.0005  # halved on a plateau: the schedule scales the new base
    assert step_lrs(tc, state)(1) == pytest.approx(0.0005 * 50 / 100)
    constant = load_config("beauty", "sasrec").train
    assert constant.lr_warmup_steps == 0 and step_lrs(constant, state) is None
    with pytest.raises(ValueError, match="lr_decay_steps .* must exceed"):
        load_config("beauty", "bert4rec", overrides=["train.lr_decay_steps=100"])


def test_a_raised_patience_resumes_an_early_stopped_run():
    """Issue 23: BERT4Rec stopped by the datasets' patience 10 on ML-100K; rerun with its
    preset's 200 it was skipped as finished. Patience is a runtime field: a rerun with a
    larger one goes on from the checkpoint, a smaller or equal one keeps the run."""
    stopped = {"epochs": 77, "best_epoch": 67, "stopped_early": True}
    tc = load_config("ml-100k", "sasrec").train  # patience 10, epochs 200

    def under(**keys):
        return finished_under(stopped, tc.model_copy(update=keys))

    assert under() and under(patience=5)
    assert not under(patience=200)  # 10 epochs without gain < 200: resume
    assert under(patience=200, epochs=77)  # its cap reached all the same
    assert not under(min_epochs=100)  # stopped before the rerun's min_epochs
    capped = {"epochs": 30, "best_epoch": 30, "stopped_early": False}
    assert not finished_under(capped, tc) and finished_under(capped, tc.model_copy(
        update={"epochs": 30}))
    # The restored state stops under the rerun's patience, not the one it was saved with.
    state = TrainState(epoch=77, best_epoch=67, stale_epochs=10, stopped_early=True)
    assert state.stops(patience=10) and not state.stops(patience=200)


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
    train = Samples(user, torch.full((15,), 6), cand, real, torch.ones(15, dtype=torch.int64))
    weights = torch.arange(num_items + 1).double() if weighted else None
    sampler = NegativeSampler(target_keys(train, num_items), num_items, weights)
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
                    torch.tensor([0, 0]), torch.tensor([1, 1]))
    with pytest.raises(RuntimeError, match="no valid negative"):
        NegativeSampler(target_keys(train, 2), 2, None).resample(train, 1, seed=0)


# ------------------------------------------------------------------------ Ray Train


def _train(root: Path, overrides: list[str]):
    from trainers.train import run_training

    if not (root / "work" / "index").exists():
        tiny_index.write_index(root / "work")
    cfg = tiny_index.tiny_config(root, overrides)
    return cfg, run_training(cfg)


def test_training_logs_mlflow_run_and_resumes_on_two_workers(ray_local, tmp_path):
    from mlflow import MlflowClient

    root = tmp_path
    tiny_index.write_index(root / "work")
    # a step per batch of 16 (issue 23: how long a run trained, and what ended it)
    rows = pq.read_metadata(next((root / "work" / "index" / "samples" / "train")
                                 .glob("*.parquet"))).num_rows
    steps = -(-rows // 16)
    # the lr warms up past the first epoch, then decays; the resumed run goes on with it
    schedule = [f"train.lr_warmup_steps={steps + 1}", f"train.lr_decay_steps={4 * steps}"]
    # one worker, one epoch, then "interrupted"
    _, first = _train(root, ["train.epochs=1", *schedule])
    assert first["epochs"] == 1 and first["best_epoch"] == 1 and not first["skipped"]
    assert first["optimizer_steps"] == steps and first["stopped_by"] == "epoch_cap"
    run_file = root / "work" / "train" / "test_tiny" / "run.json"
    assert json.loads(run_file.read_text())["run_id"] == first["run_id"]

    # The "interrupted" run goes on, now with 2 Ray workers of half a CPU each (the worker
    # count does not change what is learned, so it resumes the same run).
    cfg, second = _train(root, ["train.epochs=3", "train.num_workers=2",
                                "train.cpus_per_worker=0.5", *schedule])
    assert second["run_id"] == first["run_id"]
    assert second["epochs"] == 3
    # the count goes on from the checkpoint: 2 more epochs, each worker's half share of the
    # rows (rounded up) in batches of 16
    half = -(-rows // 2)
    assert second["optimizer_steps"] == steps + 2 * -(-half // 16)
    # Two workers report what one worker reports.
    assert set(second) == set(first)
    assert set(second["valid"]) == set(first["valid"]) == {"hr@1", "hr@5", "hr@10", "hr@20",
                                                            "ndcg@5", "ndcg@10", "ndcg@20",
                                                            "mrr"}
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in second["valid"].values())
    record = json.loads(run_file.read_text())
    assert record["status"] == "finished" and record["result"]["epochs"] == 3
    assert record["result"]["optimizer_steps"] == second["optimizer_steps"]
    assert record["result"]["stopped_by"] == "epoch_cap"

    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    run = client.get_run(first["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.batch_size"] == "16"
    assert run.data.params["model.name"] == "test_tiny"
    assert run.data.tags["dataset"] == "sample" and run.data.tags["model"] == "test_tiny"
    assert run.data.tags["protocol"] == "slices" and second["selection_metric"] == "mrr"
    assert len(run.data.tags["index_manifest_hash"]) == 16
    assert run.data.tags["stopped_by"] == "epoch_cap"
    assert run.data.metrics["optimizer_steps"] == second["optimizer_steps"]
    # Epoch 1 was trained once (not redone on resume), then epochs 2 and 3.
    history = client.get_metric_history(first["run_id"], "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    # each epoch's lr is its last step's: warming up in epoch 1, then decaying over the
    # resumed run's steps counted from the checkpoint's
    lrs = {m.step: m.value for m in client.get_metric_history(first["run_id"], "lr")}
    second_steps = -(-half // 16)
    assert lrs == pytest.approx({1: cfg.train.lr * steps / (steps + 1),
                                 2: cfg.train.lr * (1 - (steps + second_steps) / (4 * steps)),
                                 3: cfg.train.lr * (1 - (steps + 2 * second_steps) / (4 * steps))})
    mrr = client.get_metric_history(first["run_id"], "valid_mrr")
    assert all(0.0 < m.value <= 1.0 for m in mrr)
    assert client.get_metric_history(first["run_id"], "samples_per_s")[0].value > 0
    artifacts = {a.path for a in client.list_artifacts(first["run_id"])}
    assert {"config.yaml", "curves.png"} <= artifacts
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert {m.name for m in models} == {"model"}  # logged once (tests/test_failures.py)
    import mlflow.pyfunc

    logged = max(models, key=lambda m: m.creation_timestamp)
    pyfunc = mlflow.pyfunc.load_model(logged.model_uri)
    example = pyfunc.input_example  # two users, in the original ids (tests/tiny_index.py)
    assert example["user_id"].tolist() == [1001, 1002]
    served = pyfunc.predict(example)
    assert list(served.columns) == ["user_id", "item_id", "rank", "score"]
    assert served.groupby("user_id")["rank"].apply(list).tolist() == [list(range(1, 11))] * 2
    assert served["item_id"].between(5001, 5000 + tiny_index.NUM_ITEMS).all()

    # Same config with its epochs done: skipped, nothing trained.
    _, third = _train(root, ["train.epochs=3", "train.num_workers=2",
                             "train.cpus_per_worker=0.5", *schedule])
    assert third["skipped"] and third["run_id"] == first["run_id"]
    checkpoints = sorted(p.name for p in run_file.parent.glob("checkpoint_epoch_*"))
    assert "checkpoint_epoch_0003" in checkpoints and len(checkpoints) <= 3
    assert Path(second["checkpoint"]).name in checkpoints


@pytest.mark.parametrize("protocol", ["leave_one_out", "feedback"])
def test_training_under_sequence_protocols(ray_local, tmp_path, protocol):
    """A short real run of the sequence test model: valid metrics, selection metric, early
    stopping and best checkpoint follow the protocol; the new optimiser settings run."""
    from mlflow import MlflowClient

    from trainers.train import run_training

    tiny_index.write_sequence_index(tmp_path / "work", protocol)
    window = {"leave_one_out": "random", "feedback": "last"}[protocol]
    order = {"leave_one_out": "by_length", "feedback": "shuffled"}[protocol]
    cfg = tiny_index.tiny_config(tmp_path, ["train.epochs=3", "train.weight_decay=0.0001",
                                            "train.grad_clip=5.0", "train.lr_plateau_patience=1",
                                            "train.full_rank_users=0",
                                            f"train.window={window}",
                                            f"train.batch_order={order}"], model="test_tiny_seq")
    if protocol == "feedback":  # its rows are every target already: a random window is refused
        from trainers.split_data import load_split_data

        moved = cfg.model_copy(update={"train": cfg.train.model_copy(update={"window": "random"})})
        with pytest.raises(ValueError, match="train.window: random moves leave_one_out"):
            load_split_data(moved, frozenset({"sequence"}), ("train",), "cpu")
    result = run_training(cfg)
    metric = {"leave_one_out": "mrr", "feedback": "auc"}[protocol]
    assert result["protocol"] == protocol and result["selection_metric"] == metric
    expected = ({"hr@1", "hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10",
                 "ndcg@20", "mrr"} if protocol != "feedback"
                else {"auc", "gauc", "mrr@10", "ndcg@10", "auc_pos"})
    assert set(result["valid"]) == expected
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    run = client.get_run(result["run_id"])
    assert run.data.tags["protocol"] == protocol
    # The best checkpoint is the epoch with the best valid selection metric.
    history = {m.step: m.value for m in client.get_metric_history(result["run_id"],
                                                                 f"valid_{metric}")}
    assert result["best_epoch"] == max(history, key=lambda e: (history[e], -e))
    assert result["valid"][metric] == pytest.approx(history[result["best_epoch"]])
    best = client.get_metric_history(result["run_id"], f"best_valid_{metric}")
    assert max(m.value for m in best) == pytest.approx(result["valid"][metric])
    # lr halves after every epoch without gain (plateau patience 1)
    lrs = {m.step: m.value for m in client.get_metric_history(result["run_id"], "lr")}
    assert lrs[1] == pytest.approx(cfg.train.lr)
    best_so_far = -1.0
    for e in (1, 2):
        gained = history[e] > best_so_far
        best_so_far = max(best_so_far, history[e])
        assert lrs[e + 1] == pytest.approx(lrs[e] if gained else lrs[e] / 2)


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_history_negatives_follow_the_candidates_distribution(tmp_path, sampling):
    """``next_negatives`` (a sampled item per history position) are drawn as the index's
    candidate negatives: uniform, or by 1 + train-part popularity, the sampler's weights.
    Under popularity-sampled candidates, uniform history negatives taught GRU4Rec and SASRec
    popularity, which the candidate lists then punish (issue 14: AUC below random)."""
    from trainers.split_data import load_split_data

    tiny_index.write_sequence_index(tmp_path / "work", "feedback")
    cfg = tiny_index.tiny_config(tmp_path, [f"index.negative_sampling={sampling}"])
    data = load_split_data(cfg, frozenset({"sequence"}), ("train",), "cpu",
                           frozenset({"sequence_label", "next_negatives"}))
    drawn = data.builder.next_negatives
    candidates = data.negative_sampler(cfg).items
    if sampling == "uniform":
        assert drawn.cdf is None and candidates.cdf is None
    else:
        weights = 1.0 + data.train_counts.double()
        weights[0] = 0.0
        torch.testing.assert_close(drawn.cdf, weights.cumsum(0) / weights.sum())
        torch.testing.assert_close(candidates.cdf, drawn.cdf)
    train = data.splits["train"]
    batch = data.builder.rows(train, torch.arange(len(train)))
    L = cfg.index.sequence_max_len
    assert batch["next_negatives"].shape == (len(train), L - 1)
    assert 1 <= batch["next_negatives"].min() and batch["next_negatives"].max() <= 40
    # a model that does not declare them never gets them
    plain = load_split_data(cfg, frozenset({"sequence"}), ("train",), "cpu")
    assert "next_negatives" not in plain.builder.rows(train, torch.arange(3))


def test_active_sampling_draws_training_negatives_from_active_items_only(tmp_path):
    """``index.negative_sampling: active`` (SCoRe's code): the per-epoch training negatives
    come from the same pool as the index's candidates, the items with positives in at least
    ``index.active_min_slices`` of the T slices; no other item is ever drawn."""
    from store.index import load_popularity
    from trainers.split_data import load_split_data

    tiny_index.write_index(tmp_path / "work")
    counts = load_popularity(str(tmp_path / "work" / "index"))
    slices_active = (counts[1:] > 0).sum(1)  # (I,)
    k = int(np.median(slices_active)) + 1
    active = set((np.flatnonzero(slices_active >= k) + 1).tolist())
    assert 10 < len(active) < tiny_index.NUM_ITEMS  # a real cut, with room to draw
    cfg = tiny_index.tiny_config(tmp_path, ["index.negative_sampling=active",
                                            f"index.active_min_slices={k}"])
    data = load_split_data(cfg, frozenset({"slice_sets"}), ("train",), "cpu")
    sampler = data.negative_sampler(cfg)
    train = data.splits["train"]
    drawn = set()
    for epoch in (1, 2, 3):
        new = data.train_epoch_samples(cfg, epoch, sampler).candidates
        for row in range(len(train)):
            drawn |= set(new[row, 1 + int(train.real_negatives[row]):].tolist())
    assert drawn <= active and len(drawn) > len(active) // 2


def test_item_distribution_draws_by_weight():
    from trainers.batches import ItemDistribution

    weights = torch.tensor([5.0, 0.0, 1.0, 3.0])  # padding's weight is ignored
    draws = ItemDistribution(3, weights, "cpu").draw((4000,), torch.Generator().manual_seed(0))
    share = torch.bincount(draws, minlength=4).double() / 4000
    assert share[0] == 0 and share[1] == 0
    assert share[3] == pytest.approx(0.75, abs=0.03)
    uniform = ItemDistribution(3, None, "cpu").draw((2, 5))
    assert uniform.shape == (2, 5) and 1 <= uniform.min() and uniform.max() <= 3
    with pytest.raises(ValueError, match="must be \\(4,\\)"):
        ItemDistribution(3, torch.ones(3), "cpu")
    builder_inputs = frozenset({"next_negatives"})
    with pytest.raises(ValueError, match="must also read 'sequence'"):
        BatchBuilder(PROTOCOLS["feedback"], builder_inputs, None, None, 0)


def test_the_latest_report_tells_where_a_run_stands():
    """Ray lists only the best two checkpoints in ``best_checkpoints``; a run whose last
    epochs were worse (stopped early at 5, best 2 and 3) must read epoch 5 and the stop from
    the latest report, and a resumed run with no epoch left falls back to the checkpoints."""
    from types import SimpleNamespace

    from trainers.train import latest_report, stopped_by

    kept = [(None, {"epoch": 2, "stopped_early": False}), (None, {"epoch": 3,
                                                               "stopped_early": False})]
    stopped = SimpleNamespace(best_checkpoints=kept,
                              metrics={"epoch": 5, "stopped_early": True})
    assert latest_report(stopped) == {"epoch": 5, "stopped_early": True}
    assert stopped_by(latest_report(stopped)) == "early_stopping"
    resumed = SimpleNamespace(best_checkpoints=kept, metrics={})
    assert latest_report(resumed)["epoch"] == 3
    assert stopped_by(latest_report(resumed)) == "epoch_cap"
