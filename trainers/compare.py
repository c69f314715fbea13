"""Model comparison (SCoRe Table 3, DualRec Table 2, DFAR Table 2): train and evaluate
several models on one dataset and put their test metrics side by side.

``run_comparison(cfg, models)`` runs the ordinary train and evaluate stages
(``trainers.train.run_training``, ``trainers.evaluate.run_evaluation``) once per model, with
``cfg`` for everything but the model section, which comes from the model's preset
(``conf/models/<name>.yaml``; the model named in ``cfg`` keeps its own, overrides included).
A model already trained with the same config is skipped by the training stage as usual, so a
rerun only evaluates.

A row may be a variant of a preset: ``name:key=value[:key=value...]``, e.g.
``sasrec:loss=ce`` beside ``sasrec`` (issue 23: a paper's table against its baseline's
paper objective and the objective the field now uses). A bare key is a ``model.params`` key
(``model.params.<key>`` too), ``train.<key>`` a training key; values parse as YAML, as
``--set``. The variant trains in its own run folder (``train.run_name``
``sasrec-loss-ce``, :func:`variant_run_name`) and its row is labelled as written.

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
import math
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml
from pydantic import ValidationError

from conf.loading import load_config, preset_section
from conf.schema import PipelineConfig, TrainConfig
from store.runs import run_name
from trainers import tracking
from trainers.protocols import EvaluationProtocol, protocol_at
from trainers.registry import model_class
from trainers.significance import beats, mean_interval, paired_tests
from trainers.split_data import declared_inputs

log = logging.getLogger(__name__)

RANDOM_ROW = "random"  # the floor row of a protocol with a ``random_reference`` (feedback)
# full ranking against every item (trainers/evaluate.py), beside the sampled lists' metrics;
# full_users says how many users it covers, full_sampled whether they are a seeded sample
COUNT_COLUMNS = ("full_users", "full_sampled", "best_epoch")  # shown without decimals
FULL_COLUMNS = ("full_hr@10", "full_hr@20", "full_ndcg@10", "full_ndcg@20", "full_mrr",
                "full_users", "full_sampled")


def columns(protocol: EvaluationProtocol, seeds: bool = False) -> tuple[str, ...]:
    """The table's columns under ``protocol``: its test metrics (the papers' first), then
    its selection metric on validation (MRR or AUC); over seeds, each test metric's 95 %
    half-width and the paired tests' p-values follow the test metrics."""
    chosen = protocol.selection_metric
    stats = (*(f"test_{m}_ci95" for m in protocol.test_metrics),
             *(f"test_{m}_p_{test}" for m in protocol.paired_metrics
               for test in ("ttest", "wilcoxon")), "seeds") if seeds else ()
    return ("model", *(f"test_{m}" for m in protocol.test_metrics), *stats, f"valid_{chosen}",
            f"popularity_valid_{chosen}", f"popularity_test_{chosen}", *FULL_COLUMNS,
            "best_epoch",
            "fit_train_auc", "fit_gap_auc", "run_id")


class RowSpec(NamedTuple):
    """One row of a comparison as written on the command line: a model preset and the
    overrides of its variant (both empty for the preset itself)."""
    model: str  # the registered model, e.g. "sasrec"
    params: dict[str, Any]  # model.params overrides
    train: dict[str, Any]  # train overrides


def parse_row(text: str) -> RowSpec:
    """``name[:key=value...]`` -> :class:`RowSpec` (module docstring: the key forms). A
    value holds no ``:`` (the separator), nor ``,`` on the command line (``--models``).

    Raises:
        ValueError: an empty name, a part without ``=``, a value that is not YAML, or a key
            outside ``model.params`` and ``train``.
    """
    name, *parts = text.strip().split(":")
    if not name:
        raise ValueError(f"compare row {text!r} has no model name")
    params: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for part in parts:
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"compare row {text!r}: {part!r} must look like key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ValueError(f"compare row {text!r}: {part!r} is not a YAML value: {exc}"
                             ) from None
        if key.startswith("train."):
            train[key.removeprefix("train.")] = value
        elif "." not in key or key.startswith("model.params."):
            params[key.removeprefix("model.params.")] = value
        else:
            raise ValueError(f"compare row {text!r}: {key!r} is neither a model parameter "
                             "nor a train.<key>; other sections are the comparison's own "
                             "(--set)")
    return RowSpec(name.strip(), params, train)


def variant_run_name(base: str, spec: RowSpec) -> str:
    """The run folder of a variant: ``base`` (the preset's run name) then each override as
    ``-key-value``, every character MLflow's metric names forbid as ``_``
    (``sasrec:loss=ce`` -> ``sasrec-loss-ce``)."""
    suffix = "".join(f"-{key}-{value}" for key, value in
                     (*spec.params.items(), *((f"train.{k}", v) for k, v in spec.train.items())))
    return mlflow_safe(base + suffix)


