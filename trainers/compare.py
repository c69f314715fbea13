"""Model comparison (SCoRe paper, Table 3): train and evaluate several models on one dataset
and put their test metrics side by side.

``run_comparison(cfg, models)`` runs the ordinary train and evaluate stages
(``trainers.train.run_training``, ``trainers.evaluate.run_evaluation``) once per model, with
``cfg`` for everything but the model section, which comes from the model's preset
(``conf/models/<name>.yaml``; the model named in ``cfg`` keeps its own, overrides included).
A model already trained with the same config is skipped by the training stage as usual, so a
rerun only evaluates.

MLflow: one parent run (``<dataset>-compare``) per call; each model's training run becomes
its child (tag ``mlflow.parentRunId``, so the UI nests it; a later comparison re-parents a
reused run). The parent gets ``<model>_test_<metric>`` metrics and three artifacts:
``comparison.md``, ``comparison.csv`` and ``comparison.png`` (bar chart of test MRR,
NDCG@10 and HR@10 per model, with the popularity reference as a dashed line).
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from typing import Any

from conf.loading import load_config
from conf.schema import PipelineConfig
from trainers import tracking
from trainers.registry import model_class

# Table columns after ``model``: the paper's metrics (Section 4.1.2) first.
TEST_METRICS = ("mrr", "hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "auc", "gauc")
CHART_METRICS = ("mrr", "ndcg@10", "hr@10")
COLUMNS = ("model", *(f"test_{m}" for m in TEST_METRICS), "valid_mrr", "popularity_valid_mrr",
           "popularity_test_mrr", "best_epoch", "run_id")


def model_config(cfg: PipelineConfig, name: str) -> PipelineConfig:
    """``cfg`` with the model section of ``name``'s preset (``cfg``'s own if it names it).

    Raises:
        KeyError: ``name`` is not a registered model.
        conf.loading.ConfigError: the model has no preset in conf/models.
    """
    model_class(name)  # unknown names fail here, listing the registered ones
    if name == cfg.model.name:
        return cfg
    return cfg.model_copy(update={"model": load_config(model=name).model})


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


def run_comparison(cfg: PipelineConfig, models: list[str]) -> dict[str, Any]:
    """Train and evaluate every model in ``models`` on ``cfg``'s dataset.

    Args:
        cfg: the composed config (dataset, paths, training, tracking).
        models: registered model names, each with a preset; order is the table's order.

    Returns:
        dict: ``run_id`` (parent MLflow run), ``rows`` (one dict per model: model, child
        ``run_id``, ``best_epoch``, ``valid_mrr``, ``popularity_valid_mrr``,
        ``popularity_test_mrr`` and
        ``test_<metric>``), ``table`` (markdown) and ``csv`` (text).

    Raises:
        ValueError: no models, or a model listed twice.
        KeyError, ConfigError: an unknown model or one without a preset (before any training).
        Any error of a train or evaluate stage; the parent run is then marked FAILED.
    """
    configs = model_configs(cfg, models)  # all checked before anything is trained

    from trainers.evaluate import run_evaluation
    from trainers.train import run_training

    client = tracking.client(cfg)
    parent = client.create_run(
        tracking.experiment_id(cfg),
        tags={"dataset": cfg.dataset.name, "profile": cfg.profile, "models": ",".join(models),
              "mlflow.runName": f"{cfg.dataset.name}-compare"},
    ).info.run_id
    rows = []
    try:
        for model_cfg in configs:
            trained = run_training(model_cfg)
            evaluated = run_evaluation(model_cfg)
            client.set_tag(trained["run_id"], "mlflow.parentRunId", parent)
            rows.append(comparison_row(model_cfg.model.name, trained, evaluated))
    except BaseException:
        client.set_terminated(parent, status="FAILED")
        raise
    table, table_csv = markdown_table(rows), csv_table(rows)
    tracking.log_metrics(cfg, parent, {f"{row['model']}_test_{m}": row[f"test_{m}"]
                                       for row in rows for m in TEST_METRICS})
    _log_artifacts(cfg, parent, rows, table, table_csv)
    tracking.finish_run(cfg, parent)
    return {"run_id": parent, "rows": rows, "table": table, "csv": table_csv}


def comparison_row(name: str, trained: dict[str, Any], evaluated: dict[str, Any]
                   ) -> dict[str, Any]:
    """One model's line from the train and evaluate stage results."""
    return {"model": name, "run_id": trained["run_id"], "best_epoch": trained["best_epoch"],
            "valid_mrr": trained["valid"]["mrr"],
            **{f"test_{m}": evaluated["test"][m] for m in TEST_METRICS},
            "popularity_valid_mrr": evaluated["popularity_valid"]["mrr"],
            "popularity_test_mrr": evaluated["popularity_test"]["mrr"]}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Models as rows, metrics as columns (4 decimals); the best test MRR in bold."""
    columns = COLUMNS
    best = max(row["test_mrr"] for row in rows)
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in rows:
        cells = [f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        if row["test_mrr"] == best:
            cells[1] = f"**{cells[1]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict[str, Any]]) -> str:
    """The same table as CSV, full precision."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _log_artifacts(cfg: PipelineConfig, run_id: str, rows: list[dict[str, Any]], table: str,
                   table_csv: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    client = tracking.client(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "comparison.md").write_text(table)
        (folder / "comparison.csv").write_text(table_csv)
        width = 0.8 / len(CHART_METRICS)
        fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) + 2), 4))
        for k, metric in enumerate(CHART_METRICS):
            ax.bar([i + (k - (len(CHART_METRICS) - 1) / 2) * width for i in range(len(rows))],
                   [row[f"test_{metric}"] for row in rows], width, label=f"test {metric}")
        # Popularity MRR is the same for every model (same lists): one reference line.
        ax.axhline(rows[0]["popularity_test_mrr"], color="grey", linestyle="--",
                   label="popularity mrr")
        ax.set_xticks(range(len(rows)), [row["model"] for row in rows])
        ax.set(ylabel="metric", title=f"{cfg.dataset.name}: test metrics by model")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "comparison.png", dpi=100)
        plt.close(fig)
        for name in ("comparison.md", "comparison.csv", "comparison.png"):
            client.log_artifact(run_id, str(folder / name))
