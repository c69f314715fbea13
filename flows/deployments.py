"""The deployments of the one flow ``seqrec`` (flows/pipeline.py), named ``<model>-<dataset>``:
a paper's model on each of its datasets (:data:`DEPLOYMENTS`). SCoRe: ``score-sample``,
``score-taobao``, ``score-tmall``, ``score-ccmr``; DualRec (leave-one-out): ``dualrec-beauty``,
``dualrec-sports``, ``dualrec-toys``, ``dualrec-yelp``, ``dualrec-sample`` (the generated
``sample-loo``); DFAR (feedback): ``dfar-toys-feedback``, ``dfar-movielens``, ``dfar-sample``
(the generated ``sample-feedback``).

``seqrec deploy`` registers them with the Prefect API in ``PREFECT_API_URL`` on the process
work pool ``flow.work_pool`` (created when missing). The code source is this repository's
folder: a process worker started anywhere that folder exists (``prefect worker start --pool
seqrec-process``) runs the flow from it. Each deployment carries its preset's retraining
schedule (``flow.schedule_cron`` in the dataset's timezone), registered inactive unless
``flow.schedule_active`` is true (``seqrec deploy --schedule``).

Run one with ``prefect deployment run 'seqrec/score-taobao'`` or ``seqrec run-deployment
score-taobao``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from conf.loading import ConfigError, load_config

REPO_DIR = Path(__file__).resolve().parent.parent
ENTRYPOINT = "flows/pipeline.py:pipeline_flow"
FLOW_NAME = "seqrec"  # @flow(name=...) in flows/pipeline.py
# deployment name -> (model preset, dataset preset). The generated samples' deployments are
# named after the model's paper sample, not the preset (dualrec-sample, not dualrec-sample-loo).
DEPLOYMENTS: dict[str, tuple[str, str]] = {
    "score-sample": ("score", "sample"),
    "score-taobao": ("score", "taobao"),
    "score-tmall": ("score", "tmall"),
    "score-ccmr": ("score", "ccmr"),
    "dualrec-beauty": ("dualrec", "beauty"),
    "dualrec-sports": ("dualrec", "sports"),
    "dualrec-toys": ("dualrec", "toys"),
    "dualrec-yelp": ("dualrec", "yelp"),
    "dualrec-sample": ("dualrec", "sample-loo"),
    "dfar-toys-feedback": ("dfar", "toys-feedback"),
    "dfar-movielens": ("dfar", "movielens"),
    "dfar-sample": ("dfar", "sample-feedback"),
}

log = logging.getLogger(__name__)


def full_name(name: str) -> str:
    """``seqrec/<name>`` as ``prefect deployment run`` wants it; a full name passes through."""
    return name if "/" in name else f"{FLOW_NAME}/{name}"


def require_api() -> str:
    """The Prefect API URL deployments live on.

    Raises:
        RuntimeError: PREFECT_API_URL is not set (without a server a deployment would be
            written to a throw-away ephemeral database that no worker reads).
    """
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise RuntimeError(
            "PREFECT_API_URL is not set: start a server (`prefect server start`) and "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`, or point it at your server"
        )
    return url


def ensure_work_pool(name: str) -> None:
    """Create the process work pool ``name`` unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            log.info("created process work pool %s", name)
        except ObjectAlreadyExists:
            log.info("process work pool %s already exists", name)


def deploy_all(profile: str = "local", models: list[str] | None = None,
               overrides: list[str] | None = None,
               config_file: str | None = None) -> dict[str, str]:
    """Create or update the deployments of :data:`DEPLOYMENTS`.

    Args:
        profile: ``local`` or ``cluster``: the profile the runs use.
        models: deploy only these models' deployments; None: all of them.
        overrides: ``key=value`` strings; they set the schedule (``flow.*``) here and travel
            with each deployment as its ``overrides`` parameter.
        config_file: an extra YAML file, read here and passed to the runs by path.

    Returns:
        {full deployment name: deployment id}.

    Raises:
        RuntimeError: no Prefect API configured.
        ConfigError: a model outside the table, or a preset that does not compose with the
            overrides (checked for every deployment before any is created).
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.schedules import Cron

    from flows.pipeline import pipeline_flow

    require_api()
    overrides = list(overrides or [])
    known = sorted({model for model, _ in DEPLOYMENTS.values()})
    unknown = sorted(set(models or []) - set(known))
    if unknown:
        raise ConfigError(f"no deployments for model(s) {', '.join(unknown)}; "
                          f"deployed models: {', '.join(known)}")
    chosen = {name: pair for name, pair in DEPLOYMENTS.items()
              if models is None or pair[0] in models}
    configs = {name: load_config(dataset, model, profile, overrides, config_file)
               for name, (model, dataset) in chosen.items()}
    source = pipeline_flow.from_source(source=str(REPO_DIR), entrypoint=ENTRYPOINT)
    created: dict[str, str] = {}
    for name, (model, dataset) in chosen.items():
        cfg = configs[name]
        ensure_work_pool(cfg.flow.work_pool)
        schedules = []
        if cfg.flow.schedule_cron:
            schedules.append(Cron(cfg.flow.schedule_cron, timezone=cfg.dataset.timezone,
                                  active=cfg.flow.schedule_active))
        # wait: a run that finds a CLI run in its work folder waits for it (store/lock.py)
        parameters: dict[str, Any] = {"dataset": dataset, "model": model, "profile": profile,
                                      "overrides": overrides, "config_file": config_file,
                                      "wait": True}
        deployment_id = source.deploy(
            name=name, work_pool_name=cfg.flow.work_pool, parameters=parameters,
            schedules=schedules, build=False, push=False, print_next_steps=False,
            # one run at a time: a scheduled run never starts beside a manual one (issue 25)
            concurrency_limit=ConcurrencyLimitConfig(
                limit=cfg.flow.concurrency_limit,
                collision_strategy=cfg.flow.collision_strategy),
            tags=[model, dataset, cfg.index.protocol, profile],
            description=f"{model} on the {dataset} preset ({cfg.index.protocol} protocol, "
                        f"{profile} profile)",
        )
        created[full_name(name)] = str(deployment_id)
        log.info("deployed %s (schedule %s, %s)", full_name(name), cfg.flow.schedule_cron,
                 "active" if cfg.flow.schedule_active else "inactive")
    return created


def run_by_name(name: str, parameters: dict[str, Any] | None = None,
                timeout: float | None = None) -> dict[str, Any]:
    """Start a deployment's flow run and wait for it (a worker must be polling its pool).

    Args:
        name: ``score-taobao`` or ``seqrec/score-taobao``.
        parameters: parameter values that replace the deployment's defaults.
        timeout: seconds to wait; None waits until the run ends, 0 returns at once.

    Returns:
        {"flow_run_id", "name", "state"}.

    Raises:
        RuntimeError: no Prefect API configured.
    """
    from prefect.deployments import run_deployment

    require_api()
    flow_run = run_deployment(full_name(name), parameters=parameters or {}, timeout=timeout)
    return {"flow_run_id": str(flow_run.id), "name": flow_run.name,
            "state": flow_run.state.type.value if flow_run.state else None}