def mlflow_safe(name: str) -> str:
    """``name`` with every character an MLflow metric name cannot hold as ``_``."""
    return re.sub(r"[^\w.\-]", "_", name)


def model_config(cfg: PipelineConfig, row: str) -> PipelineConfig:
    """``cfg`` with the model section of ``row``'s preset (``cfg``'s own if it names it),
    under the dataset's ``table.params`` where the model has them (DualRec's d = 64 and
    DFAR's 32 for every model of their tables), and the ``train`` keys that preset sets:
    each model trains with its paper's recipe (DualRec's weight decay, plateau halving
    and clipping) under the dataset's ``table.train`` (DFAR's lr and batch for every model of
    its table), as a single ``seqrec train --model <name>`` would; every other train key (epochs,
    patience, workers, ...) stays the comparison's, except where the preset sets it itself
    (BERT4Rec's epochs: its lr 1e-4 needs more than the datasets' cap). A variant row
    (``sasrec:loss=ce``, :func:`parse_row`) then sets its overrides on top, in its own run
    folder (:func:`variant_run_name`).

    Raises:
        KeyError: the row's model is not registered.
        conf.loading.ConfigError: the model has no preset in conf/models.
        ValueError: a malformed row, or overrides its model or ``train`` rejects.
    """
    spec = parse_row(row)
    cfg = _preset_config(cfg, spec.model)
    if not spec.params and not spec.train:
        return cfg
    params = {**cfg.model.params, **spec.params}
    try:
        model_class(spec.model).Params.model_validate(params)
        train = TrainConfig.model_validate({**cfg.train.model_dump(), **spec.train})
    except ValidationError as exc:
        raise ValueError(f"compare row {row!r}: {exc}") from None
    if "run_name" not in spec.train:
        train = train.model_copy(update={"run_name": variant_run_name(run_name(cfg), spec)})
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"params": params}),
                                  "train": train})


def _preset_config(cfg: PipelineConfig, name: str) -> PipelineConfig:
    """:func:`model_config` for the preset ``name`` itself (no variant)."""
    model_class(name)  # unknown names fail here, listing the registered ones
    if name == cfg.model.name:
        return cfg
    preset = load_config(model=name)
    # A key of the table's recipe (already in cfg.train, or a user's override of it) wins.
    recipe = {key: value for key, value in preset_section("models", name, "train").items()
              if key not in cfg.table.train}
    table = {k: v for k, v in cfg.table.params.items() if k in preset.model.params}
    model = preset.model.model_copy(update={"params": {**preset.model.params, **table}})
    return cfg.model_copy(update={"model": model,
                                  "train": TrainConfig.model_validate(
                                      {**cfg.train.model_dump(), **recipe})})


def model_configs(cfg: PipelineConfig, models: list[str]) -> list[PipelineConfig]:
    """One config per row (:func:`model_config`), after checking the list.

    Raises:
        ValueError: no models, a row listed twice, or two rows that would train in one run
            folder.
        KeyError, ConfigError: as :func:`model_config`.
    """
    if not models:
        raise ValueError("compare needs at least one model")
    repeated = sorted({m for m in models if models.count(m) > 1})
    if repeated:
        raise ValueError(f"models listed more than once: {', '.join(repeated)}")
    configs = [model_config(cfg, row) for row in models]
    folders = [run_name(c) for c in configs]
    shared = sorted({f for f in folders if folders.count(f) > 1})
    if shared:
        raise ValueError(f"rows that would train in one run folder ({', '.join(shared)}): "
                         + ", ".join(m for m, f in zip(models, folders) if f in shared))
    return configs


def skipped_models(protocol: EvaluationProtocol,
                   rows: dict[str, PipelineConfig]) -> dict[str, str]:
    """Row label -> why ``protocol`` cannot run its model (rows it can run are absent)."""
    skipped = {}
    for label, model_cfg in rows.items():
        required, _ = declared_inputs(model_class(model_cfg.model.name))
        unfed = protocol.unfed(required)
        if unfed:
            skipped[label] = (
                f"needs {', '.join(sorted(unfed))}, which the {protocol.name} protocol does not "
                f"feed (it feeds {', '.join(sorted(protocol.feeds))})")
    return skipped


def seeded(cfg: PipelineConfig, seed: int) -> PipelineConfig:
    """``cfg`` trained with ``train.seed`` = seed, in its own run folder (``<run>-seed<N>``);
    the index, its fixed negatives and evaluation lists stay shared."""
    run = f"{cfg.train.run_name or cfg.model.name}-seed{seed}"
    return cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"seed": seed, "run_name": run})})


