"""The Prefect flow ``seqrec``, one for every paper and protocol: (generate) -> ingest ->
index -> train -> evaluate -> register, or, with the ``models`` parameter, (generate) ->
ingest -> index -> compare (train and evaluate each model, one comparison table;
trainers/compare.py). The dataset preset picks the protocol (``index.protocol``) and the
model preset the model, so SCoRe on Taobao, DualRec on Beauty and DFAR on Amazon Toys are
the same flow with other parameters (their deployments: flows/deployments.py).

Generated presets (``generate.auto``: ``sample``, ``sample-loo``, ``sample-feedback``) are
(re)written first when their raw files are missing or were generated under another config.
Each task is a thin wrapper over the stage function the CLI calls (no second
implementation). Unchanged steps are skipped: ingest and index through their manifests
(store/manifest.py), train, evaluate and register through the flow state
(store/flow_state.py); each skip is logged with its reason. Transient failures (lost JVM or Ray
worker, I/O hiccups) are retried ``flow.retries`` times, ``flow.retry_delay_seconds`` apart;
errors in the input or config fail at once, and a failed step fails the flow with the
step's own exception.

Run in-process with ``seqrec pipeline`` (Prefect's ephemeral API; no server needed) or as a
deployment (flows/deployments.py).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE as NO_CACHE
from prefect.runtime import deployment as runtime_deployment

from conf.loading import ConfigError, load_config
from conf.schema import PipelineConfig
from flows.window import window_overrides
from spark_jobs.session import driver_released
from store import flow_state
from store.lock import work_lock

# Failures that a second try cannot fix: bad input, bad config, a missing file or a bug.
PERMANENT = (ConfigError, ValueError, TypeError, KeyError, FileNotFoundError,
             NotImplementedError, AssertionError)


# MLflow errors that name a bad request rather than an unreachable or busy store.
PERMANENT_MLFLOW_CODES = ("INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_DOES_NOT_EXIST",
                          "RESOURCE_ALREADY_EXISTS", "INVALID_STATE")


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: not in :data:`PERMANENT` and not an MLflow error
    about the request itself."""
    if isinstance(exc, PERMANENT):
        return False
    return getattr(exc, "error_code", None) not in PERMANENT_MLFLOW_CODES


def _retry_condition(_task, _task_run, task_state) -> bool:
    return is_transient(task_state.result(raise_on_failure=False))


def registered_name(cfg: PipelineConfig) -> str:
    """MLflow registered model name: ``tracking.registered_model``, else the deployment's
    name when run as one, else ``<model>-<dataset>`` (the same as the deployment name)."""
    return (cfg.tracking.registered_model or runtime_deployment.name
            or f"{cfg.model.name}-{cfg.dataset.name}")


@task(name="generate", cache_policy=NO_CACHE)
def generate_task(cfg: PipelineConfig) -> dict:
    from spark_jobs.sample_data import generate

    return generate(cfg)


@task(name="window", cache_policy=NO_CACHE)
def window_task(cfg: PipelineConfig) -> list[str]:
    return window_overrides(cfg)


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(cfg: PipelineConfig) -> dict:
    from spark_jobs.ingest import run_ingest

    return _logged("ingest", run_ingest(cfg))


@task(name="index", cache_policy=NO_CACHE)
def index_task(cfg: PipelineConfig) -> dict:
    from spark_jobs.index import run_index

    return _logged("index", run_index(cfg))


@task(name="train", cache_policy=NO_CACHE)
def train_task(cfg: PipelineConfig) -> dict:
    """run_training skips itself when its run directory already holds a finished run for the
    same index manifest and learning config (trainers/train.py, ``resume_key``)."""
    from trainers.train import run_training

    result = run_training(cfg)
    why = ("a finished run covers this index and dataset/index/model/train config"
           if result["skipped"] else "index or learning config changed, or no finished run")
    return _logged("train", result | {"reason": why})


