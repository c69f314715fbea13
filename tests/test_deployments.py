"""Deployments on a real Prefect server (127.0.0.1, free port, state under tmp_path): `seqrec
deploy` creates every `<model>-<dataset>` deployment of the one flow `seqrec` with its
schedule, a process worker runs `score-sample` by name, and the MLflow run and registered
model exist afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import small_spark
from flows import cluster
from conf.loading import load_config
from flows.deployments import DEPLOYMENTS

SEQREC = str(Path(sys.executable).with_name("seqrec"))
TINY = ["generate.rows=20000", "generate.users=300", "generate.items=600",
        "index.eval_negatives=19", "train.epochs=2", "train.full_rank_users=20",
        "flow.champion_floor=false",  # 2 tiny epochs: the registry's mechanics, not a floor
        "train.cpus_per_worker=0.5", "spark.master=local[2]", "spark.driver_memory=2g",
        "spark.shuffle_partitions=4", small_spark.JVM,
        "recommend.actors=0"]  # in-process top-K (tests/test_recommend.py runs Ray Data's)


def data_overrides(tmp_path: Path) -> list[str]:
    return [f"paths.raw_dir={tmp_path}/raw", f"paths.work_dir={tmp_path}/work",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"tracking.artifact_location={tmp_path}/mlartifacts", *TINY]


def seqrec(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run([SEQREC, *args], env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def test_one_deployment_per_paper_dataset_each_composing():
    assert list(DEPLOYMENTS) == [
        "score-sample", "score-taobao", "score-tmall", "score-ccmr", "dualrec-beauty",
        "dualrec-sports", "dualrec-toys", "dualrec-yelp", "dualrec-sample",
        "dfar-toys-feedback", "dfar-movielens", "dfar-sample"]
    protocols = {"score": "slices", "dualrec": "leave_one_out", "dfar": "feedback"}
    for name, (model, dataset) in DEPLOYMENTS.items():
        cfg = load_config(dataset, model)
        assert cfg.index.protocol == protocols[model], name
    generated = {name for name, (m, d) in DEPLOYMENTS.items() if load_config(d, m).generate.auto}
    assert generated == {"score-sample", "dualrec-sample", "dfar-sample"}


def deployments(env: dict[str, str]) -> dict[str, dict]:
    """{name: deployment} as the server lists them (through the Prefect CLI's JSON output)."""
    result = subprocess.run([str(cluster.BIN / "prefect"), "deployment", "ls", "--output", "json"],
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return {d["name"]: d for d in json.loads(result.stdout)}


@pytest.mark.slow
def test_deploy_and_run_score_sample_by_name(tmp_path):
    state = tmp_path / "services"
    server, api = cluster.prefect_server(state, cluster.free_port())
    services = [server]
    try:
        env = cluster.prefect_env(state, api)
        overrides = data_overrides(tmp_path)
        out = seqrec(["deploy", *sum((["--set", o] for o in overrides), [])], env, 300)
        assert "seqrec/score-taobao" in out.stdout and "seqrec/dfar-sample" in out.stdout
        listed = deployments(env)
        assert set(listed) == set(DEPLOYMENTS)
        assert listed["dualrec-sample"]["parameters"]["dataset"] == "sample-loo"
        assert listed["dfar-sample"]["parameters"]["model"] == "dfar"
        sample = listed["score-sample"]
        assert sample["parameters"]["dataset"] == "sample"
        assert sample["parameters"]["overrides"] == overrides
        assert sample["work_pool_name"] == "seqrec-process"
        # one run at a time on the server (issue 25): a second run waits for the first
        limit = sample.get("global_concurrency_limit") or {}
        assert (limit.get("limit") or sample.get("concurrency_limit")) == 1, sample
        assert sample["concurrency_options"]["collision_strategy"] == "ENQUEUE", sample
        assert sample["parameters"]["wait"] is True
        [schedule] = sample["schedules"]
        assert schedule["schedule"]["cron"] == "0 3 * * *" and schedule["active"] is False
        assert listed["score-tmall"]["schedules"][0]["schedule"]["cron"] == "0 3 1,16 * *"

        services.append(cluster.prefect_worker(state, api, "seqrec-process"))
        run = seqrec(["run-deployment", "score-sample", "--timeout", "900"], env, 960)
        assert '"state": "COMPLETED"' in run.stdout, run.stdout

        client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db",
                              registry_uri=f"sqlite:///{tmp_path}/mlflow.db")
        [experiment] = [e for e in client.search_experiments() if e.name == "seqrec"]
        [mlflow_run] = client.search_runs([experiment.experiment_id])
        assert mlflow_run.info.status == "FINISHED"
        assert "test_mrr" in mlflow_run.data.metrics
        champion = client.get_model_version_by_alias("score-sample", "champion")
        assert champion.run_id == mlflow_run.info.run_id
        assert mlflow_run.data.tags["registry.champion_decision"] == "promoted"
    finally:
        for service in reversed(services):
            cluster.stop(service)
    assert not any(s.alive() for s in services)
