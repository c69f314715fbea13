"""A tracked run's per-epoch curves, as the failure tests compare them with an
uninterrupted run's."""

from __future__ import annotations

from mlflow import MlflowClient


def epoch_curves(uri: str, run_id: str,
                 keys: tuple[str, ...] | None = None) -> dict[str, dict[int, float]]:
    """{key: {epoch: value}} of ``keys`` (default: ``train_loss`` and every ``valid_*``
    metric). An epoch logged twice, before a kill and again after the resume, must log the
    same value."""
    client = MlflowClient(uri)
    if keys is None:
        keys = tuple(k for k in client.get_run(run_id).data.metrics
                     if k == "train_loss" or k.startswith("valid_"))
    out: dict[str, dict[int, float]] = {}
    for key in keys:
        values: dict[int, set[float]] = {}
        for m in client.get_metric_history(run_id, key):
            values.setdefault(m.step, set()).add(m.value)
        assert all(len(v) == 1 for v in values.values()), (key, values)
        out[key] = {step: v.pop() for step, v in values.items()}
    return out