@task(name="compare", cache_policy=NO_CACHE)
def compare_task(cfg: PipelineConfig, models: list[str], seeds: list[int] | None) -> dict:
    """Training inside skips models already trained on this index with the same config, so
    a retry or rerun only trains what is missing."""
    from trainers.compare import run_comparison

    return run_comparison(cfg, models, seeds)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(cfg: PipelineConfig, trained: dict) -> dict:
    from trainers.evaluate import run_evaluation

    key = flow_state.step_key(cfg, "evaluate", upstream=_trained_identity(trained))
    return _cached_or_run(cfg, "evaluate", key, lambda: run_evaluation(cfg),
                          f"train run {trained['run_id']} (epoch {trained['best_epoch']}) and "
                          "config unchanged")


@task(name="register", cache_policy=NO_CACHE)
def register_task(cfg: PipelineConfig, trained: dict, evaluated: dict) -> dict:
    from flows.champion import register_and_promote

    name = registered_name(cfg)
    # Only the registry store matters: the same run registered twice would be a duplicate.
    key = flow_state.step_key(cfg, "register", upstream=f"{_trained_identity(trained)}:{name}",
                         sections=("tracking",))

    def run() -> dict:
        value, metric = validation_score(trained)
        decision = register_and_promote(cfg.tracking.uri, name, model_uri(trained),
                                        trained["run_id"], value, metric,
                                        champion_floors(evaluated, metric)
                                        if cfg.flow.champion_floor else None)
        return decision.as_dict()

    result = _cached_or_run(cfg, "register", key, run, f"run {trained['run_id']} already "
                            f"registered as {name}")
    get_run_logger().info("champion: %s", result["message"])
    return result


@task(name="recommend", cache_policy=NO_CACHE)
def recommend_task(cfg: PipelineConfig) -> dict:
    """Top-K for every user from the champion (trainers/recommend.py skips itself when the
    champion, index and settings are those of its last output)."""
    from trainers.recommend import run_recommend

    try:
        result = run_recommend(cfg, registered_name(cfg))
    except LookupError as exc:  # every version so far is under the floor: no champion yet
        result = {"skipped": True, "reason": str(exc), "manifest": None, "examples": []}
    return _logged("recommend", result)


def champion_floors(evaluated: dict, metric: str) -> dict[str, float]:
    """What a champion must beat besides the current one: popularity on the validation lists
    and, under ``feedback`` (whose evaluation has a ``random_test`` reference), random."""
    floors = {"popularity": evaluated["popularity_valid"][metric]}
    if "random_test" in evaluated:
        floors["random"] = evaluated["random_test"][metric]
    return floors


def validation_score(trained: dict) -> tuple[float, str]:
    """(value, name) of the best validation selection metric from run_training's result (the
    early-stopping metric: MRR, or AUC under the feedback protocol)."""
    metric = trained["selection_metric"]
    return float(trained["valid"][metric]), metric


def model_uri(trained: dict) -> str:
    """The best model that trainers/tracking.py logs under the name ``model``."""
    return f"runs:/{trained['run_id']}/model"


def _trained_identity(trained: dict) -> str:
    """What evaluate and register consume: the run and its best checkpoint."""
    return f"{trained['run_id']}:{trained['best_epoch']}:{trained['checkpoint']}"


def _cached_or_run(cfg: PipelineConfig, step: str, key: dict, run, why_same: str) -> dict:
    """Reuse ``step``'s recorded result when its key is unchanged, else run and record it."""
    logger = get_run_logger()
    cached, why_run = flow_state.lookup(cfg, step, key)
    if cached is not None:
        logger.info("%s skipped: %s", step, why_same)
        return cached | {"skipped": True, "reason": why_same}
    logger.info("%s runs: %s", step, why_run)
    result = dict(run())
    flow_state.record(cfg, step, key, result)
    return result | {"skipped": False, "reason": why_run}


