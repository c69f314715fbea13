"""Training stage: one Ray Train loop for every registered model.

``run_training(cfg)`` runs ``ray.train.torch.TorchTrainer`` with ``train.num_workers``
workers. Each worker loads the index arrays itself (local disk or shared storage), builds the
model from the registry, and trains with Adam (``trainers.embedding.build_optimizer``) on its
shard of the shuffled training rows. The index's protocol names the selection metric (its
``selection_metric``, trainers/protocols.py: valid MRR under ``slices`` and
``leave_one_out``, valid AUC under ``feedback``), which decides early stopping
(``train.patience``), the optional lr halving on plateau (``train.lr_plateau_patience``) and
the best checkpoint; Ray Train keeps checkpoints by the reported ``valid_score`` (that
metric's value). Each step's lr can also follow a linear warmup and decay over the run's
optimiser steps (``train.lr_warmup_steps`` / ``lr_decay_steps``, BERT4Rec's schedule).

Several workers (data parallel):
  * dense parameters: DDP via ``ray.train.torch.prepare_model`` all-reduces (averages) their
    gradients during ``backward``;
  * row-sparse embedding tables (``RowSparseEmbedding``): DDP ignores them (their weight does
    not require grad); ``RowAdam.step`` all-gathers every worker's touched rows and
    gradients and applies the same averaged update on every replica, so the tables stay
    identical without all-reducing millions of rows;
  * every worker runs the same number of steps (the epoch's rows are padded to a multiple of
    the worker count), so the collectives never wait on a finished worker;
  * validation is sharded; the rank histograms are summed with one all-reduce (feedback
    groups: every shard's scores are gathered, since pooled AUC needs all of them).

Checkpoints (rank 0, every epoch) hold model and optimizer state, the epoch, the best
validation result so far, the early-stopping counter, the current learning rate, the
optimiser steps so far, the seeds and the protocol. Ray keeps the two best by ``valid_score`` plus the latest. Rerunning the
same config on the same run directory ``<work_dir>/train/<model>/`` resumes from the latest
checkpoint (Ray Train restores its checkpoint manager from that folder) and continues the
epoch count; a finished run whose epochs are done (or that stopped early, or would have,
under the rerun's ``train.patience``) is skipped, so a raised cap or patience resumes it; a
run directory left by a different model, data or optimisation config is replaced.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from conf.loading import section_hash
from conf.schema import PipelineConfig, TrainConfig
from store.files import join, remove_dir
from store.index import check_readable
from store.manifest import manifest_hash
from store.runs import CHECKPOINT_FILE, read_run, run_dir, run_name, write_run
from trainers import tracking
from trainers.checkpoints import load_checkpoint
from trainers.batches import BatchBuilder, Samples, epoch_rows, length_batches, shard_rows
from trainers.embedding import build_optimizer
from trainers.metrics import RankHistogram, rank_of_positive
from trainers.protocols import EvaluationProtocol, protocol_named
from trainers.registry import DataSizes, Recommender, build_model, model_class, variable_length
from trainers.split_data import declared_inputs, load_split_data

log = logging.getLogger(__name__)

# Fields that change how a run executes or how long it goes on, not what it learns: a
# rerun that changes only these resumes the same run.
_RUNTIME_FIELDS = ("epochs", "patience", "min_epochs", "num_workers", "use_gpu", "cpus_per_worker",
                   "ray_address", "eval_batch_size", "full_rank_users", "run_name",
                   "max_failures", "worker_niceness", "health_check_s")
# Settings added after runs existed, at the value that trains as before them: left out of
# the resume key there, so a run trained before the setting existed resumes, not retrains.
_NEUTRAL_FIELDS = {"lr_warmup_steps": 0, "lr_decay_steps": None}
# a long epoch says where it stands this often; every epoch ends in one line
_PROGRESS_SECONDS = 30.0
SCORE = "valid_score"  # reported every epoch: the protocol's selection metric (Ray keeps by it)


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0  # last finished epoch (1-based)
    best_score: float = -1.0  # best valid selection metric (MRR, or AUC under feedback)
    best_epoch: int = 0
    stale_epochs: int = 0  # epochs since the best validation score
    stopped_early: bool = False
    lr: float = 0.0  # base learning rate: train.lr at the start, halved on plateau
    optimizer_steps: int = 0  # Adam steps over the whole run, resumed runs included

    def after_validation(self, epoch: int, score: float, patience: int,
                         lr_plateau_patience: int | None, min_epochs: int = 0) -> bool:
        """Record epoch ``epoch``'s validation score; returns True when it is the best.

        No gain for ``patience`` epochs stops the run, once ``min_epochs`` epochs are done
        (a model whose validation score dips in its first epochs is not stopped there); with
        ``lr_plateau_patience``, every that many epochs without gain halve the learning rate
        (as ``ReduceLROnPlateau`` with factor 1/2, whose bad-epoch counter restarts after a
        reduction).
        """
        self.epoch = epoch
        if score > self.best_score:
            self.best_score, self.best_epoch, self.stale_epochs = score, epoch, 0
            return True
        self.stale_epochs += 1
        self.stopped_early = self.stops(patience, min_epochs)
        if lr_plateau_patience is not None and self.stale_epochs % lr_plateau_patience == 0:
            self.lr /= 2
        return False

    def stops(self, patience: int, min_epochs: int = 0) -> bool:
        """Whether early stopping ends the run here under ``patience`` and ``min_epochs``
        (on resume, the rerun's own: a raised patience lets an early-stopped run go on)."""
        return self.stale_epochs >= patience and self.epoch >= min_epochs


def lr_factor(step: int, warmup_steps: int, decay_steps: int | None) -> float:
    """The ``step``-th optimiser step's multiple of the base lr (BERT's schedule, which
    BERT4Rec's paper trains with, Section 4.3: "linear decay of the learning rate"; its
    released code warms up over 100 steps and decays to 0 at 400,000): ``step / warmup_steps``
    during the warmup, then ``1 - min(step, decay_steps) / decay_steps`` (1 without decay)."""
    if step < warmup_steps:
        return step / warmup_steps
    if decay_steps is None:
        return 1.0
    return 1.0 - min(step, decay_steps) / decay_steps


def step_lrs(tc: TrainConfig, state: TrainState) -> Callable[[int], float] | None:
    """The lr of an epoch's k-th step (1-based) under ``train.lr_warmup_steps`` and
    ``train.lr_decay_steps``, counted over the whole run (``state.optimizer_steps`` before
    the epoch; a resumed run goes on where it was) from the current base lr ``state.lr``;
    None when the lr is constant within an epoch."""
    if tc.lr_warmup_steps == 0 and tc.lr_decay_steps is None:
        return None
    done, base = state.optimizer_steps, state.lr
    return lambda k: base * lr_factor(done + k, tc.lr_warmup_steps, tc.lr_decay_steps)


def finished_under(result: dict[str, Any], tc: TrainConfig) -> bool:
    """Whether a finished run's ``result`` (``run.json``) is final under the rerun's
    ``train`` section: its epochs reach ``tc.epochs``, or its epochs since the best are at
    least ``tc.patience`` (past ``tc.min_epochs``), so it stopped, or would have, under this
    patience. A raised cap or patience resumes it instead (both are runtime fields)."""
    state = TrainState(epoch=result["epochs"],
                       stale_epochs=result["epochs"] - result["best_epoch"])
    return result["epochs"] >= tc.epochs or state.stops(tc.patience, tc.min_epochs)


def resume_key(cfg: PipelineConfig, index_hash: str) -> str:
    """Hash of everything that shapes the learned weights (data, model, optimisation)."""
    train = cfg.train.model_dump(mode="json")
    for field in _RUNTIME_FIELDS:
        train.pop(field)
    for field, neutral in _NEUTRAL_FIELDS.items():
        if train[field] == neutral:
            train.pop(field)
    payload = {"index": index_hash, "sections": section_hash(cfg, "index", "model"),
               "train": train}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def run_training(cfg: PipelineConfig) -> dict[str, Any]:
    """Train ``model.name`` on the index of ``paths.work_dir`` with Ray Train.

    Returns:
        dict: ``run_id`` (MLflow), ``best_epoch``, ``epochs`` (finished), ``stopped_early``,
        ``optimizer_steps`` (over the whole run), ``stopped_by`` (``early_stopping`` or
        ``epoch_cap``: what ended it), ``valid`` (best epoch's validation metrics),
        ``protocol`` (the index's),
        ``selection_metric`` (the ``valid`` key that chose the best epoch: ``mrr`` or
        ``auc``), ``checkpoint`` (best checkpoint path),
        ``run_dir``, ``skipped`` (True when a finished run already covered this config).

    Raises:
        FileNotFoundError: the index stage has not been run.
        ValueError: a file of the index is not readable Parquet.
        KeyError: unknown model name.
        ray.train.TrainingFailedError: workers failed more than ``train.max_failures`` times
            (each failure restarts them from the latest checkpoint; the last traceback is in
            the message); the run stays ``running`` in run.json, so a rerun resumes it.
    """
    index_uri = join(cfg.paths.work_dir, "index")
    index_hash = manifest_hash(index_uri)
    model_module = model_class(cfg.model.name).__module__  # fails fast on an unknown model
    check_readable(index_uri)  # a damaged index: one error here, not one per worker
    key = resume_key(cfg, index_hash)
    previous = read_run(cfg)
    if previous is not None and previous["resume_key"] == key and previous["status"] == "finished":
        done = previous["result"]
        if finished_under(done, cfg.train):
            return {**done, "skipped": True}
    if previous is not None and previous["resume_key"] != key:
        log.warning("run directory %s was trained with another config; starting afresh",
                    run_dir(cfg))
        remove_dir(run_dir(cfg))
        previous = None

    run_id = tracking.open_run(cfg, index_hash, previous["run_id"] if previous else None)
    write_run(cfg, {"status": "running", "run_id": run_id, "resume_key": key})
    started_ray = start_ray(cfg)
    try:
        result = _fit(cfg, run_id, model_module)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    best = result.get_best_checkpoint(metric=SCORE, mode="max")
    last = latest_report(result)
    with best.as_directory() as folder:
        payload = load_checkpoint(folder)
    summary = {
        "run_id": run_id,
        "best_epoch": payload["state"]["best_epoch"],
        "epochs": int(last["epoch"]),
        "stopped_early": bool(last["stopped_early"]),
        "optimizer_steps": int(last["optimizer_steps"]),
        "stopped_by": stopped_by(last),
        "valid": payload["best_valid"],
        "protocol": payload["protocol"],
        "selection_metric": protocol_named(payload["protocol"]).selection_metric,
        "checkpoint": best.path,
        "run_dir": run_dir(cfg),
    }
    _log_final(cfg, run_id, payload, model_module, summary)
    write_run(cfg, {"status": "finished", "run_id": run_id, "resume_key": key, "result": summary})
    return {**summary, "skipped": False}


def start_ray(cfg: PipelineConfig) -> bool:
    """Connect to ``train.ray_address`` or start a local Ray; True if this call started it.

    The job runs with :func:`ray_job_env`. A local Ray's workers run at
    ``train.worker_niceness`` (Ray's default 15 lets any other busy process starve the
    training worker).
    """
    import ray

    if ray.is_initialized():
        return False
    runtime_env = ray_job_env(cfg)
    if cfg.train.ray_address is not None:
        ray.init(address=cfg.train.ray_address, logging_level=logging.WARNING,
                 log_to_driver=True, runtime_env=runtime_env)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=True, runtime_env=runtime_env,
                 _system_config={"worker_niceness": cfg.train.worker_niceness})
    return True