def run_comparison(cfg: PipelineConfig, models: list[str],
                   seeds: list[int] | None = None) -> dict[str, Any]:
    """Train and evaluate every model in ``models`` that the index's protocol can feed.

    Args:
        cfg: the composed config (dataset, paths, training, tracking).
        models: rows in table order: registered model names, each with a preset, or a
            preset's variant ``name:key=value...`` (:func:`parse_row`).
        seeds: train every model once per seed (only ``train.seed`` varies; one nested run
            each); the table then gives each test metric as mean ± 95 % half-width and
            marks the cells the best model beats by both paired tests over users
            (trainers/significance.py). None: one run with ``train.seed``.

    Returns:
        dict: ``run_id`` (parent MLflow run), ``protocol``, ``rows`` (one dict per model run:
        model, child ``run_id``, ``best_epoch``, the valid selection metric, its popularity
        references, ``test_<metric>`` and the train/valid AUC gap (``fit_train_auc``,
        ``fit_gap_auc``: evaluation's ``fit``); then the ``random`` row where the protocol
        has one (``feedback``)),
        ``skipped`` (row -> reason), ``table`` (markdown) and ``csv`` (text).

    Raises:
        ValueError: no models, a row listed twice or malformed, repeated seeds (or a row's
            own train.seed with seeds), or no listed model can run under the protocol (each
            reason named).
        KeyError, ConfigError: an unknown model or one without a preset (before any training).
        FileNotFoundError: no index (run ``seqrec index`` first).
        Any error of a train or evaluate stage; the parent run is then marked FAILED.
    """
    configs = dict(zip(models, model_configs(cfg, models)))  # all checked before training
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise ValueError(f"seeds must be distinct and at least one: {seeds}")
    seeded_rows = [row for row in models if "seed" in parse_row(row).train]
    if seeds is not None and seeded_rows:
        raise ValueError("a row sets train.seed, which --seeds sets for every row: "
                         + ", ".join(seeded_rows))
    protocol = protocol_at(cfg.paths.work_dir)
    skipped = skipped_models(protocol, configs)
    for name, reason in skipped.items():
        log.warning("compare: skipping %s: %s", name, reason)
    runnable = {label: c for label, c in configs.items() if label not in skipped}
    if not runnable:
        raise ValueError(f"no listed model runs under the {protocol.name} protocol: " + "; ".join(
            f"{name} {reason}" for name, reason in skipped.items()))

    from trainers.evaluate import PER_USER_FILE, run_evaluation
    from trainers.train import run_training

    client = tracking.client(cfg)
    parent = client.create_run(
        tracking.experiment_id(cfg),
        tags={"dataset": cfg.dataset.name, "protocol": protocol.name, "profile": cfg.profile,
              "models": ",".join(models),
              "skipped_models": ",".join(skipped) or "none",
              "mlflow.runName": f"{cfg.dataset.name}-compare"},
    ).info.run_id
    rows, per_user = [], {}
    try:
        for name, model_cfg in runnable.items():
            runs = []
            for run_cfg in ([model_cfg] if seeds is None
                            else [seeded(model_cfg, s) for s in seeds]):
                trained = run_training(run_cfg)
                evaluated = run_evaluation(run_cfg)
                client.set_tag(trained["run_id"], "mlflow.parentRunId", parent)
                client.set_tag(trained["run_id"], "seed", str(run_cfg.train.seed))
                runs.append(comparison_row(name, trained, evaluated, protocol))
                per_user.setdefault(name, []).append(
                    tracking.read_table(run_cfg, trained["run_id"], PER_USER_FILE))
            rows.append(runs[0] if seeds is None else seed_row(runs))
        if protocol.random_reference:
            rows.append(random_row(evaluated["random_test"], protocol))
        if seeds is not None:
            mark_significance(rows, per_user, protocol)
        # a variant's metrics by its run folder (metric names take no ":" or "=")
        keys = {label: mlflow_safe(run_name(c)) for label, c in configs.items() if ":" in label}
        tracking.log_metrics(cfg, parent, {f"{keys.get(row['model'], row['model'])}_test_{m}":
                                           row[f"test_{m}"]
                                           for row in rows for m in protocol.test_metrics})
    except BaseException:
        client.set_terminated(parent, status="FAILED")
        raise
    with_seeds = seeds is not None
    table = markdown_table(rows, protocol, skipped, with_seeds)
    table_csv = csv_table(rows, protocol, with_seeds)
    if with_seeds:
        client.set_tag(parent, "seeds", ",".join(map(str, seeds)))
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


