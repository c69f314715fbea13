"""Model comparison on the hand-written tiny index: two real baselines trained and evaluated
through Ray, one parent MLflow run with nested children, table/CSV/chart artifacts."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest

import tiny_index
from trainers.compare import TEST_METRICS, run_comparison

TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ray_local():
    import ray

    path = os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent)])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


@pytest.mark.slow  # starts Ray and trains two models (~40 s idle box)
def test_comparison_nests_model_runs_and_logs_table(ray_local, tmp_path):
    from mlflow import MlflowClient

    tiny_index.write_index(tmp_path / "work")
    cfg = tiny_index.tiny_config(tmp_path, ["train.epochs=1", "train.full_rank_users=0"])
    result = run_comparison(cfg, ["svdpp", "rrn"])  # one sequence model, one slice model

    assert [row["model"] for row in result["rows"]] == ["svdpp", "rrn"]
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["models"] == "svdpp,rrn"
    for row in result["rows"]:
        child = client.get_run(row["run_id"])
        assert child.data.tags["mlflow.parentRunId"] == result["run_id"]
        assert child.data.tags["model"] == row["model"]
        # The table holds what the evaluate stage logged to the model's own run.
        assert child.data.metrics["test_mrr"] == pytest.approx(row["test_mrr"])
        assert parent.data.metrics[f"{row['model']}_test_mrr"] == pytest.approx(row["test_mrr"])
        assert all(0.0 <= row[f"test_{m}"] <= 1.0 for m in TEST_METRICS)
    artifacts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"comparison.md", "comparison.csv", "comparison.png"} <= artifacts

    parsed = list(csv.DictReader(io.StringIO(result["csv"])))
    assert [r["model"] for r in parsed] == ["svdpp", "rrn"]
    assert float(parsed[1]["test_ndcg@10"]) == pytest.approx(result["rows"][1]["test_ndcg@10"])
    assert result["table"].count("\n") == 2 + 2 and "**" in result["table"]

    again = run_comparison(cfg, ["rrn"])  # trained already: skipped, re-parented
    assert again["rows"][0]["run_id"] == result["rows"][1]["run_id"]
    assert client.get_run(again["rows"][0]["run_id"]).data.tags["mlflow.parentRunId"] == \
        again["run_id"]


def test_bad_model_lists_fail_before_any_run(tmp_path):
    from mlflow import MlflowClient

    cfg = tiny_index.tiny_config(tmp_path)
    with pytest.raises(ValueError, match="more than once: rrn"):
        run_comparison(cfg, ["rrn", "svdpp", "rrn"])
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        run_comparison(cfg, ["rrn", "nope"])
    with pytest.raises(ValueError, match="at least one"):
        run_comparison(cfg, [])
    assert MlflowClient(tracking_uri=cfg.tracking.uri).search_experiments(
        filter_string=f"name = '{cfg.tracking.experiment}'") == []


def test_cli_compare_names_an_unknown_model(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["compare", "--models", "rrn,nope",
                                      "--set", f"paths.work_dir={tmp_path}/work",
                                      "--set", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"])
    assert result.exit_code == 2
    assert "unknown model 'nope'" in result.output
