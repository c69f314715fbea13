"""A training run's directory and its record, ``<work_dir>/train/<run_name>/run.json``.

The directory is Ray Train's run folder (``storage_path=<work_dir>/train``,
``name=<run_name>``): its ``checkpoint_epoch_NNNN/state.pt`` files and ``run.json``, which
says ``status`` (running | finished), the MLflow ``run_id``, the ``resume_key`` the run was
trained under and, when finished, its ``result`` (best checkpoint, epochs, validation
metrics). The trainers write it; the flow and a rerun read it to resume or skip.
"""

from __future__ import annotations

from typing import Any

from conf.schema import PipelineConfig
from store.files import join, read_json, write_json

RUN_FILE = "run.json"
CHECKPOINT_FILE = "state.pt"


def run_dir(cfg: PipelineConfig) -> str:
    """``<work_dir>/train/<run_name>``: Ray checkpoints and ``run.json``."""
    return join(cfg.paths.work_dir, "train", run_name(cfg))


def run_name(cfg: PipelineConfig) -> str:
    """``train.run_name``, or the model's name when unset."""
    return cfg.train.run_name or cfg.model.name


def read_run(cfg: PipelineConfig) -> dict[str, Any] | None:
    """The run record (``run.json``) of this model's run directory, or None."""
    return read_json(join(run_dir(cfg), RUN_FILE))


def write_run(cfg: PipelineConfig, record: dict[str, Any]) -> None:
    """Replace the run record atomically."""
    write_json(join(run_dir(cfg), RUN_FILE), record)
