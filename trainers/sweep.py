"""Hyper-parameter sweeps with Ray Tune: any setting of any model, swept the same way.

``run_sweep(cfg)`` turns ``sweep.space`` (dotted config keys -> candidate values, e.g.
``{"model.params.lambda_bpr": [1e-4, 1e-3, 1e-2, 1e-1]}``; model presets set their paper's
grid, DFAR's is Appendix A.4's) into trials and runs each trial
as the ordinary train and evaluate stages (``trainers.train.run_training``,
``trainers.evaluate.run_evaluation``) inside a Ray Tune function trainable, so a trial is the
same Ray Train run a single ``seqrec train`` would be, with its own run directory
(``train.run_name = <model>-sweep-<key hash>``), checkpoints and resumption.

Modes (``sweep.mode``):
  * ``one_at_a_time``: each key varies alone while the others keep ``cfg``'s value (DFAR
    Appendix A.4: "we vary one weight with the other fixed", 4 values per weight -> 8 trials);
  * ``grid``: the Cartesian product;
  * ``variants``: each named override set of ``sweep.variants``, for ablation tables whose
    rows change several keys together (DFAR Table 3's "w/o FHA" is MHA without the label
    mask; DualRec Table 5); ``{}`` is the composed config itself.

Trials run one after another by default (``sweep.max_concurrent``): each trial's Ray Train workers
take the CPUs, and the Tune driver of a trial reserves no CPU.

MLflow: one parent run ``<dataset>-<model>-sweep``; each trial's training run is its child
(tag ``mlflow.parentRunId``) and carries the tag ``sweep.trial`` with its overrides. The
parent gets ``sweep.md`` / ``sweep.csv`` (one row per trial: overrides, valid and test
metrics) and ``sweep.png``: the chosen metric against each swept key (log-x when all values
are positive; in ``one_at_a_time`` each panel shows the trials that vary that key), or per
variant as bars.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import itertools
import json
import math
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from conf.loading import ConfigError
from conf.schema import PipelineConfig
from store.files import join
from trainers import tracking
from trainers.registry import model_class
from trainers.significance import mean_interval

Mode = Literal["one_at_a_time", "grid", "variants"]


def trials(space: dict[str, list[Any]], mode: Mode) -> list[dict[str, Any]]:
    """The trials' overrides, in a stable order.

    Raises:
        ValueError: an empty space, a key without values, or a repeated value.
    """
    if not space:
        raise ValueError("sweep.space is empty: nothing to sweep (set it in the model preset, "
                         "a --config file, or --set 'sweep.space={\"train.lr\": [0.01, 0.1]}')")
    for key, values in space.items():
        if not values:
            raise ValueError(f"sweep key {key!r} has no values")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ValueError(f"sweep key {key!r} repeats a value: {values}")
    if mode == "grid":
        keys = list(space)
        return [dict(zip(keys, combo)) for combo in itertools.product(*space.values())]
    return [{key: value} for key, values in space.items() for value in values]


def variant_trials(variants: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The overrides of each named variant (``sweep.mode: variants``), in their order.

    Raises:
        ValueError: no variants, or two variants with the same overrides.
    """
    if not variants:
        raise ValueError("sweep.mode: variants needs sweep.variants (name -> {dotted key: "
                         "value}; model presets set their paper's ablations)")
    seen: dict[str, str] = {}
    for name, overrides in variants.items():
        key = json.dumps(overrides, sort_keys=True)
        if key in seen:
            raise ValueError(f"sweep variants {seen[key]!r} and {name!r} set the same overrides")
        seen[key] = name
    return [dict(overrides) for overrides in variants.values()]


def trial_config(cfg: PipelineConfig, overrides: dict[str, Any]) -> PipelineConfig:
    """``cfg`` with dotted ``overrides`` applied, validated, in its own run directory.

    Raises:
        ConfigError: an override names an unknown key or a bad value.
    """
    data = cfg.model_dump(mode="json")
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise ConfigError(f"sweep key {dotted!r}: {key!r} is not a config section")
            node = node[key]
        if leaf not in node and parents[:2] != ["model", "params"]:
            raise ConfigError(f"sweep key {dotted!r}: unknown key {leaf!r}")
        node[leaf] = value
    tag = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
    data["train"]["run_name"] = f"{cfg.model.name}-sweep-{tag}"
    try:
        out = PipelineConfig.model_validate(data)
        # The model's own Params: a bad model.params value fails here, not in a trial.
        model_class(out.model.name).Params.model_validate(out.model.params)
    except ValidationError as exc:
        raise ConfigError(f"sweep overrides {overrides} give an invalid config: {exc}") from None
    return out


