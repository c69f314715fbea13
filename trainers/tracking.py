"""MLflow tracking for one training run: params, tags, curves, model, artifacts.

One MLflow run per training run. The driver opens it before training (params = every config
value under a flattened dotted key, tags dataset/model/profile/index hash) and passes its id
to the Ray workers; rank 0 logs per-epoch metrics with ``step=epoch`` through
``MlflowClient`` (no global MLflow state in a worker); the driver logs the best model, the
config YAML and a metric-curve plot when training ends, and evaluation later adds ``test_*``
metrics to the same run. The tracking URI and experiment are always passed explicitly, never
set at import time.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conf.loading import to_yaml
from conf.schema import PipelineConfig
from store.index import index_protocol

_MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts as ``{"a.b.c": "value"}`` strings (MLflow params)."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): str(value)[:_MAX_PARAM_CHARS]}


def client(cfg: PipelineConfig):
    """An ``MlflowClient`` for ``tracking.uri``, whose registry lives there too (created on
    call, not at import). The registry is named explicitly: MLflow otherwise reads
    ``MLFLOW_REGISTRY_URI``, which ``mlflow.set_registry_uri`` exports to every process a
    run starts."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=cfg.tracking.uri, registry_uri=cfg.tracking.uri)


def experiment_id(cfg: PipelineConfig) -> str:
    """Id of ``tracking.experiment``, created with ``tracking.artifact_location`` if missing."""
    mlflow_client = client(cfg)
    experiment = mlflow_client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = cfg.tracking.artifact_location
    if "://" not in location:
        Path(location).mkdir(parents=True, exist_ok=True)
        location = Path(location).resolve().as_uri()
    return mlflow_client.create_experiment(cfg.tracking.experiment, artifact_location=location)


def open_run(cfg: PipelineConfig, index_hash: str, run_id: str | None) -> str:
    """Create the training run (or reopen ``run_id`` when resuming) and log params and tags.

    Args:
        cfg: the composed config; every value becomes a param.
        index_hash: hash of the index manifest the run trains on.
        run_id: an existing run to continue (an interrupted training run), or None.

    Returns:
        The MLflow run id.
    """
    mlflow_client = client(cfg)
    if run_id is not None:
        mlflow_client.update_run(run_id, status="RUNNING")
        return run_id
    tags = {"dataset": cfg.dataset.name, "model": cfg.model.name, "profile": cfg.profile,
            "index_manifest_hash": index_hash, "protocol": index_protocol(cfg.paths.work_dir),
            "mlflow.runName": f"{cfg.dataset.name}-{cfg.model.name}"}
    run = mlflow_client.create_run(experiment_id(cfg), tags=tags)
    from mlflow.entities import Param

    params = [Param(k, v) for k, v in sorted(flatten(cfg.model_dump(mode="json")).items())]
    for start in range(0, len(params), 100):  # log_batch takes at most 100 params
        mlflow_client.log_batch(run.info.run_id, params=params[start:start + 100])
    return run.info.run_id


def metric_name(key: str) -> str:
    """MLflow-safe name: ``valid_hr@10`` -> ``valid_hr_at_10`` (MLflow rejects ``@``)."""
    return key.replace("@", "_at_")


def log_epoch(cfg: PipelineConfig, run_id: str, metrics: dict[str, float], epoch: int) -> None:
    """Per-epoch numeric metrics at ``step=epoch`` (called on rank 0); names via
    :func:`metric_name`."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(metric_name(k), float(v), now, epoch) for k, v in sorted(metrics.items())]
    client(cfg).log_batch(run_id, metrics=batch)


def log_metrics(cfg: PipelineConfig, run_id: str, metrics: dict[str, float]) -> None:
    """Final (step 0) metrics, e.g. ``test_*`` from evaluation."""
    log_epoch(cfg, run_id, metrics, 0)


def set_tags(cfg: PipelineConfig, run_id: str, tags: dict[str, str]) -> None:
    """Tags on the run, e.g. ``stopped_by`` when training ends."""
    mlflow_client = client(cfg)
    for key, value in sorted(tags.items()):
        mlflow_client.set_tag(run_id, key, value)


def metric_history(cfg: PipelineConfig, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric, by step."""
    history = client(cfg).get_metric_history(run_id, metric_name(key))
    return sorted((m.step, m.value) for m in history)


WEIGHTS_FILE = "weights.pt"  # the logged model's weights (state dict, name, params, sizes)
SNAPSHOT_FILE = "snapshot.npz"  # its users' histories and original ids (trainers/snapshot.py)


