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
    passes ``train.worker_niceness`` (default 0) to the Ray it starts."""
    import ray

    from trainers.train import start_ray

    assert tiny_index.tiny_config(tmp_path).train.worker_niceness == 0
    cfg = tiny_index.tiny_config(tmp_path, ["train.worker_niceness=3"])
    assert not ray.is_initialized(), "an earlier test left Ray running in this process"
    assert start_ray(cfg)
    try:
        assert ray.get(ray.remote(lambda: os.nice(0)).remote()) == 3  # Ray's own: 15
        assert not start_ray(cfg)  # connected already: nothing started
    finally:
        ray.shutdown()
