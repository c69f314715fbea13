"""The flow's own skip rule for evaluate and register: ``<work_dir>/flow/<model>/state.json``.

Spark stages skip themselves through their manifests (store/manifest.py) and training
through its run record (store/runs.py). Evaluation and registration write to MLflow,
not to a stage folder, so the flow records for each the key it ran under (``input_hash``:
the identity of the train run and checkpoint it consumed; ``config_hash``: the config
sections that shape the result) and the step's result. A rerun with the same key returns
the recorded result instead of running again; anything else (a new training run, a changed
``train.lr``, another tracking store) runs the step.
"""

from __future__ import annotations

import hashlib

from conf.loading import section_hash
from conf.schema import PipelineConfig
from store.files import join, read_json, write_json

# Sections that change what evaluation reports. ``tracking`` is in because a result recorded
# against another MLflow store names a run that this store does not have.
SECTIONS = ("dataset", "index", "model", "train", "tracking")


def state_uri(cfg: PipelineConfig) -> str:
    return join(cfg.paths.work_dir, "flow", cfg.model.name, "state.json")


def step_key(cfg: PipelineConfig, step: str, upstream: str,
             sections: tuple[str, ...] = SECTIONS) -> dict[str, str]:
    """The key a step runs under.

    Args:
        cfg: the composed config.
        step: ``evaluate`` or ``register``.
        upstream: identity of what the step consumes (train run id, epoch, checkpoint).
        sections: config sections whose change reruns the step.

    Returns:
        {"input_hash", "config_hash"}.
    """
    input_hash = hashlib.sha256(f"{step}:{upstream}".encode()).hexdigest()[:16]
    return {"input_hash": input_hash, "config_hash": section_hash(cfg, *sections)}


def lookup(cfg: PipelineConfig, step: str, key: dict[str, str]) -> tuple[dict | None, str]:
    """The recorded result of ``step`` if it last ran under ``key``.

    Returns:
        (result or None, why it must run: "no previous result", "input changed",
        "config changed"; empty when the result is reused).
    """
    entry = (read_json(state_uri(cfg)) or {}).get(step)
    if entry is None:
        return None, "no previous result"
    if entry["key"]["input_hash"] != key["input_hash"]:
        return None, "input changed"
    if entry["key"]["config_hash"] != key["config_hash"]:
        return None, "config changed"
    return entry["result"], ""


def record(cfg: PipelineConfig, step: str, key: dict[str, str], result: dict) -> None:
    """Remember that ``step`` ran under ``key`` with ``result``."""
    current = read_json(state_uri(cfg)) or {}
    current[step] = {"key": key, "result": result}
    write_json(state_uri(cfg), current)
