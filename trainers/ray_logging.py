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
"""

from __future__ import annotations

import logging
import os

QUIET_LOGGERS = {
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
}


def quiet_worker_logs() -> None:
    """``runtime_env["worker_process_setup_hook"]``: run once in every Ray worker process,
    after it connects and before it imports an actor's module (the logger's level then holds
    from its creation)."""
    import importlib.util

    import ray

    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    # "Reporting training result N: TrainingReport(<every metric>)" once an epoch: Ray Train
    # names this logger by its file's path, outside RunConfig's LoggingConfig
    spec = importlib.util.find_spec("ray.train.v2._internal.execution.context")
    if spec is not None and spec.origin:
        logging.getLogger(spec.origin).setLevel(logging.WARNING)
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