def seed_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One model's line over its seeds' lines: every number the mean, each test metric with
    ``test_<m>_ci95`` (the 95 % t half-width over seeds), ``seeds`` and the child run ids."""
    row: dict[str, Any] = {"model": runs[0]["model"], "seeds": len(runs),
                           "run_id": ",".join(r["run_id"] for r in runs)}
    for key, value in runs[0].items():
        if key in row or not isinstance(value, (int, float)):
            row.setdefault(key, value)
            continue
        values = [r[key] for r in runs]
        row[key], half = mean_interval(values)
        if key.startswith("test_"):
            row[f"{key}_ci95"] = half
    return row


def mark_significance(rows: list[dict[str, Any]], per_user: dict[str, list[dict]],
                      protocol: EvaluationProtocol) -> None:
    """For each paired metric, compare the best model (by mean) with every other model over
    users (each user's value averaged over seeds): ``test_<m>_p_ttest``,
    ``test_<m>_p_wilcoxon`` and ``test_<m>_beaten`` (True when the best beats it by both at
    p < 0.05) on the other model's row, in place."""
    models = [row for row in rows if row["model"] != RANDOM_ROW]
    for metric, column in protocol.paired_metrics.items():
        values = _users_over_seeds(per_user, column)
        best = max(models, key=lambda row: row[f"test_{metric}"])
        for row in models:
            if row is best:
                continue
            p_t, p_w = paired_tests(values[best["model"]], values[row["model"]])
            row[f"test_{metric}_p_ttest"], row[f"test_{metric}_p_wilcoxon"] = p_t, p_w
            row[f"test_{metric}_beaten"] = beats(best[f"test_{metric}"], row[f"test_{metric}"],
                                                 p_t, p_w)


def _users_over_seeds(per_user: dict[str, list[dict]], column: str) -> dict[str, np.ndarray]:
    """Per model, ``column`` of the users every model's every seed scored, each averaged
    over seeds (NaN where no seed has it), in one user order."""
    users = None
    for tables in per_user.values():
        for table in tables:
            ids = np.asarray(table["user"])
            users = ids if users is None else np.intersect1d(users, ids)
    out = {}
    for name, tables in per_user.items():
        stacked = []
        for table in tables:
            ids, value = np.asarray(table["user"]), np.asarray(table[column], np.float64)
            stacked.append(value[np.searchsorted(ids, users)])
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN users stay NaN
            out[name] = np.nanmean(np.stack(stacked), axis=0)
    return out


def random_row(floor: dict[str, float], protocol: EvaluationProtocol) -> dict[str, Any]:
    """The random scorer's expected test metrics as a table row (no run, no validation)."""
    row = {c: "" for c in columns(protocol)}
    row.update({"model": RANDOM_ROW, **{f"test_{m}": floor[m] for m in protocol.test_metrics}})
    return row


def markdown_table(rows: list[dict[str, Any]], protocol: EvaluationProtocol,
                   skipped: dict[str, str], seeds: bool = False) -> str:
    """Models as rows, metrics as columns (4 decimals); the best model's first test metric
    in bold; the skipped models and their reasons below the table. Over seeds a test cell
    reads ``mean ± half-width``, with ``*`` where the best model beats this one by both
    paired tests (p < 0.05; the p-values are in the CSV)."""
    cols = [c for c in columns(protocol, seeds) if not c.endswith(("_ci95", "_ttest",
                                                                    "_wilcoxon"))]
    first = cols[1]
    best = max(row[first] for row in rows if row["model"] != RANDOM_ROW)
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for row in rows:
        cells = [_cell(row, c) for c in cols]
        if row["model"] != RANDOM_ROW and row[first] == best:
            cells[1] = f"**{cells[1]}**"
        lines.append("| " + " | ".join(cells) + " |")
    if seeds:
        lines.append(f"\nmean ± 95 % t half-width over {rows[0]['seeds']} seeds; * the best "
                     "model beats this one by a paired t-test and a Wilcoxon signed-rank "
                     "test over users, both p < 0.05")
    for name, reason in skipped.items():
        lines.append(f"\nskipped {name}: {reason}")
    return "\n".join(lines) + "\n"


def _cell(row: dict[str, Any], column: str) -> str:
    value = row.get(column, "")
    if not isinstance(value, float):
        return str(value)
    if column in COUNT_COLUMNS and value.is_integer():
        return str(int(value))
    half = row.get(f"{column}_ci95")
    text = f"{value:.4f}" if half is None or math.isnan(half) else f"{value:.4f} ± {half:.4f}"
    return text + ("*" if row.get(f"{column}_beaten") else "")


def csv_table(rows: list[dict[str, Any]], protocol: EvaluationProtocol,
              seeds: bool = False) -> str:
    """The same table as CSV, full precision (over seeds: half-widths and p-values too)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns(protocol, seeds), extrasaction="ignore",
                            restval="", lineterminator="\n")
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