def ray_job_env(cfg: PipelineConfig, pythonpath: str | None = None) -> dict[str, Any]:
    """The runtime environment of a run's Ray job (``ray.init(runtime_env=...)``).

    - Every worker process runs ``ray_logging.quiet_worker_logs`` first (Ray's
      ``worker_process_setup_hook``), which silences the placement-group cleaner's
      once-a-second State API warning at its logger.
    - Ray Train's controller polls its workers every ``train.health_check_s`` (Ray's default
      2 s: a 3-epoch run's end waited ~6 s for the polls).
    - A local Ray (no ``train.ray_address``) has no node that a cluster manager drains, so
      Ray Train's preemption watcher is off there: its actor only printed a "constructor
      arguments in the object store" error line at every start.
    - ``pythonpath``: a ``PYTHONPATH`` for the workers (tests importing their own modules).
    """
    from trainers.ray_logging import quiet_worker_logs

    env = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(cfg.train.health_check_s)}
    if cfg.train.ray_address is None:
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return {"worker_process_setup_hook": quiet_worker_logs, "env_vars": env}


def stopped_by(report: dict[str, Any]) -> str:
    """What ended a finished run, from its latest report: ``early_stopping`` (``train.patience``
    epochs without gain) or ``epoch_cap`` (``train.epochs`` done first). A run the cap ends
    may not have converged: raise its epochs (issue 23: BERT4Rec at lr 1e-4)."""
    return "early_stopping" if report["stopped_early"] else "epoch_cap"


