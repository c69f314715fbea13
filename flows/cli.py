"""The ``seqrec`` command: one subcommand per stage, each a thin wrapper over the stage
function that the Prefect flow also calls (flows/pipeline.py).

Every subcommand takes the same config options: ``--dataset``, ``--model``, ``--profile``,
``--config FILE`` and repeated ``--set key.sub=value`` overrides.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console

from conf.loading import ConfigError, load_config
from conf.schema import PipelineConfig

app = typer.Typer(help="Sequential recommendation pipeline: Spark indices, Ray training, MLflow.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()
errors = Console(stderr=True)  # failures go to stderr, results to stdout

DatasetOpt = Annotated[str, typer.Option(
    "--dataset", "-d", help="dataset preset in conf/datasets, a dataset YAML file, or the "
                            "dataset.name that the --config file defines")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="model preset in conf/models")]
SeedsOpt = Annotated[str | None, typer.Option(
    "--seeds", help="comma-separated train.seed values: every run once per seed; means ± "
    "95 % intervals (compare: and paired tests over users)")]
ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="local or cluster")]
ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="extra YAML file")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override key.sub=value")]
JsonOpt = Annotated[bool, typer.Option(
    "--json", help="print the whole result as JSON (default: a short summary)")]
WaitOpt = Annotated[bool, typer.Option(
    "--wait", help="another run holds the work folder: wait for it (default: exit 75 at once)")]


def _config(dataset: str, model: str, profile: str, config: str | None,
            overrides: list[str] | None) -> PipelineConfig:
    try:
        return load_config(dataset, model, profile, overrides or [], config)
    except ConfigError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None


def _error(text: str) -> None:
    """``text`` in red on stderr, as given: no wrapping (one line stays one line), no markup."""
    errors.print(text, style="red", soft_wrap=True, markup=False, highlight=False)


def _show(result: object, as_json: bool = True, command: str = "",
          cfg: PipelineConfig | None = None) -> None:
    """The result as JSON (``--json``), else a few readable lines (:func:`summary`)."""
    if as_json:
        console.print_json(json.dumps(result, default=str))
    else:
        console.print(summary(command, result, cfg.tracking.uri if cfg else ""),
                      soft_wrap=True, markup=False, highlight=False)


def summary(command: str, result: dict, tracking_uri: str = "") -> str:
    """What a person reads after a command: each step ran or skipped and why, the test
    metrics beside popularity, the champion decision, where the outputs are."""
    if command in ("pipeline", "compare"):
        lines = [_step_line(step, value) for step, value in result.items()
                 if isinstance(value, dict) and "skipped" in value]
        for step in ("compare", "evaluate"):
            if step in result and "table" in result[step]:
                lines += ["", result[step]["table"].rstrip()]
        if "register" in result:
            lines.append(f"champion: {result['register'].get('message', '')}")
        if tracking_uri and "train" in result and result["train"].get("run_id"):
            from flows.pipeline import run_link

            lines.append(f"MLflow run: {run_link(tracking_uri, result['train']['run_id'])}")
        return "\n".join(lines)
    if "table" in result:  # evaluate, tune: the metrics table (and the sweep's parent run)
        run = f"\nMLflow parent run: {result['run_id']}" if command == "tune" else ""
        return result["table"].rstrip() + run
    if command == "train":
        metric = result["selection_metric"]
        return (f"train {'skipped' if result['skipped'] else 'done'}: run {result['run_id']}, "
                f"best epoch {result['best_epoch']} (valid {metric} "
                f"{result['valid'][metric]:.4f}), {result['stopped_by']}; "
                f"checkpoint {result['checkpoint']}")
    return _step_line(command, result)


def _step_line(step: str, value: dict) -> str:
    if "skipped" not in value:  # generate: what it wrote
        files = ", ".join(map(str, value.get("files", [])))
        return f"{step}: {value.get('rows', 0):,} rows -> {files}"
    where = f" -> {value['uri']}" if value.get("uri") else ""
    verb = "skipped" if value["skipped"] else "ran"
    return f"{step}: {verb} ({value.get('reason', '')}){where}"


def _run(stage, cfg: PipelineConfig, command: str, as_json: bool = True) -> None:
    """Run a stage under the work folder's lock and print its result; a work folder another
    run holds, one line and exit code 75."""
    with _one_line_failures(cfg, command), _held(cfg, command, wait=False):
        result = stage(cfg)
    _show(result, as_json, command, cfg)


@contextmanager
def _one_line_failures(cfg: PipelineConfig, command: str):
    """Any failure is one line on stderr and exit code 1: bad input (a wrong-format or
    corrupt file, a missing path, no Java) says what to do; the full trace goes to
    ``<work>/logs/<command>-<time>.log`` (store/logs.py), which the line names (Spark's JVM
    logs go to ``spark-<time>.log`` beside it). SEQREC_DEBUG=1 raises instead."""
    import traceback

    from store.logs import log_file

    try:
        yield
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - every failure: one line, the trace to a file
        if os.environ.get("SEQREC_DEBUG"):
            raise
        path = log_file(cfg.paths.work_dir, command.split()[0])
        path.write_text("".join(traceback.format_exception(exc)))
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _error(f"{type(exc).__name__}: {first} (full trace: {path})")
        raise typer.Exit(1) from None


@contextmanager
def _held(cfg: PipelineConfig, command: str, wait: bool):
    """The work folder's lock for a command (store/lock.py; the flow's own lock inside is
    re-entrant); another live run's lock: one line naming it and exit code 75, or with
    ``wait`` one line and a wait."""
    from store.lock import EXIT_BUSY, WorkFolderBusy, work_lock

    try:
        with work_lock(cfg.paths.work_dir, f"seqrec {command}", wait=wait,
                       stale_hours=cfg.flow.lock_stale_hours,
                       log=lambda line: console.print(line)):
            yield
    except WorkFolderBusy as exc:
        _error(f"WorkFolderBusy: {exc}")
        raise typer.Exit(EXIT_BUSY) from None


@app.command()
def generate(dataset: DatasetOpt = "sample", model: ModelOpt = "score",
             profile: ProfileOpt = "local", config: ConfigOpt = None,
             set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Write a synthetic sample in the dataset's public raw format to paths.raw_dir."""
    cfg = _config(dataset, model, profile, config, set_)
    from spark_jobs.sample_data import generate as run

    _run(run, cfg, "generate", json_)