def _logged(stage: str, result: dict) -> dict:
    verb = "skipped" if result["skipped"] else "ran"
    get_run_logger().info("%s %s: %s", stage, verb, result["reason"])
    return result


def metrics_markdown(cfg: PipelineConfig, evaluated: dict, trained: dict,
                     registered: dict) -> str:
    """The run's summary: test metrics next to the popularity reference, run id and link."""
    test, popular = evaluated["test"], evaluated["popularity_test"]
    rows = "\n".join(
        f"| {name} | {test[name]:.4f} | {popular[name]:.4f} |" for name in test if name in popular
    )
    full = evaluated.get("full") or {}  # absent when train.full_rank_users is 0
    who = (f"a seeded sample of {full['users']:.0f} users" if full.get("sampled")
           else f"every user ({full['users']:.0f})") if full else ""
    full_line = (f"Full ranking against all items, {who}: " + ", ".join(
        f"{k} {v:.4f}" for k, v in full.items() if k not in ("users", "sampled"))
        + ".\n\n") if full else ""
    run_id = trained["run_id"]
    return (
        f"# {cfg.model.name} on {cfg.dataset.name}\n\n"
        f"| metric (test) | {cfg.model.name} | popularity |\n|---|---|---|\n{rows}\n\n"
        f"{full_line}"
        f"Best validation {trained['selection_metric'].upper()} "
        f"{validation_score(trained)[0]:.4f} (epoch {trained['best_epoch']}). "
        f"{registered['message']}.\n\n"
        f"MLflow run `{run_id}`: {run_link(cfg.tracking.uri, run_id)}\n"
    )


def recommendations_markdown(recommended: dict | None) -> str:
    """A few users' last events and top-10, in the dataset's original ids."""
    if not recommended or not recommended["manifest"]:
        return ""
    m = recommended["manifest"]
    lines = [f"\n## Recommendations: {m['model']} v{m['version']}, top-{m['k']} for "
             f"{m['users']} users (`{recommended['uri']}`)\n",
             "| user | last events | top 10 |", "|---|---|---|"]
    lines += [f"| {e['user_id']} | {' '.join(e['history'])} | {' '.join(e['top'])} |"
              for e in recommended["examples"]]
    return "\n".join(lines) + "\n"


def run_link(tracking_uri: str, run_id: str) -> str:
    """A browser link to the run: direct for an HTTP tracking server, otherwise the command
    that serves the store and the page to open."""
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    page = f"#/experiments/{experiment}/runs/{run_id}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}"
    return (f"`mlflow ui --backend-store-uri {tracking_uri}`, then "
            f"http://127.0.0.1:5000/{page}")


@flow(name="seqrec", flow_run_name="{model}-{dataset}", log_prints=True)
def pipeline_flow(dataset: str = "sample", model: str = "score", profile: str = "local",
                  overrides: list[str] | None = None,
                  config_file: str | None = None,
                  models: list[str] | None = None,
                  seeds: list[int] | None = None, wait: bool = False) -> dict[str, Any]:
    """Run every stage for one dataset and model; skip what is unchanged.

    Args:
        dataset: dataset preset (conf/datasets), a dataset YAML file, or the
            ``dataset.name`` that ``config_file`` defines (conf/loading.py).
        model: model preset (conf/models).
        profile: ``local`` or ``cluster`` (conf/profiles).
        overrides: ``key.sub=value`` strings, as ``--set`` on the CLI.
        config_file: an extra YAML file applied before the overrides.
        models: when given, compare these model presets (or variants, ``sasrec:loss=ce``:
            trainers.compare.parse_row) instead of training ``model``:
            the data stages run as usual, then each model is trained and evaluated and one
            comparison table is logged (model.* overrides apply to every row of the first
            row's model); nothing is registered.
        seeds: with ``models``, train each model once per seed (``train.seed``) and give
            means, 95 % intervals and paired tests over users (trainers/compare.py).
        wait: another run holds the work folder's lock (store/lock.py): wait for it; False
            raises ``WorkFolderBusy`` at once.

    Returns:
        {"generate" (only when it ran), "window", "ingest", "index", "train", "evaluate",
        "register", "recommend" (``flow.recommend``)}: each step's result (skipped steps
        say so and why); "window" holds the mode, the overrides it applied and the window's
        start and end. With ``models``, "compare" (trainers.compare.run_comparison's result)
        replaces "train", "evaluate", "register" and "recommend".

    Raises:
        ConfigError: the config does not compose or validate.
        WorkFolderBusy: another live run holds ``paths.work_dir`` and ``wait`` is False.
        Exception: the failing step's own exception, after its retries.
    """
    logger = get_run_logger()
    overrides = list(overrides or [])
    if models:
        from trainers.compare import model_configs, parse_row

        model = parse_row(models[0]).model
        model_configs(load_config(dataset, model, profile, overrides, config_file), models)
    cfg = load_config(dataset, model, profile, overrides, config_file)
    with work_lock(cfg.paths.work_dir, f"seqrec pipeline {model} {dataset}", wait=wait,
                   stale_hours=cfg.flow.lock_stale_hours, log=logger.info):
        return _stages(cfg, dataset, model, profile, overrides, config_file, models, seeds)


