"""Cluster mode on a cluster of one: Spark standalone master + worker, a Ray head, an MLflow
server and a Prefect server with a process worker, all on 127.0.0.1; the `score-sample`
deployment runs against them with the `cluster` profile, then everything stops by PID."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import small_spark
from mlflow.tracking import MlflowClient

from flows import cluster

TINY = ["generate.rows=20000", "generate.users=300", "generate.items=600",
        "index.eval_negatives=19", "train.epochs=2", "train.full_rank_users=20",
        "flow.champion_floor=false",  # 2 tiny epochs: the registry's mechanics, not a floor
        "spark.driver_memory=1g", "spark.shuffle_partitions=4", small_spark.JVM]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(
                    errors="replace"):
                found.append(proc.name)
        except OSError:  # the process ended while we looked
            continue
    return found


@pytest.mark.slow
def test_sample_deployment_on_a_cluster_of_one(tmp_path):
    state = tmp_path / "services"
    running = cluster.up(state, cpus=2, spark_memory="2g")
    ray_temp = (state / "ray-temp").read_text()
    try:
        # Ray reads RAY_worker_niceness at start: workers at train.worker_niceness, not 15
        [head] = [s for s in running.services if s.name == "ray-head"]
        environ = Path(f"/proc/{head.pid}/environ").read_bytes().split(b"\0")
        assert b"RAY_worker_niceness=0" in environ
        env = {**os.environ, **running.env}
        overrides = [f"paths.raw_dir={tmp_path}/raw", f"paths.work_dir={tmp_path}/work",
                     f"tracking.artifact_location={tmp_path}/mlartifacts", *TINY]
        deploy = subprocess.run(
            [str(cluster.BIN / "seqrec"), "deploy", "--models", "score", "--profile", "cluster",
             *sum((["--set", o] for o in overrides), [])],
            env=env, capture_output=True, text=True, timeout=300)
        assert deploy.returncode == 0, deploy.stderr[-3000:]
        run = subprocess.run(
            [str(cluster.BIN / "prefect"), "deployment", "run", "seqrec/score-sample", "--watch",
             "--watch-timeout", "900"], env=env, capture_output=True, text=True, timeout=960)
        worker_log = running.services[-1].tail(80)
        assert run.returncode == 0 and "Completed" in run.stdout, (
            run.stdout[-2000:] + run.stderr[-2000:] + worker_log)

        # Spark ran as an application of the standalone master ...
        apps = list((state / "spark-work").glob("app-*"))
        assert apps, "no Spark application ran on the standalone worker"
        # ... training connected to the Ray head as a driver ...
        drivers = list(Path(ray_temp).glob("session_latest/logs/python-core-driver-*"))
        assert drivers, "no driver connected to the Ray head"
        # ... and MLflow's server holds the run and the registered champion.
        uri = running.env["SEQREC_MLFLOW_URI"]
        client = MlflowClient(uri, registry_uri=uri)
        [experiment] = [e for e in client.search_experiments() if e.name == "seqrec"]
        [mlflow_run] = client.search_runs([experiment.experiment_id])
        assert mlflow_run.data.tags["profile"] == "cluster"
        assert "test_mrr" in mlflow_run.data.metrics
        champion = client.get_model_version_by_alias("score-sample", "champion")
        assert champion.run_id == mlflow_run.info.run_id
        # ... whose top-K for every user Ray Data actors on the head wrote
        top = json.loads((tmp_path / "work" / "recommendations" / "score-sample" / "v1"
                          / "_manifest.json").read_text())
        assert top["users"] > 0 and top["rows"] == top["k"] * top["users"], top
    finally:
        cluster.down(running)
    assert not any(s.alive() for s in running.services)
    assert not Path(ray_temp).exists()
    assert _processes_mentioning(str(state)) == []
    assert _processes_mentioning(ray_temp) == []
