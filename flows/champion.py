"""MLflow model registry: register each run's best model and move the ``champion`` alias
only when it beats the current champion on the validation selection metric, and the floors
under it: the popularity reference on the same validation lists and, under ``feedback``, a
random scorer (issue 25: a 3-epoch DFAR at validation AUC 0.495 became the first champion).
A version under a floor is registered and tagged with the reason; the alias stays.

The metric is the protocol's (``selection_metric``, trainers/protocols.py): validation MRR under
``slices`` and ``leave_one_out``, validation AUC under ``feedback``; ``run_training`` names
it (``selection_metric``). Every registered version carries its value as the tag
``val_<metric>`` (``val_mrr``, ``val_auc``), so the comparison needs nothing but the registry
(no metric-name conventions of the training run). The decision and both numbers are written
as tags on the new version and on its MLflow run, and returned so the flow can log them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION = "champion"


def metric_tag(metric: str) -> str:
    """The version tag holding a validation metric: ``val_mrr``, ``val_auc``."""
    return f"val_{metric}"


MRR_TAG = metric_tag("mrr")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChampionDecision:
    """Outcome of one registration."""

    name: str  # registered model name
    version: str  # the version just registered
    promoted: bool  # True when the alias now points at ``version``
    candidate_value: float  # validation metric of the new version
    champion_value: float | None  # the previous champion's (None: there was none)
    champion_version: str | None  # the previous champion's version (None: there was none)
    metric: str = "mrr"  # the selection metric compared (mrr, auc)
    below_floor: str | None = None  # why it may not be champion (a floor it does not beat)

    @property
    def message(self) -> str:
        label = f"validation {self.metric.upper()}"
        if self.below_floor is not None:
            return (f"{self.name} v{self.version} registered, '{CHAMPION}' left where it is: "
                    f"{self.below_floor}")
        if self.champion_version is None:
            return (f"{self.name} v{self.version}: first champion "
                    f"({label} {self.candidate_value:.4f})")
        verdict = "promoted to" if self.promoted else "kept out of"
        relation = ">" if self.promoted else "<="
        return (f"{self.name} v{self.version} {verdict} '{CHAMPION}': {label} "
                f"{self.candidate_value:.4f} {relation} champion v{self.champion_version}'s "
                f"{self.champion_value:.4f}")

    def as_dict(self) -> dict:
        return asdict(self) | {"message": self.message}


def current_champion(client: MlflowClient, name: str, metric: str = "mrr"
                     ) -> tuple[str, float] | None:
    """The champion's version and validation ``metric``, or None when no version holds the
    alias.

    Raises:
        ValueError: the aliased version has no ``val_<metric>`` tag (alias set by hand, or a
            champion selected under another protocol's metric).
    """
    tag = metric_tag(metric)
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    if tag not in version.tags:
        raise ValueError(
            f"registered model {name!r} version {version.version} holds the {CHAMPION!r} alias "
            f"but has no {tag!r} tag; set it (client.set_model_version_tag) or delete the "
            "alias so the next run can take over"
        )
    return str(version.version), float(version.tags[tag])


def floor_missed(value: float, metric: str, floors: dict[str, float]) -> str | None:
    """The first floor ``value`` does not strictly beat, as a sentence; None when it beats
    them all."""
    for reference, floor in floors.items():
        if not value > floor:
            return (f"validation {metric.upper()} {value:.4f} <= {reference}'s {floor:.4f} "
                    "on the same lists")
    return None


def register_and_promote(tracking_uri: str, name: str, model_uri: str, run_id: str,
                         value: float, metric: str = "mrr",
                         floors: dict[str, float] | None = None) -> ChampionDecision:
    """Register ``model_uri`` as a new version of ``name``; make it champion if it is better.

    Args:
        tracking_uri: MLflow tracking URI; the registry lives there too. Set as the process's
            tracking URI because ``mlflow.register_model`` (which resolves ``runs:/`` and
            ``models:/`` URIs to logged models) reads the global one.
        name: registered model name (e.g. the deployment name ``score-taobao``).
        model_uri: the logged model (``models:/<id>`` or ``runs:/<run>/<path>``).
        run_id: MLflow run that produced the model; gets the decision tags too.
        value: the model's best validation ``metric`` (the early-stopping metric).
        metric: the protocol's selection metric (``run_training``'s ``selection_metric``).
        floors: reference name -> its validation ``metric`` (``popularity``; ``random``
            under ``feedback``); the candidate must beat each strictly to become champion.

    Returns:
        The decision; the alias moves only on a strict improvement over the champion and
        over every floor.

    Raises:
        ValueError: ``value`` is not a finite number.
    """
    label = f"validation {metric.upper()}"
    if not math.isfinite(value):
        raise ValueError(f"{label} of run {run_id} is {value}; refusing to register it")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    previous = current_champion(client, name, metric)
    tag = metric_tag(metric)
    version = mlflow.register_model(model_uri, name, tags={tag: repr(float(value))})
    below = floor_missed(value, metric, floors or {})
    promoted = below is None and (previous is None or value > previous[1])
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    decision = ChampionDecision(
        name=name, version=str(version.version), promoted=promoted,
        candidate_value=float(value),
        champion_value=None if previous is None else previous[1],
        champion_version=None if previous is None else str(previous[0]), metric=metric,
        below_floor=below,
    )
    tags = {
        "champion_decision": ("promoted" if promoted else "kept" if below is None
                              else "below_floor"),
        **({"champion_floor": below} if below is not None else {}),
        f"candidate_{tag}": repr(decision.candidate_value),
        f"champion_{tag}": "none" if previous is None else repr(previous[1]),
        "champion_version_before": "none" if previous is None else str(previous[0]),
    }
    for key, tag_value in tags.items():
        client.set_model_version_tag(name, version.version, key, tag_value)
        client.set_tag(run_id, f"registry.{key}", tag_value)
    client.set_tag(run_id, "registry.model", f"{name}/{version.version}")
    log.info(decision.message)
    return decision