def _stages(cfg: PipelineConfig, dataset: str, model: str, profile: str,
            overrides: list[str], config_file: str | None, models: list[str] | None,
            seeds: list[int] | None) -> dict[str, Any]:
    """The flow's steps, under the work folder's lock (:func:`pipeline_flow`)."""
    logger = get_run_logger()
    retry = {"retries": cfg.flow.retries, "retry_delay_seconds": cfg.flow.retry_delay_seconds,
             "retry_condition_fn": _retry_condition}
    results: dict[str, Any] = {}

    if cfg.generate.auto:
        from spark_jobs.sample_data import why_generate

        why = why_generate(cfg)
        if why is not None:
            logger.info("generate runs: %s", why)
            results["generate"] = generate_task.with_options(**retry)(cfg)

    with driver_released():  # Spark's JVM ends with the data stages, before training
        moved = window_task.with_options(**retry)(cfg)
        if moved:
            cfg = load_config(dataset, model, profile, overrides + moved, config_file)
        results["window"] = {"mode": cfg.dataset.window, "overrides": moved,
                             "start": _iso(cfg.dataset.start), "end": _iso(cfg.dataset.end)}

        results["ingest"] = ingest_task.with_options(**retry)(cfg)
        results["index"] = index_task.with_options(**retry)(cfg)
    if models:
        results["compare"] = compare_task.with_options(**retry)(
            cfg, list(models), list(seeds) if seeds else None)
        create_markdown_artifact(
            markdown=f"# {cfg.dataset.name}: model comparison\n\n{results['compare']['table']}",
            key=f"{cfg.dataset.name}-compare".lower().replace("_", "-"),
            description=f"test metrics of {', '.join(models)} on {cfg.dataset.name}")
        return results
    trained = train_task.with_options(**retry)(cfg)
    results["train"] = trained
    results["evaluate"] = evaluate_task.with_options(**retry)(cfg, trained)
    results["register"] = register_task.with_options(**retry)(cfg, trained,
                                                              results["evaluate"])
    if cfg.flow.recommend:
        results["recommend"] = recommend_task.with_options(**retry)(cfg)

    create_markdown_artifact(
        markdown=metrics_markdown(cfg, results["evaluate"], trained, results["register"])
        + recommendations_markdown(results.get("recommend")),
        key=f"{cfg.model.name}-{cfg.dataset.name}-metrics".lower().replace("_", "-"),
        description=f"test metrics of {cfg.model.name} on {cfg.dataset.name}",
    )
    return results


def _iso(day: dt.date | None) -> str | None:
    """A window bound as ISO text; None for an unbounded side (Amazon data has no window)."""
    return None if day is None else day.isoformat()