def _trial(config: dict[str, Any]) -> None:
    """One Tune trial: train and evaluate its config, report its metrics to Tune."""
    import ray.tune

    from trainers.evaluate import run_evaluation
    from trainers.train import run_training

    config = config["trial"]  # param_space {"trial": grid_search([...])}: one entry
    # The module that registers the model (plugins registered outside registry._load_all
    # too), as the Ray Train workers import it.
    importlib.import_module(config["model_module"])
    cfg = PipelineConfig.model_validate(config["cfg"])
    trained = run_training(cfg)
    evaluated = run_evaluation(cfg)
    client = tracking.client(cfg)
    client.set_tag(trained["run_id"], "mlflow.parentRunId", config["parent"])
    client.set_tag(trained["run_id"], "sweep.trial", json.dumps(config["overrides"]))
    if config["variant"] is not None:
        client.set_tag(trained["run_id"], "sweep.variant", config["variant"])
    ray.tune.report({"run_id": trained["run_id"], "best_epoch": trained["best_epoch"],
                     **{f"valid_{k}": v for k, v in trained["valid"].items()},
                     **{f"test_{k}": v for k, v in evaluated["test"].items()}})


def seed_rows(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Trials that differ only by ``train.seed`` folded into one row each, in order: every
    reported number the mean over seeds, each with ``<metric>_ci95`` (the 95 % t
    half-width, trainers/significance.py), ``seeds`` and the trials' ``run_id`` joined."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        setting = {k: row[k] for k in keys if k in row}
        groups.setdefault(json.dumps(setting, sort_keys=True, default=str), []).append(row)
    out = []
    for group in groups.values():
        folded = {k: group[0][k] for k in keys if k in group[0]}
        folded["seeds"] = len(group)
        folded["run_id"] = ",".join(str(r.get("run_id", "")) for r in group)
        for name, value in group[0].items():
            if name in folded or name == "train.seed" or not isinstance(value, (int, float)):
                continue
            folded[name], folded[f"{name}_ci95"] = mean_interval([r[name] for r in group])
        out.append(folded)
    return out


def run_sweep(cfg: PipelineConfig, seeds: list[int] | None = None) -> dict[str, Any]:
    """Run every trial of ``sweep.space`` with Ray Tune and log the sweep to MLflow.

    Args:
        cfg: the composed config; trials differ from it only by their overrides. Reads
            ``sweep``: ``space`` (dotted key -> values: ``model.params.*``, ``train.*``, ...),
            ``mode``, ``metric`` (the reported metric the plot shows and ``best`` maximises,
            e.g. ``valid_auc``) and ``max_concurrent``.
        seeds: run every trial once per ``train.seed`` (SCoRe Table 4, DFAR Table 3 and
            DualRec Table 3 over seeds); each row is then the mean over seeds with the 95 %
            t half-width of every metric (``<metric>_ci95``) and ``seeds``.

    Returns:
        dict: ``run_id`` (parent), ``rows`` (overrides + metrics per trial), ``best`` (the row
        with the highest ``metric``), ``table`` (markdown), ``csv``.

    Raises:
        ValueError: a bad space, or ``metric`` not reported by the trials.
        ConfigError: an override that gives an invalid config (before anything runs).
        RuntimeError: a trial failed (its error is in the message).
    """
    space, mode, metric = cfg.sweep.space, cfg.sweep.mode, cfg.sweep.metric
    if mode == "variants":
        overrides = variant_trials(cfg.sweep.variants)
        names: list[str | None] = list(cfg.sweep.variants)
        keys = ["variant", *dict.fromkeys(k for o in overrides for k in o)]
    else:
        overrides = trials(space, mode)
        names, keys = [None] * len(overrides), list(space)
    if seeds:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct: {seeds}")
        overrides = [{**o, "train.seed": seed} for o in overrides for seed in seeds]
        names = [n for n in names for _ in seeds]
    configs = [trial_config(cfg, o) for o in overrides]  # all validated before any trial

    import ray
    from ray import tune

    client = tracking.client(cfg)
    parent = client.create_run(
        tracking.experiment_id(cfg),
        tags={"dataset": cfg.dataset.name, "model": cfg.model.name, "profile": cfg.profile,
              "sweep.mode": mode, "sweep.keys": ",".join(keys),
              "mlflow.runName": f"{cfg.dataset.name}-{cfg.model.name}-sweep"},
    ).info.run_id
    started = not ray.is_initialized()
    if started:
        from trainers.train import start_ray

        start_ray(cfg)
    try:
        module = model_class(cfg.model.name).__module__
        grid = [{"cfg": c.model_dump(mode="json"), "overrides": o, "variant": n,
                 "parent": parent, "model_module": module}
                for c, o, n in zip(configs, overrides, names)]
        tuner = tune.Tuner(
            # The trial only drives its Ray Train run, whose workers take every CPU they
            # ask for (the local profile: one worker with both cores); Tune refuses an empty
            # request, so the driver reserves 1 MiB of memory and no CPU.
            tune.with_resources(_trial, tune.PlacementGroupFactory([{"memory": 1 << 20}])),
            param_space={"trial": tune.grid_search(grid)},
            tune_config=tune.TuneConfig(max_concurrent_trials=cfg.sweep.max_concurrent),
            run_config=tune.RunConfig(name=f"{cfg.model.name}-sweep",
                                      storage_path=join(cfg.paths.work_dir, "tune")),
        )
        results = tuner.fit()
        errors = [str(r.error) for r in results if r.error is not None]
        if errors:
            raise RuntimeError(f"{len(errors)} sweep trial(s) failed; first: {errors[0]}")
        by_trial = {json.dumps(r.config["trial"]["overrides"], sort_keys=True): r.metrics
                    for r in results}
    except BaseException:
        client.set_terminated(parent, status="FAILED")
        raise
    finally:
        if started:
            ray.shutdown()
    rows = [{**({"variant": n} if n is not None else {}), **o,
             **_metrics(by_trial[json.dumps(o, sort_keys=True)])}
            for o, n in zip(overrides, names)]
    if any(metric not in row for row in rows):
        client.set_terminated(parent, status="FAILED")
        raise ValueError(f"trials did not report {metric!r}; they report "
                         f"{sorted(k for k in rows[0] if k not in keys)}")
    if seeds:
        rows = seed_rows(rows, keys)
        client.set_tag(parent, "seeds", ",".join(map(str, seeds)))
    best = max(rows, key=lambda row: row[metric])
    table, table_csv = markdown_table(rows, keys, metric), csv_table(rows)
    tracking.log_metrics(cfg, parent, {f"best_{metric}": best[metric]})
    _log_artifacts(cfg, parent, rows, keys, mode, metric, table, table_csv)
    tracking.finish_run(cfg, parent)
    return {"run_id": parent, "rows": rows, "best": best, "table": table, "csv": table_csv}


def _metrics(reported: dict[str, Any]) -> dict[str, Any]:
    keep = ("run_id", "best_epoch")
    return {k: v for k, v in reported.items()
            if k in keep or k.startswith(("valid_", "test_"))}


def markdown_table(rows: list[dict[str, Any]], keys: list[str], metric: str) -> str:
    """One line per trial (per setting over seeds: mean ± 95 % half-width): the swept keys,
    then valid/test metrics; the best metric bold."""
    metrics = sorted(k for k in rows[0]
                     if k.startswith(("valid_", "test_")) and not k.endswith("_ci95"))
    seeds = ["seeds"] if "seeds" in rows[0] else []
    columns = [*keys, *metrics, *seeds, "run_id"]
    best = max(row[metric] for row in rows)
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c, "")
            text = f"{value:.4f}" if isinstance(value, float) and c not in keys else str(value)
            half = row.get(f"{c}_ci95")
            if isinstance(half, float) and not math.isnan(half):  # over seeds: mean ± half-width
                text += f" ± {half:.4f}"
            cells.append(f"**{text}**" if c == metric and value == best else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _log_artifacts(cfg: PipelineConfig, run_id: str, rows: list[dict[str, Any]],
                   keys: list[str], mode: Mode, metric: str, table: str,
                   table_csv: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    client = tracking.client(cfg)
    if mode == "variants":
        fig = _variant_bars(plt, rows, metric)
    else:
        fig = _metric_by_key(plt, rows, keys, mode, metric)
    fig.suptitle(f"{cfg.dataset.name} / {cfg.model.name}: {metric} by setting")
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "sweep.md").write_text(table)
        (folder / "sweep.csv").write_text(table_csv)
        fig.savefig(folder / "sweep.png", dpi=100)
        plt.close(fig)
        for name in ("sweep.md", "sweep.csv", "sweep.png"):
            client.log_artifact(run_id, str(folder / name))


def _variant_bars(plt, rows: list[dict[str, Any]], metric: str):
    """One bar per variant, the axis zoomed to the values (ablations differ by little)."""
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.5))
    values = [r[metric] for r in rows]
    ax.bar([r["variant"] for r in rows], values)
    ax.set_ylim(min(values) * 0.95, max(values) * 1.02)
    ax.set(ylabel=metric)
    ax.tick_params(axis="x", labelrotation=20)
    return fig


def _metric_by_key(plt, rows: list[dict[str, Any]], keys: list[str], mode: Mode, metric: str):
    """One panel per swept key: the metric against the key's values."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        # one_at_a_time: the trials that vary this key; grid: every trial, by this key.
        mine = [r for r in rows if key in r and (mode == "grid" or len(
            [k for k in keys if k in r]) == 1)]
        xs, ys = [r[key] for r in mine], [r[metric] for r in mine]
        numeric = all(isinstance(x, (int, float)) for x in xs)
        if numeric:
            order = sorted(range(len(xs)), key=xs.__getitem__)
            xs, ys = [xs[i] for i in order], [ys[i] for i in order]
            ax.plot(xs, ys, marker="o", linestyle="-" if mode == "one_at_a_time" else "none")
            if all(x > 0 for x in xs):
                ax.set_xscale("log")
        else:
            ax.plot([str(x) for x in xs], ys, marker="o", linestyle="none")
        ax.set(xlabel=key, ylabel=metric)
    return fig
