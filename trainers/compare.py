"""Model comparison (SCoRe Table 3, DualRec Table 2, DFAR Table 2): train and evaluate
several models on one dataset and put their test metrics side by side.

``run_comparison(cfg, models)`` runs the ordinary train and evaluate stages
(``trainers.train.run_training``, ``trainers.evaluate.run_evaluation``) once per model, with
``cfg`` for everything but the model section, which comes from the model's preset
(``conf/models/<name>.yaml``; the model named in ``cfg`` keeps its own, overrides included).
A model already trained with the same config is skipped by the training stage as usual, so a
rerun only evaluates.

The index's protocol decides which models run and which columns the table has: a model
whose required ``inputs`` the protocol cannot feed (its ``feeds``, trainers/protocols.py; e.g.
SCoRe's slice sets under ``leave_one_out``) is skipped with its reason, in the returned
dict, under the table and in the log. Columns: the ranking protocols' MRR, HR@1/5/10,
NDCG@5/10, AUC, GAUC; ``feedback``'s AUC, GAUC, MRR@10, NDCG@10, auc_pos, plus a
``random`` row (a random scorer's expected metrics on the same groups,
the protocol's ``random_floor``: MRR@10 = .293 for 10-candidate groups).

MLflow: one parent run (``<dataset>-compare``, tagged with dataset and protocol) per call;
each model's training run becomes its child (tag ``mlflow.parentRunId``, so the UI nests it;
a later comparison re-parents a reused run). The parent gets ``<model>_test_<metric>``
metrics and three artifacts: ``comparison.md``, ``comparison.csv`` and ``comparison.png``
(bar chart of the protocol's chart metrics per model, with the popularity reference of the
selection metric as a dashed line).
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

from conf.loading import load_config, preset_keys
from conf.schema import PipelineConfig
from trainers import tracking
from trainers.protocols import EvaluationProtocol, protocol_at
from trainers.registry import model_class
from trainers.split_data import declared_inputs

log = logging.getLogger(__name__)

RANDOM_ROW = "random"  # the floor row of a protocol with a ``random_reference`` (feedback)
# full ranking against every item (trainers/evaluate.py), beside the sampled lists' metrics;
# full_users says how many users it covers, full_sampled whether they are a seeded sample
FULL_COLUMNS = ("full_hr@10", "full_hr@20", "full_ndcg@10", "full_ndcg@20", "full_mrr",
                "full_users", "full_sampled")


def columns(protocol: EvaluationProtocol) -> tuple[str, ...]:
    """The table's columns under ``protocol``: its test metrics (the papers' first), then
    its selection metric on validation (MRR or AUC)."""
    chosen = protocol.selection_metric
    return ("model", *(f"test_{m}" for m in protocol.test_metrics), f"valid_{chosen}",
            f"popularity_valid_{chosen}", f"popularity_test_{chosen}", *FULL_COLUMNS,
            "best_epoch",
            "fit_train_auc", "fit_gap_auc", "run_id")


def model_config(cfg: PipelineConfig, name: str) -> PipelineConfig:
    """``cfg`` with the model section of ``name``'s preset (``cfg``'s own if it names it),
    under the dataset's ``table.params`` where the model has them (DualRec's d = 64 and
    DFAR's 32 for every model of their tables), and the ``train`` keys that preset sets:
    each model trains with its paper's recipe (DualRec's weight decay, plateau halving
    and clipping), as a single ``seqrec train --model <name>`` would; every other train key (epochs,
    patience, workers, ...) stays the comparison's, except where the preset sets it itself
    (BERT4Rec's epochs: its lr 1e-4 needs more than the datasets' cap).

    Raises:
        KeyError: ``name`` is not a registered model.
        conf.loading.ConfigError: the model has no preset in conf/models.
    """
    model_class(name)  # unknown names fail here, listing the registered ones
    if name == cfg.model.name:
        return cfg
    preset = load_config(model=name)
    recipe = {key: getattr(preset.train, key) for key in preset_keys("models", name, "train")}
    table = {k: v for k, v in cfg.table.params.items() if k in preset.model.params}
    model = preset.model.model_copy(update={"params": {**preset.model.params, **table}})
    return cfg.model_copy(update={"model": model,
                                  "train": cfg.train.model_copy(update=recipe)})


def model_configs(cfg: PipelineConfig, models: list[str]) -> list[PipelineConfig]:
    """One config per model (:func:`model_config`), after checking the list.

    Raises:
        ValueError: no models, or a model listed twice.
        KeyError, ConfigError: as :func:`model_config`.
    """
    if not models:
        raise ValueError("compare needs at least one model")
    repeated = sorted({m for m in models if models.count(m) > 1})
    if repeated:
        raise ValueError(f"models listed more than once: {', '.join(repeated)}")
    return [model_config(cfg, name) for name in models]


def skipped_models(protocol: EvaluationProtocol, configs: list[PipelineConfig]) -> dict[str, str]:
    """Model name -> why ``protocol`` cannot run it (models it can run are absent)."""
    skipped = {}
    for model_cfg in configs:
        required, _ = declared_inputs(model_class(model_cfg.model.name))
        unfed = protocol.unfed(required)
        if unfed:
            skipped[model_cfg.model.name] = (
                f"needs {', '.join(sorted(unfed))}, which the {protocol.name} protocol does not "
                f"feed (it feeds {', '.join(sorted(protocol.feeds))})")
    return skipped


def run_comparison(cfg: PipelineConfig, models: list[str]) -> dict[str, Any]:
    """Train and evaluate every model in ``models`` that the index's protocol can feed.

    Args:
        cfg: the composed config (dataset, paths, training, tracking).
        models: registered model names, each with a preset; order is the table's order.

    Returns:
        dict: ``run_id`` (parent MLflow run), ``protocol``, ``rows`` (one dict per model run:
        model, child ``run_id``, ``best_epoch``, the valid selection metric, its popularity
        references, ``test_<metric>`` and the train/valid AUC gap (``fit_train_auc``,
        ``fit_gap_auc``: evaluation's ``fit``); then the ``random`` row where the protocol
        has one (``feedback``)),
        ``skipped`` (model -> reason), ``table`` (markdown) and ``csv`` (text).

    Raises:
        ValueError: no models, a model listed twice, or no listed model can run under the
            protocol (each reason named).
        KeyError, ConfigError: an unknown model or one without a preset (before any training).
        FileNotFoundError: no index (run ``seqrec index`` first).
        Any error of a train or evaluate stage; the parent run is then marked FAILED.
    """
    configs = model_configs(cfg, models)  # all checked before anything is trained
    protocol = protocol_at(cfg.paths.work_dir)
    skipped = skipped_models(protocol, configs)
    for name, reason in skipped.items():
        log.warning("compare: skipping %s: %s", name, reason)
    runnable = [c for c in configs if c.model.name not in skipped]
    if not runnable:
        raise ValueError(f"no listed model runs under the {protocol.name} protocol: " + "; ".join(
            f"{name} {reason}" for name, reason in skipped.items()))

    from trainers.evaluate import run_evaluation
    from trainers.train import run_training

    client = tracking.client(cfg)
    parent = client.create_run(
        tracking.experiment_id(cfg),
        tags={"dataset": cfg.dataset.name, "protocol": protocol.name, "profile": cfg.profile,
              "models": ",".join(models),
              "skipped_models": ",".join(skipped) or "none",
              "mlflow.runName": f"{cfg.dataset.name}-compare"},
    ).info.run_id
    rows = []
    try:
        for model_cfg in runnable:
            trained = run_training(model_cfg)
            evaluated = run_evaluation(model_cfg)
            client.set_tag(trained["run_id"], "mlflow.parentRunId", parent)
            rows.append(comparison_row(model_cfg.model.name, trained, evaluated, protocol))
        if protocol.random_reference:
            rows.append(random_row(evaluated["random_test"], protocol))
    except BaseException:
        client.set_terminated(parent, status="FAILED")
        raise
    table = markdown_table(rows, protocol, skipped)
    table_csv = csv_table(rows, protocol)
    tracking.log_metrics(cfg, parent, {f"{row['model']}_test_{m}": row[f"test_{m}"]
                                       for row in rows for m in protocol.test_metrics})
    _log_artifacts(cfg, parent, rows, table, table_csv, protocol)
    tracking.finish_run(cfg, parent)
    return {"run_id": parent, "protocol": protocol.name, "rows": rows, "skipped": skipped,
            "table": table, "csv": table_csv}


def comparison_row(name: str, trained: dict[str, Any], evaluated: dict[str, Any],
                   protocol: EvaluationProtocol) -> dict[str, Any]:
    """One model's line from the train and evaluate stage results."""
    chosen = protocol.selection_metric
    full = evaluated.get("full") or {}  # absent with train.full_rank_users: 0
    return {"model": name, "run_id": trained["run_id"], "best_epoch": trained["best_epoch"],
            **{c: full.get(c.removeprefix("full_"), "") for c in FULL_COLUMNS},
            f"valid_{chosen}": trained["valid"][chosen],
            **{f"test_{m}": evaluated["test"][m] for m in protocol.test_metrics},
            f"popularity_valid_{chosen}": evaluated["popularity_valid"][chosen],
            f"popularity_test_{chosen}": evaluated["popularity_test"][chosen],
            "fit_train_auc": evaluated["fit"]["train_auc"],
            "fit_gap_auc": evaluated["fit"]["gap_auc"]}


def random_row(floor: dict[str, float], protocol: EvaluationProtocol) -> dict[str, Any]:
    """The random scorer's expected test metrics as a table row (no run, no validation)."""
    row = {c: "" for c in columns(protocol)}
    row.update({"model": RANDOM_ROW, **{f"test_{m}": floor[m] for m in protocol.test_metrics}})
    return row


def markdown_table(rows: list[dict[str, Any]], protocol: EvaluationProtocol,
                   skipped: dict[str, str]) -> str:
    """Models as rows, metrics as columns (4 decimals); the best model's first test metric
    in bold; the skipped models and their reasons below the table."""
    cols = columns(protocol)
    first = cols[1]
    best = max(row[first] for row in rows if row["model"] != RANDOM_ROW)
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for row in rows:
        cells = [f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        if row["model"] != RANDOM_ROW and row[first] == best:
            cells[1] = f"**{cells[1]}**"
        lines.append("| " + " | ".join(cells) + " |")
    for name, reason in skipped.items():
        lines.append(f"\nskipped {name}: {reason}")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict[str, Any]], protocol: EvaluationProtocol) -> str:
    """The same table as CSV, full precision."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns(protocol), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _log_artifacts(cfg: PipelineConfig, run_id: str, rows: list[dict[str, Any]], table: str,
                   table_csv: str, protocol: EvaluationProtocol) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    client = tracking.client(cfg)
    chart, chosen = protocol.chart_metrics, protocol.selection_metric
    models = [row for row in rows if row["model"] != RANDOM_ROW]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "comparison.md").write_text(table)
        (folder / "comparison.csv").write_text(table_csv)
        width = 0.8 / len(chart)
        fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(models) + 2), 4))
        for k, metric in enumerate(chart):
            ax.bar([i + (k - (len(chart) - 1) / 2) * width for i in range(len(models))],
                   [row[f"test_{metric}"] for row in models], width, label=f"test {metric}")
        # Popularity is the same for every model (same lists): one reference line.
        ax.axhline(models[0][f"popularity_test_{chosen}"], color="grey", linestyle="--",
                   label=f"popularity {chosen}")
        ax.set_xticks(range(len(models)), [row["model"] for row in models])
        ax.set(ylabel="metric",
               title=f"{cfg.dataset.name} ({protocol.name}): test metrics by model")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "comparison.png", dpi=100)
        plt.close(fig)
        for name in ("comparison.md", "comparison.csv", "comparison.png"):
            client.log_artifact(run_id, str(folder / name))