@app.command()
def ingest(dataset: DatasetOpt = "sample", model: ModelOpt = "score",
           profile: ProfileOpt = "local", config: ConfigOpt = None,
           set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Spark: raw files -> canonical interactions, id maps, quarantine, manifest."""
    cfg = _config(dataset, model, profile, config, set_)
    from spark_jobs.ingest import run_ingest

    _run(run_ingest, cfg, "ingest", json_)


@app.command()
def index(dataset: DatasetOpt = "sample", model: ModelOpt = "score",
          profile: ProfileOpt = "local", config: ConfigOpt = None,
          set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Spark: interactions -> time-sliced (co-)interaction sets, sequences, samples."""
    cfg = _config(dataset, model, profile, config, set_)
    from spark_jobs.index import run_index

    _run(run_index, cfg, "index", json_)


@app.command()
def train(dataset: DatasetOpt = "sample", model: ModelOpt = "score",
          profile: ProfileOpt = "local", config: ConfigOpt = None,
          set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Ray Train: fit the model, early-stop on validation MRR, log to MLflow."""
    cfg = _config(dataset, model, profile, config, set_)
    from trainers.train import run_training

    _run(run_training, cfg, "train", json_)


@app.command()
def evaluate(dataset: DatasetOpt = "sample", model: ModelOpt = "score",
             profile: ProfileOpt = "local", config: ConfigOpt = None,
             set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Score the test lists with the best checkpoint; metrics next to popularity, to MLflow."""
    cfg = _config(dataset, model, profile, config, set_)
    from trainers.evaluate import run_evaluation

    _run(run_evaluation, cfg, "evaluate", json_)


@app.command()
def recommend(dataset: DatasetOpt = "sample", model: ModelOpt = "score",
              profile: ProfileOpt = "local", config: ConfigOpt = None, set_: SetOpt = None,
              version: Annotated[int | None, typer.Option(
                  "--version", help="registered version (default: the champion)")] = None,
              json_: JsonOpt = False,
              users: Annotated[str | None, typer.Option(
                  "--users", help="file of original user ids, one per line (default: every "
                  "user of the index)")] = None,
              name: Annotated[str | None, typer.Option(
                  "--name", help="registered model (default: <model>-<dataset>, or "
                  "tracking.registered_model)")] = None) -> None:
    """Top-K items per user from the registered champion, in the dataset's original ids."""
    cfg = _config(dataset, model, profile, config, set_)
    from flows.pipeline import registered_name
    from trainers.recommend import run_recommend

    _run(lambda c: run_recommend(c, name or registered_name(c), version, users), cfg,
         "recommend", json_)


@app.command()
def pipeline(dataset: DatasetOpt = "sample", model: ModelOpt = "score",
             profile: ProfileOpt = "local", config: ConfigOpt = None,
             set_: SetOpt = None, wait: WaitOpt = False, json_: JsonOpt = False) -> None:
    """Run the whole Prefect flow in-process (local mode, no server needed)."""
    cfg = _config(dataset, model, profile, config, set_)  # fail fast, before Prefect starts
    _prefect_defaults()
    from flows.pipeline import pipeline_flow

    _console_without_tracebacks()
    with _one_line_failures(cfg, "pipeline"), _held(cfg, f"pipeline {model} {dataset}", wait):
        result = pipeline_flow(dataset=dataset, model=model, profile=profile,
                               overrides=set_ or [], config_file=config)
    _show(result, json_, "pipeline", cfg)


@app.command()
def compare(dataset: DatasetOpt = "sample",
            models: Annotated[str, typer.Option(
                "--models", help="comma-separated model presets, in table order; a "
                "preset's variant as name:key=value (sasrec:loss=ce, gru4rec:train.lr=0.001)")] = (
                "score,svdpp,delf,gru4rec,caser,sasrec,rrn,deems"),
            profile: ProfileOpt = "local", config: ConfigOpt = None,
            set_: SetOpt = None, seeds: SeedsOpt = None, wait: WaitOpt = False,
            json_: JsonOpt = False) -> None:
    """The Prefect flow with its ``models`` parameter: (generate,) ingest and index as in
    ``pipeline``, then train and evaluate each model; one parent MLflow run with a table, CSV
    and bar chart (SCoRe Table 3). model.* overrides apply to every row of the first row's model."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    seed_list = _seeds(seeds)
    from trainers.compare import model_configs, parse_row

    try:
        first = parse_row(names[0]).model if names else "score"
    except ValueError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    cfg = _config(dataset, first, profile, config, set_)

    try:
        model_configs(cfg, names)  # unknown, repeated or preset-less models: fail up front
    except (ConfigError, KeyError, ValueError) as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    _prefect_defaults()
    from flows.pipeline import pipeline_flow

    _console_without_tracebacks()
    with _one_line_failures(cfg, "compare"), _held(cfg, f"compare {models} {dataset}", wait):
        result = pipeline_flow(dataset=dataset, model=first, profile=profile,
                               overrides=set_ or [], config_file=config, models=names,
                               seeds=seed_list)
    if json_:
        result["compare"] = {k: v for k, v in result["compare"].items() if k != "csv"}
    _show(result, json_, "compare", cfg)


@app.command()
def tune(dataset: DatasetOpt = "sample-feedback", model: ModelOpt = "dfar",
         profile: ProfileOpt = "local", config: ConfigOpt = None,
         set_: SetOpt = None, seeds: SeedsOpt = None, json_: JsonOpt = False) -> None:
    """Ray Tune sweep of ``sweep.space`` (the model preset's grid; DFAR: Appendix A.4's loss
    weights, one at a time): (generate,) ingest and index when stale, then one train +
    evaluate run per trial; one parent MLflow run with nested trials, a table and a plot of
    ``sweep.metric`` against each swept setting. With ``--seeds``, every trial once per
    seed, each row the mean ± 95 % half-width over them."""
    cfg = _config(dataset, model, profile, config, set_)
    seed_list = _seeds(seeds)
    from trainers.sweep import run_sweep, trial_config, trials

    try:  # an empty or bad space fails before any stage runs
        for overrides in trials(cfg.sweep.space, cfg.sweep.mode):
            trial_config(cfg, overrides)
    except (ConfigError, ValueError) as exc:
        _error(str(exc))
        raise typer.Exit(2) from None

    def stages(cfg: PipelineConfig) -> dict:
        from spark_jobs.index import run_index
        from spark_jobs.ingest import run_ingest
        from spark_jobs.sample_data import generate as run_generate
        from spark_jobs.sample_data import why_generate

        if cfg.generate.auto and why_generate(cfg) is not None:
            run_generate(cfg)
        run_ingest(cfg)
        run_index(cfg)
        result = run_sweep(cfg, seed_list)  # the summary prints its table; --json all but CSV
        return {k: v for k, v in result.items() if k != "csv"}

    _run(stages, cfg, "tune", json_)


def _seeds(text: str | None) -> list[int] | None:
    """``--seeds 1,2,3`` as a list of ints (None without the option); a bad list exits 2."""
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        _error(f"--seeds takes comma-separated integers, got {text!r}")
        raise typer.Exit(2) from None


class _WithoutTraceback(logging.Formatter):
    """Formats a record as ``inner`` does, without its traceback (the CLI writes the whole
    trace to ``<work>/logs``, :func:`_one_line_failures`)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _console_without_tracebacks() -> None:
    """Prefect's console lines say that a task failed and why, in one line each."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and handler.formatter is not None \
                and not isinstance(handler.formatter, _WithoutTraceback):
            handler.setFormatter(_WithoutTraceback(handler.formatter))


def _prefect_defaults() -> None:
    """Before Prefect is imported (it reads its settings then): no telemetry from the
    ephemeral server, and the stages' own log lines in the flow run's log. Runs keep
    Prefect's home (~/.prefect, or PREFECT_HOME), so a later `prefect server start` shows them."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "spark_jobs,trainers,flows")
    # The ephemeral API's first start migrates a new database: 20 s is not enough on a
    # busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


@app.command()
def deploy(models: Annotated[str | None, typer.Option(
               "--models", help="comma-separated: deploy only these models' deployments "
                                "(default: all)")] = None,
           profile: ProfileOpt = "local", config: ConfigOpt = None,
           set_: SetOpt = None,
           schedule: Annotated[bool, typer.Option(
               "--schedule/--no-schedule",
               help="activate each deployment's retraining cron (flow.schedule_cron)")] = False,
           ) -> None:
    """Create or update the deployments <model>-<dataset> of the flow seqrec (score-sample,
    score-taobao, score-tmall, score-ccmr, dualrec-beauty, dualrec-sports, dualrec-toys,
    dualrec-yelp, dualrec-sample, dfar-toys-feedback, dfar-movielens, dfar-sample) on the work
    pool flow.work_pool (needs PREFECT_API_URL)."""
    _prefect_defaults()
    from flows.deployments import deploy_all

    overrides = list(set_ or []) + (["flow.schedule_active=true"] if schedule else [])
    chosen = [m.strip() for m in models.split(",") if m.strip()] if models else None
    try:
        _show(deploy_all(profile, chosen, overrides=overrides, config_file=config))
    except (ConfigError, RuntimeError) as exc:
        _error(str(exc))
        raise typer.Exit(2) from None


@app.command("run-deployment")
def run_deployment(
    name: Annotated[str, typer.Argument(
        help="deployment, e.g. score-taobao, dualrec-beauty or seqrec/dfar-sample")],
    set_: SetOpt = None,
    models: Annotated[str | None, typer.Option(
        "--models", help="comma-separated model presets: compare them instead of training "
                         "the deployment's model")] = None,
    timeout: Annotated[float | None, typer.Option(
        help="seconds to wait for the run (default: until it ends; 0: do not wait)")] = None,
) -> None:
    """Run a deployment by name and wait for it; a worker must poll its work pool."""
    _prefect_defaults()
    from flows.deployments import run_by_name

    parameters: dict = {"overrides": list(set_)} if set_ else {}
    if models:
        parameters["models"] = [m.strip() for m in models.split(",") if m.strip()]
    try:
        result = run_by_name(name, parameters or None, timeout)
    except RuntimeError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    _show(result)
    if result["state"] not in ("COMPLETED", "SCHEDULED", "PENDING", "RUNNING"):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