def latest_report(result) -> dict[str, Any]:
    """The metrics of the last finished epoch of a Ray Train ``Result``: its latest report
    (``result.metrics``) or, when a resumed run had no epoch left to report, the latest of
    its kept checkpoints' metrics. Ray keeps the latest checkpoint on disk but lists only
    the best two in ``best_checkpoints``, so those alone under-count the epochs and miss an
    early stop after a worse epoch (a rerun then trained again)."""
    reports = [metrics for _, metrics in result.best_checkpoints]
    if result.metrics and "epoch" in result.metrics:
        reports.append(result.metrics)
    return max(reports, key=lambda m: m["epoch"])


def _fit(cfg: PipelineConfig, run_id: str, model_module: str):
    """``TorchTrainer.fit``: a failed or killed worker restarts the worker group from the
    latest checkpoint, at most ``train.max_failures`` times (Ray Train's ``FailureConfig``);
    the per-epoch seeds make the restarted epochs those of an uninterrupted run."""
    from ray.train import (CheckpointConfig, FailureConfig, LoggingConfig, RunConfig,
                           ScalingConfig)
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "run_id": run_id,
                           "model_module": model_module},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers,
                                     use_gpu=cfg.train.use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=RunConfig(
            name=run_name(cfg),
            storage_path=join(cfg.paths.work_dir, "train"),
            checkpoint_config=CheckpointConfig(num_to_keep=2,
                                               checkpoint_score_attribute=SCORE,
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            # Ray Train's own console lines (worker group set-up, every epoch's whole report
            # and checkpoint path) at WARNING: the loop logs one line per epoch itself; Ray's
            # session log files keep them all
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    return trainer.fit()


def _log_final(cfg: PipelineConfig, run_id: str, payload: dict, model_module: str,
               summary: dict[str, Any]) -> None:
    """Best model, config and curves to MLflow (driver side, after training), and the tag
    ``stopped_by`` (the run's total ``optimizer_steps`` is the per-epoch metric's last value)."""
    importlib.import_module(model_module)
    model = build_model(cfg.model.name, dict(cfg.model.params), DataSizes(**payload["sizes"]))
    model.load_state_dict(payload["model"])
    curves = protocol_named(payload["protocol"]).chart_metrics
    keys = ("train_loss", *(f"valid_{k}" for k in curves))
    history: dict[int, dict[str, float]] = {}
    for key in keys:
        for step, value in tracking.metric_history(cfg, run_id, key):
            history.setdefault(step, {"epoch": step})[key] = value
    rows = [history[e] for e in sorted(history) if len(history[e]) == len(keys) + 1]
    tracking.log_model(cfg, run_id, model, payload["sizes"])
    tracking.log_artifacts(cfg, run_id, rows)
    tracking.set_tags(cfg, run_id, {"stopped_by": summary["stopped_by"]})
    tracking.finish_run(cfg, run_id)


# ---------------------------------------------------------------- inside each Ray worker


def seed_everything(seed: int) -> None:
    """torch, numpy and random from one seed (each worker passes its own)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: load data, build the model, train, validate, report.

    Args:
        config: ``cfg`` (the PipelineConfig as JSON-able dict), ``run_id`` (MLflow run for
            rank 0's per-epoch metrics), ``model_module`` (module that registers the model;
            imported here so plugins registered outside ``registry._load_all`` work too).
    """
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = PipelineConfig.model_validate(config["cfg"])
    importlib.import_module(config["model_module"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    tc = cfg.train

    required, optional = declared_inputs(model_class(cfg.model.name))
    data = load_split_data(cfg, required, ("train", "valid"), device, optional)
    metric = data.protocol.selection_metric
    seed_everything(tc.seed)  # same initial weights on every worker
    model = build_model(cfg.model.name, dict(cfg.model.params), data.sizes).to(device)
    data.builder.trim_padding = variable_length(model)
    if tc.batch_order == "by_length" and "sequence" not in data.builder.inputs and rank == 0:
        log.info("train.batch_order: by_length needs a sequence input; %s reads none, so its "
                 "batches stay shuffled", cfg.model.name)
    optimizer = build_optimizer(model, tc.lr, tc.l2, tc.weight_decay, tc.embedding_updates,
                                tc.weight_decay_mode)
    state = TrainState(lr=tc.lr)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            payload = load_checkpoint(folder, device)
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        state = TrainState(**payload["state"])
        state.stopped_early = state.stops(tc.patience, tc.min_epochs)  # this run's patience
        optimizer.set_lr(state.lr)
        best_valid = payload["best_valid"]
        if rank == 0:
            log.info("resuming after epoch %d (its checkpoint)", state.epoch)
    else:
        best_valid = {}
    net = ray.train.torch.prepare_model(model) if world > 1 else model
    sampler = data.negative_sampler(cfg)

    for epoch in range(state.epoch + 1, tc.epochs + 1):
        if state.stopped_early:
            break
        seed_everything(tc.seed + 1_000 * epoch + rank)  # resumable without saved RNG streams
        train = data.train_epoch_samples(cfg, epoch, sampler)
        rows = worker_rows(data.builder, train, tc, epoch, rank, world, device)
        step_lr = step_lrs(tc, state)
        loss, samples_per_s = train_epoch(net, model, optimizer, data.builder, train, rows,
                                           tc.batch_size, tc.l2, world, rank, epoch,
                                           tc.grad_clip, step_lr)
        # one Adam step a batch; every worker runs the same steps (epoch_rows pads them)
        steps = -(-len(rows) // tc.batch_size)
        state.optimizer_steps += steps
        valid = validate(model, data.builder, data.splits["valid"], tc.eval_batch_size, rank,
                         world, data.protocol)
        base, lr = state.lr, optimizer.lr  # the lr of the epoch's last step
        if state.after_validation(epoch, valid[metric], tc.patience, tc.lr_plateau_patience,
                                  tc.min_epochs):
            best_valid = valid
        if state.lr != base:
            optimizer.set_lr(state.lr)
            if rank == 0:
                log.info("epoch %d: no valid %s gain for %d epochs, lr halved to %g", epoch,
                         metric, state.stale_epochs, state.lr)
        metrics = {"epoch": epoch, "train_loss": loss, "samples_per_s": samples_per_s,
                   **{f"valid_{k}": v for k, v in valid.items()},
                   f"best_valid_{metric}": state.best_score, "lr": lr,
                   "stopped_early": state.stopped_early,
                   "optimizer_steps": state.optimizer_steps}
        if rank == 0:
            log.info("epoch %d/%d: train loss %.4f, valid %s %.4f (best %.4f), %.0f samples/s",
                     epoch, tc.epochs, loss, metric, valid[metric], state.best_score,
                     samples_per_s)
            tracking.log_epoch(cfg, config["run_id"],
                               {k: float(v) for k, v in metrics.items() if k != "epoch"}, epoch)
            with tempfile.TemporaryDirectory() as folder:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "state": asdict(state), "best_valid": best_valid,
                            "sizes": asdict(data.sizes), "seeds": {"train.seed": tc.seed},
                            "protocol": data.protocol.name},
                           Path(folder) / CHECKPOINT_FILE)
                ray.train.report({**metrics, SCORE: valid[metric]},
                                 checkpoint=Checkpoint.from_directory(folder),
                                 checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}")
        else:
            ray.train.report({**metrics, SCORE: valid[metric]})


def worker_rows(builder: BatchBuilder, train: Samples, tc, epoch: int, rank: int, world: int,
                device) -> torch.Tensor:
    """This worker's training rows for ``epoch`` in batch order: a seeded shuffle
    (:func:`epoch_rows`), then, under ``train.batch_order: by_length`` and a model reading
    ``sequence``, grouped into batches of similar history length (:func:`length_batches`)."""
    rows = epoch_rows(len(train), epoch, tc.seed, rank, world, device)
    if tc.batch_order == "by_length" and "sequence" in builder.inputs:
        rows = length_batches(rows, builder.history_lengths(train)[rows], tc.batch_size,
                              epoch, tc.seed)
    return rows


def train_epoch(net, model: Recommender, optimizer, builder: BatchBuilder, train: Samples,
                 rows: torch.Tensor, batch_size: int, l2: float, world: int, rank: int,
                 epoch: int, grad_clip: float | None,
                 step_lr: Callable[[int], float] | None = None) -> tuple[float, float]:
    """One pass over this worker's rows.

    ``grad_clip`` (``train.grad_clip``, None = off) clips the global norm of the dense
    gradients after backward (DDP has averaged them by then); row-sparse tables
    (``RowSparseEmbedding``) keep their own gradients and are not clipped. ``step_lr``
    (:func:`step_lrs`) sets the lr of the epoch's k-th step before it; None keeps the
    optimiser's.

    Returns:
        (mean training loss over all workers, training samples per second over all workers).
    """
    model.train()
    steps = -(-len(rows) // batch_size)
    last_line = time.perf_counter()
    total = torch.zeros(2, dtype=torch.float64)  # loss sum, rows
    start = time.perf_counter()
    for step, batch in enumerate(builder.batches(train, rows, batch_size), start=1):
        optimizer.zero_grad()
        out = net(batch)  # Output: (B, C) scores and the model's training terms
        loss = model.loss(out, batch)
        if l2 > 0:
            loss = loss + l2 * model.regularization()  # λ·||Φ||² of Eq. 25 (dense parameters)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], grad_clip)
        if step_lr is not None:
            optimizer.set_lr(step_lr(step))
        optimizer.step()
        B = batch["user"].shape[0]
        total += torch.tensor([float(loss.detach()) * B, B], dtype=torch.float64)
        if rank == 0 and time.perf_counter() - last_line >= _PROGRESS_SECONDS:
            last_line = time.perf_counter()
            rate = float(total[1]) * world / (last_line - start)
            log.info("epoch %d step %d/%d loss %.4f %.0f samples/s", epoch, step, steps,
                     float(total[0] / total[1]), rate)
    seconds = time.perf_counter() - start
    if world > 1:
        total = total.to(rows.device)  # NCCL reduces device tensors only
        dist.all_reduce(total)
    return float(total[0] / total[1]), float(total[1]) / seconds


@torch.no_grad()
def validate(model: Recommender, builder: BatchBuilder, samples: Samples, batch_size: int,
             rank: int, world: int, protocol: EvaluationProtocol) -> dict[str, float]:
    """Validation metrics over all workers' shards (pessimistic ties, trainers/metrics.py).

    Ranking protocols sum rank histograms over the workers (one all-reduce); a ``pooled``
    protocol (``feedback``) gathers every shard's scores to every worker, since pooled AUC
    and GAUC need them all.

    Returns:
        hr@1/5/10/20, ndcg@5/10/20, mrr over every validation list (``slices``,
        ``leave_one_out``); auc, gauc, mrr@10, ndcg@10, auc_pos (``feedback``).
    """
    model.eval()
    device = samples.user.device
    shard = shard_rows(len(samples), rank, world, device)
    C = samples.candidates.shape[1]
    if protocol.pooled:
        parts = []
        for start in range(0, len(shard), batch_size):
            idx = shard[start:start + batch_size]
            parts.append((model(builder.rows(samples, idx)).scores.cpu(),
                          samples.user[idx].cpu(), samples.target_label[idx].cpu()))
        model.train()
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, parts)
            parts = [part for worker in gathered for part in worker]
        accumulator = protocol.new_accumulator()
        for scores, users, labels in parts:
            accumulator.update(scores, users, labels)
        return accumulator.compute()
    counts = torch.zeros(C + 1, dtype=torch.int64)  # counts[r] = lists whose positive ranks r
    for batch in builder.batches(samples, shard, batch_size):
        counts += torch.bincount(rank_of_positive(model(batch).scores), minlength=C + 1)
    model.train()
    if world > 1:
        counts = counts.to(device)  # NCCL reduces device tensors only
        dist.all_reduce(counts)
    histogram = RankHistogram()
    histogram.add(torch.repeat_interleave(torch.arange(C + 1), counts.cpu()))
    return histogram.metrics()
