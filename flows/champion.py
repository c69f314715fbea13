"""MLflow model registry: register each run's best model and move the ``champion`` alias
only when it beats the current champion on validation MRR.

Every registered version carries its validation MRR as the tag ``val_mrr``, so the
comparison needs nothing but the registry (no metric-name conventions of the training run).
The decision and both numbers are written as tags on the new version and on its MLflow run,
and returned so the flow can log them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION = "champion"
MRR_TAG = "val_mrr"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChampionDecision:
    """Outcome of one registration."""

    name: str  # registered model name
    version: str  # the version just registered
    promoted: bool  # True when the alias now points at ``version``
    candidate_mrr: float  # validation MRR of the new version
    champion_mrr: float | None  # the previous champion's validation MRR (None: there was none)
    champion_version: str | None  # the previous champion's version (None: there was none)

    @property
    def message(self) -> str:
        if self.champion_version is None:
            return (f"{self.name} v{self.version}: first champion "
                    f"(validation MRR {self.candidate_mrr:.4f})")
        verdict = "promoted to" if self.promoted else "kept out of"
        relation = ">" if self.promoted else "<="
        return (f"{self.name} v{self.version} {verdict} '{CHAMPION}': validation MRR "
                f"{self.candidate_mrr:.4f} {relation} champion v{self.champion_version}'s "
                f"{self.champion_mrr:.4f}")

    def as_dict(self) -> dict:
        return asdict(self) | {"message": self.message}


def current_champion(client: MlflowClient, name: str) -> tuple[str, float] | None:
    """The champion's version and validation MRR, or None when no version holds the alias.

    Raises:
        ValueError: the aliased version has no ``val_mrr`` tag (alias set by hand).
    """
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    if MRR_TAG not in version.tags:
        raise ValueError(
            f"registered model {name!r} version {version.version} holds the {CHAMPION!r} alias "
            f"but has no {MRR_TAG!r} tag; set it (client.set_model_version_tag) or delete the "
            "alias so the next run can take over"
        )
    return str(version.version), float(version.tags[MRR_TAG])


def register_and_promote(tracking_uri: str, name: str, model_uri: str, run_id: str,
                         val_mrr: float) -> ChampionDecision:
    """Register ``model_uri`` as a new version of ``name``; make it champion if it is better.

    Args:
        tracking_uri: MLflow tracking URI; the registry lives there too. Set as the process's
            tracking URI because ``mlflow.register_model`` (which resolves ``runs:/`` and
            ``models:/`` URIs to logged models) reads the global one.
        name: registered model name (e.g. the deployment name ``score-taobao``).
        model_uri: the logged model (``models:/<id>`` or ``runs:/<run>/<path>``).
        run_id: MLflow run that produced the model; gets the decision tags too.
        val_mrr: the model's best validation MRR (the early-stopping metric).

    Returns:
        The decision; the alias moves only on a strict improvement.

    Raises:
        ValueError: ``val_mrr`` is not a finite number.
    """
    if not math.isfinite(val_mrr):
        raise ValueError(f"validation MRR of run {run_id} is {val_mrr}; refusing to register it")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    previous = current_champion(client, name)
    version = mlflow.register_model(model_uri, name, tags={MRR_TAG: repr(float(val_mrr))})
    promoted = previous is None or val_mrr > previous[1]
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    decision = ChampionDecision(
        name=name, version=str(version.version), promoted=promoted,
        candidate_mrr=float(val_mrr),
        champion_mrr=None if previous is None else previous[1],
        champion_version=None if previous is None else str(previous[0]),
    )
    tags = {
        "champion_decision": "promoted" if promoted else "kept",
        "candidate_val_mrr": repr(decision.candidate_mrr),
        "champion_val_mrr": "none" if previous is None else repr(previous[1]),
        "champion_version_before": "none" if previous is None else str(previous[0]),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
        client.set_tag(run_id, f"registry.{key}", value)
    client.set_tag(run_id, "registry.model", f"{name}/{version.version}")
    log.info(decision.message)
    return decision
