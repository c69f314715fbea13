"""Training in this process: the loop's own epoch and scoring functions without Ray, MLflow or
checkpoints, for learning curves (benchmarks/learning_curves.py) and the generated-data
baseline tests (tests/test_generated_baselines.py). Pipelines train through
trainers/train.py, whose functions these are.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from conf.schema import PipelineConfig
from trainers.embedding import build_optimizer
from trainers.evaluate import score_lists
from trainers.registry import Recommender, build_model, model_class, variable_length
from trainers.split_data import SplitData, declared_inputs, load_split_data
from trainers.train import TrainState, seed_everything, step_lrs, train_epoch, worker_rows


@dataclass
class LocalFit:
    """A model trained by :func:`fit_locally`, its data, and what it scored.

    Attributes:
        curve: per epoch ``epoch``, ``loss``, ``seconds`` so far and, when asked for, the
            validation metrics.
        test: the test lists' metrics; ``popularity``: popularity's on the same lists.
    """

    model: Recommender
    data: SplitData
    curve: list[dict[str, float]] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    popularity: dict[str, float] = field(default_factory=dict)


def fit_locally(cfg: PipelineConfig, epochs: int,
                report: Callable[[dict[str, float]], None] | None = None) -> LocalFit:
    """Train ``cfg.model`` on the built index for ``epochs`` epochs, then score the test lists
    and popularity's reference on them.

    Args:
        cfg: the pipeline config (index built; ``train`` as the loop reads it; one worker).
        epochs: epochs to run (no early stopping).
        report: called after every epoch with its curve row, validation metrics included;
            None skips validation (faster).
    """
    tc = cfg.train
    required, optional = declared_inputs(model_class(cfg.model.name))
    data = load_split_data(cfg, required, ("train", "valid", "test"), "cpu", optional)
    seed_everything(tc.seed)
    model = build_model(cfg.model.name, dict(cfg.model.params), data.sizes)
    data.builder.trim_padding = variable_length(model)
    optimizer = build_optimizer(model, tc.lr, tc.l2, tc.weight_decay, tc.embedding_updates,
                                tc.weight_decay_mode)
    sampler = data.negative_sampler(cfg)
    fit = LocalFit(model, data)

    def lists(split: str, scorer) -> dict[str, float]:
        return score_lists(scorer, data.builder, data.splits[split], tc.eval_batch_size,
                           data.protocol)

    def ours(batch, cut, items) -> torch.Tensor:
        return model(batch).scores

    state = TrainState(lr=tc.lr)  # the steps so far, for train.lr_warmup_steps / decay_steps
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        seed_everything(tc.seed + 1_000 * epoch)
        train = data.train_epoch_samples(cfg, epoch, sampler)
        rows = worker_rows(data.builder, train, tc, epoch, 0, 1, "cpu")
        model.train()
        loss, _ = train_epoch(model, model, optimizer, data.builder, train, rows,
                              tc.batch_size, tc.l2, 1, 0, epoch, tc.grad_clip,
                              step_lrs(tc, state))
        state.optimizer_steps += -(-len(rows) // tc.batch_size)
        row = {"epoch": epoch, "loss": loss}
        if report is not None:
            model.eval()
            row.update(lists("valid", ours))
        row["seconds"] = time.perf_counter() - start
        fit.curve.append(row)
        if report is not None:
            report(row)
    model.eval()
    fit.test = lists("test", ours)
    fit.popularity = lists("test", data.protocol.popularity_scorer(data.popularity()))
    return fit
