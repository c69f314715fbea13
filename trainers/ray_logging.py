"""Quiet Ray workers for a training run: no once-a-second warning from Ray Train's cleaner,
no per-epoch report line.

Ray Train's ``PlacementGroupCleaner`` (a detached actor that removes the run's placement
group should the controller die) asks Ray's State API once a second whether the controller
is alive. The State API is served by the dashboard, which the local Ray of ``start_ray``
does not start (``include_dashboard=False``: one process less on a small box), so every
question fails with a warning: one line a second for the whole run (221 lines on a first
run of the sample), burying the stage and per-epoch lines. A failed question changes
nothing (the cleaner keeps watching; the controller removes its group itself on a normal
exit), so that one logger is raised to ERROR in every Ray worker process of the job.

The cleaner finds the cluster to ask through ``RAY_ADDRESS``; unset, it looks for running
clusters, and with a second Ray on the machine (another run, a test session) it cannot pick
one and its thread dies with a 30-line traceback. Each worker therefore names its own
cluster (the GCS address it is connected to).

On a busy machine (more runs than cores) the controller's request to Ray Train's autoscaling
coordinator can miss its 5-second timeout; Ray then logs that this is safe to ignore when
transient, with a 20-line traceback of the timeout each time. That logger keeps its line and
loses the traceback (``ONE_LINE_LOGGERS``), so a persistent failure still shows.
"""

from __future__ import annotations

import logging
import os

QUIET_LOGGERS = {
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
}

ONE_LINE_LOGGERS = (
    "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client",
)


class DropTraceback(logging.Filter):
    """Passes every record without its traceback (the message stays)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = record.exc_text = None
        return True


def quiet_loggers() -> None:
    """Raise ``QUIET_LOGGERS`` to their levels; ``ONE_LINE_LOGGERS`` drop tracebacks (once
    per process, however often called)."""
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for name in ONE_LINE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropTraceback) for f in logger.filters):
            logger.addFilter(DropTraceback())


def quiet_worker_logs() -> None:
    """``runtime_env["worker_process_setup_hook"]``: run once in every Ray worker process,
    after it connects and before it imports an actor's module (the logger's level then holds
    from its creation)."""
    import importlib.util

    import ray

    quiet_loggers()
    # "Reporting training result N: TrainingReport(<every metric>)" once an epoch: Ray Train
    # names this logger by its file's path, outside RunConfig's LoggingConfig
    spec = importlib.util.find_spec("ray.train.v2._internal.execution.context")
    if spec is not None and spec.origin:
        logging.getLogger(spec.origin).setLevel(logging.WARNING)
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