def log_model(cfg: PipelineConfig, run_id: str, model: torch.nn.Module, sizes: dict[str, int]
              ) -> None:
    """The best model, logged once as ``model``: a pyfunc from code
    (trainers/served_model.py: ``user_id`` in, top-K ``item_id`` out, in the dataset's original
    ids) with two artifacts, ``weights.pt`` (the state dict, model name and module, params
    and data sizes: the one copy of the weights; loaded ``weights_only``) and
    ``snapshot.npz`` (every user's history in the index the model was trained on, with the
    original ids of its users and items).

    Args:
        model: the trained module (CPU, eval mode), an instance of ``cfg.model.name``.
        sizes: the ``DataSizes`` fields the model was built with.
    """
    import mlflow
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    from trainers import served_model
    from trainers.snapshot import save, snapshot_of_index
    from trainers.split_data import declared_inputs

    model = model.cpu().eval()
    required, optional = declared_inputs(type(model))
    snapshot = snapshot_of_index(cfg.paths.work_dir, "slice_sets" in required | optional)
    id_type = "string" if snapshot.string_ids else "long"
    signature = ModelSignature(
        inputs=Schema([ColSpec(id_type, "user_id"), ColSpec("long", "k", required=False)]),
        outputs=Schema([ColSpec(id_type, "user_id"), ColSpec(id_type, "item_id"),
                        ColSpec("long", "rank"), ColSpec("double", "score")]))
    example = pd.DataFrame({"user_id": snapshot.original_ids(
        np.arange(1, min(3, snapshot.num_users + 1)), "users")})
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                    f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]
    mlflow.set_tracking_uri(cfg.tracking.uri)
    pyfunc_log = logging.getLogger("mlflow.pyfunc")  # "Validating input example ...": it is ours
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
            weights, histories = Path(tmp) / WEIGHTS_FILE, Path(tmp) / SNAPSHOT_FILE
            torch.save({"state_dict": model.state_dict(), "name": cfg.model.name,
                        "module": type(model).__module__, "params": dict(cfg.model.params),
                        "sizes": dict(sizes)}, weights)
            save(snapshot, str(histories))
            mlflow.pyfunc.log_model(name="model", python_model=served_model.__file__,
                                    artifacts={"weights": str(weights),
                                               "snapshot": str(histories)},
                                    signature=signature, input_example=example,
                                    pip_requirements=requirements)
    finally:
        pyfunc_log.setLevel(level)


def log_artifacts(cfg: PipelineConfig, run_id: str, history: list[dict[str, float]]) -> None:
    """The composed config YAML and a PNG of the per-epoch curves.

    Args:
        history: one dict per epoch with ``epoch`` and the numeric metrics of that epoch.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    mlflow_client = client(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(to_yaml(cfg))
        mlflow_client.log_artifact(run_id, str(config_path))
        if history:
            epochs = [h["epoch"] for h in history]
            fig, (ax_loss, ax_rank) = plt.subplots(1, 2, figsize=(10, 4))
            ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o")
            ax_loss.set(xlabel="epoch", ylabel="train loss", title="training loss")
            for key in [k for k in history[0] if k.startswith("valid_")]:
                ax_rank.plot(epochs, [h[key] for h in history], marker="o", label=key)
            ax_rank.set(xlabel="epoch", ylabel="metric", title="validation")
            ax_rank.legend()
            fig.tight_layout()
            plot_path = Path(tmp) / "curves.png"
            fig.savefig(plot_path, dpi=100)
            plt.close(fig)
            mlflow_client.log_artifact(run_id, str(plot_path))


def log_text(cfg: PipelineConfig, run_id: str, text: str, name: str) -> None:
    """A text artifact (e.g. the evaluation's markdown table)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text)
        client(cfg).log_artifact(run_id, str(path))


def log_table(cfg: PipelineConfig, run_id: str, columns: dict, name: str) -> None:
    """A Parquet artifact from equal-length columns (lists, numpy arrays or CPU tensors),
    e.g. each test user's metrics."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {k: v.numpy() if hasattr(v, "numpy") else v for k, v in columns.items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        pq.write_table(pa.table(arrays), path)
        client(cfg).log_artifact(run_id, str(path))


def read_table(cfg: PipelineConfig, run_id: str, name: str) -> dict:
    """A Parquet artifact of a run (:func:`log_table`) as column name -> numpy array."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        path = client(cfg).download_artifacts(run_id, name, tmp)
        table = pq.read_table(path)
    return {name: table.column(name).to_numpy() for name in table.column_names}


def finish_run(cfg: PipelineConfig, run_id: str) -> None:
    client(cfg).set_terminated(run_id, status="FINISHED")
