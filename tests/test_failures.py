"""A killed Ray Train worker does not fail the run, and the logged model holds one copy of the
weights.

The worker is SIGKILLed from a thread of this test mid-training; Ray Train's FailureConfig
(``train.max_failures``) restarts it from the latest checkpoint, and the run ends exactly as
an uninterrupted run with the same seed: same best epoch, validation metrics, weights and
per-epoch curves. The training steps of the test model sleep so that an epoch lasts long
enough to be killed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny_index
from conf.loading import section_hash
from run_curves import epoch_curves
from store.runs import CHECKPOINT_FILE, RUN_FILE, run_dir
from trainers.checkpoints import load_checkpoint
from trainers.registry import Batch, Output, register
from trainers.snapshot import snapshot_of_index
from trainers.top_k import TopK
from trainers.train import _RUNTIME_FIELDS, resume_key, run_training

STEP_S = 0.25  # seconds a training step sleeps: 2 steps an epoch
EPOCHS = 4
CURVES = ("train_loss", "valid_mrr")


@register("test_slow_tiny")
class SlowTinyModel(tiny_index.TinyModel):
    """The tiny test model with slow training steps (same scores, same gradients)."""

    def forward(self, batch: Batch) -> Output:
        if self.training:
            time.sleep(STEP_S)
        return super().forward(batch)


def _config(root: Path):
    tiny_index.write_index(root / "work")  # seeded: the same index in every root
    return tiny_index.tiny_config(root, [f"train.epochs={EPOCHS}", "train.max_failures=1"],
                                  model="test_slow_tiny")


@pytest.fixture(scope="module")
def uninterrupted(ray_local, tmp_path_factory):
    cfg = _config(tmp_path_factory.mktemp("uninterrupted"))
    return cfg, run_training(cfg)


def _ray_train_workers() -> list[int]:
    """PIDs of Ray Train worker processes descending from this process (read from /proc, so
    another session's Ray on the same machine is never touched)."""
    parent, title = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # exited meanwhile
            continue
        parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        title[int(entry.name)] = cmdline
    ours = {os.getpid()}
    while True:
        more = {pid for pid, ppid in parent.items() if ppid in ours} - ours
        if not more:
            break
        ours |= more
    return sorted(pid for pid in ours if b"RayTrainWorker" in title[pid])


def _kill_after_first_checkpoint(cfg, killed: list[dict]) -> None:
    """Wait for epoch 1's checkpoint, then SIGKILL the worker during the next epoch."""
    folder = Path(run_dir(cfg))
    deadline = time.monotonic() + 300
    while not (folder / "checkpoint_epoch_0001" / CHECKPOINT_FILE).exists():
        assert time.monotonic() < deadline, "no first checkpoint"
        time.sleep(0.05)
    time.sleep(STEP_S / 2)
    workers = _ray_train_workers()
    last = folder / f"checkpoint_epoch_{EPOCHS:04d}"
    killed.append({"workers": workers, "run_done": last.exists()})
    for pid in workers:
        os.kill(pid, signal.SIGKILL)


def _best_weights(summary: dict) -> dict[str, torch.Tensor]:
    payload = load_checkpoint(summary["checkpoint"])
    return payload["model"]


def test_killed_worker_restarts_from_checkpoint_and_matches_uninterrupted_run(
        uninterrupted, tmp_path):
    cfg_a, a = uninterrupted
    cfg_b = _config(tmp_path)
    killed: list[dict] = []
    killer = threading.Thread(target=_kill_after_first_checkpoint, args=(cfg_b, killed),
                              daemon=True)
    killer.start()
    b = run_training(cfg_b)  # returns normally: the restart happened inside Ray Train
    killer.join(timeout=10)
    assert len(killed) == 1 and len(killed[0]["workers"]) == 1, killed
    assert not killed[0]["run_done"]  # killed mid-training, before the last epoch's checkpoint
    assert (Path(run_dir(cfg_b)) / RUN_FILE).exists()

    for key in ("best_epoch", "epochs", "stopped_early", "valid"):
        assert b[key] == a[key], key
    assert a["epochs"] == EPOCHS
    weights_a, weights_b = _best_weights(a), _best_weights(b)
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    curves_a = epoch_curves(cfg_a.tracking.uri, a["run_id"], CURVES)
    assert curves_a == epoch_curves(cfg_b.tracking.uri, b["run_id"], CURVES)
    assert sorted(curves_a["train_loss"]) == list(range(1, EPOCHS + 1))


def test_logged_model_holds_one_copy_of_the_weights_and_serves_the_champion(uninterrupted):
    import mlflow.pyfunc

    from flows.champion import CHAMPION, register_and_promote

    cfg, summary = uninterrupted
    weights = _best_weights(summary)
    table = weights["embedding.weight"].numpy().tobytes()  # (1 + U + I, d) float32
    root = Path(cfg.tracking.artifact_location)
    copies = {p.relative_to(root).as_posix(): p.read_bytes().count(table)
              for p in root.rglob("*") if p.is_file()}
    holding = {path: n for path, n in copies.items() if n}
    assert list(holding.values()) == [1], holding
    assert next(iter(holding)).endswith("/artifacts/weights.pt")

    decision = register_and_promote(cfg.tracking.uri, "slow-tiny",
                                    f"runs:/{summary['run_id']}/model", summary["run_id"],
                                    summary["valid"]["mrr"])
    assert decision.promoted
    served = mlflow.pyfunc.load_model(f"models:/slow-tiny@{CHAMPION}")
    example = served.input_example  # two users' original ids
    payload = load_checkpoint(summary["checkpoint"])
    model = SlowTinyModel(tiny_index.TinyParams(dim=4),
                          tiny_index.DataSizes(**payload["sizes"])).eval()
    model.load_state_dict(weights)
    snapshot = snapshot_of_index(cfg.paths.work_dir, with_sets=True)
    top = TopK(model, snapshot, model.sizes.num_users, cfg.index.sequence_max_len)
    items, scores = top.top(torch.tensor([1, 2]), 10, exclude_seen=True, candidates=500)
    answer = served.predict(example)
    assert answer["user_id"].tolist() == np.repeat(example["user_id"], 10).tolist()
    expected = snapshot.original_ids(items.numpy(), "items").ravel()
    assert answer["item_id"].tolist() == expected.tolist()
    np.testing.assert_allclose(answer["score"], scores.numpy().ravel(), rtol=1e-6)


def test_max_failures_niceness_and_polling_do_not_change_what_a_run_learns(tmp_path):
    """Changing ``train.max_failures``, ``worker_niceness`` or ``health_check_s`` resumes the
    same run (none is in the resume key)."""
    keys = {resume_key(tiny_index.tiny_config(tmp_path, [f"train.max_failures={n}"]), "hash")
            for n in (0, 3, -1)}
    keys |= {resume_key(tiny_index.tiny_config(tmp_path, [f"train.worker_niceness={n}"]),
                        "hash") for n in (0, 15)}
    keys |= {resume_key(tiny_index.tiny_config(tmp_path, [f"train.health_check_s={s}"]),
                        "hash") for s in (0.5, 2)}
    assert len(keys) == 1
    assert resume_key(tiny_index.tiny_config(tmp_path, ["train.lr=0.5"]), "hash") not in keys
    # a constant lr keeps the key a run had before train.lr_warmup_steps / lr_decay_steps
    # existed (it resumes, not retrains); a schedule changes what is learned
    cfg = tiny_index.tiny_config(tmp_path, [])
    train = cfg.train.model_dump(mode="json")
    for field in ("lr_warmup_steps", "lr_decay_steps", *_RUNTIME_FIELDS):
        train.pop(field)
    before = {"index": "hash", "sections": section_hash(cfg, "index", "model"), "train": train}
    assert keys == {hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]}
    assert resume_key(tiny_index.tiny_config(tmp_path, ["train.lr_warmup_steps=5"]),
                      "hash") not in keys
    assert resume_key(tiny_index.tiny_config(tmp_path, ["train.lr_decay_steps=50"]),
                      "hash") not in keys
