"""``trainers.train.start_ray`` on its own: the Ray a run starts. Its own module, so no
module-scoped Ray of another test file is up when it runs."""

from __future__ import annotations

import os

import pytest

import tiny_index


@pytest.mark.slow  # starts a local Ray (~10 s)
def test_a_local_ray_runs_its_workers_at_the_configured_niceness(tmp_path):
    """Ray starts workers at nice 15, so any other busy process starves training (measured:
    SCoRe's worker fell from ~4.7k to 160 samples/s beside a nice-0 job); ``start_ray``
    passes ``train.worker_niceness`` (default 0) to the Ray it starts. Its job's processes
    see ``train.health_check_s`` (Ray Train's controller polls its workers that often; Ray's
    own 2 s kept a small run's end waiting) and no preemption watcher (a local Ray has no
    node to drain; the watcher's actor printed an error line at every start)."""
    import ray

    from trainers.train import start_ray

    assert tiny_index.tiny_config(tmp_path).train.worker_niceness == 0
    cfg = tiny_index.tiny_config(tmp_path, ["train.worker_niceness=3",
                                            "train.health_check_s=0.25"])
    assert not ray.is_initialized(), "an earlier test left Ray running in this process"
    assert start_ray(cfg)
    try:
        assert ray.get(ray.remote(lambda: os.nice(0)).remote()) == 3  # Ray's own: 15
        seen = ray.get(ray.remote(lambda: {k: os.environ.get(k) for k in (
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")}).remote())
        assert seen == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
                        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
        assert not start_ray(cfg)  # connected already: nothing started
    finally:
        ray.shutdown()
