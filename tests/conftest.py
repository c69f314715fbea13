"""Shared fixtures. Each test module keeps its own data fixtures; only process-wide
resources (one SparkSession per test session, a module's Ray, torch's thread count) live
here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import small_spark

from conf.loading import load_config


@pytest.fixture(scope="session")
def spark():
    """One real local Spark session for the whole test run (JVM start-up is ~10 s)."""
    from spark_jobs.session import spark_session

    cfg = load_config(overrides=["spark.master=local[2]", "spark.driver_memory=2g",
                                 "spark.shuffle_partitions=4", small_spark.JVM])
    session = spark_session(cfg.spark)
    yield session
    session.stop()


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for a module's training runs, with a run's job environment
    (``trainers.train.ray_job_env``) and the tests' own modules importable by its workers."""
    import ray

    from trainers.train import ray_job_env

    tests = Path(__file__).resolve().parent
    pythonpath = os.pathsep.join([str(tests), str(tests.parent)])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env=ray_job_env(load_config(), pythonpath))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is far faster than two on a shared 2-core box (a
    module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_config(tmp_path):
    """Build a config whose data paths live under this test's tmp_path."""

    def make(dataset: str = "sample", model: str = "score", overrides: list[str] | None = None):
        base = [
            f"paths.raw_dir={tmp_path}/raw",
            f"paths.work_dir={tmp_path}/work",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"tracking.artifact_location={tmp_path}/mlartifacts",
            "spark.master=local[2]",
            "spark.driver_memory=2g",
            "spark.shuffle_partitions=4",
            small_spark.JVM,
        ]
        return load_config(dataset, model, "local", base + list(overrides or []))

    return make
