"""The `seqrec` command: help everywhere, bad config and bad input are one clear message."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["generate", "ingest", "index", "train", "evaluate",
                                     "pipeline", "compare", "deploy", "run-deployment"])
def test_every_subcommand_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_bad_config_exits_2_naming_the_key():
    result = runner.invoke(app, ["ingest", "--set", "index.set_size=abc"])
    assert result.exit_code == 2
    assert "index.set_size" in result.output and "override" in result.output


def test_wrong_format_file_is_one_clear_error(spark, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "UserBehavior.csv").write_text("a,b,c\nx,y\n")
    result = runner.invoke(app, ["ingest", "--set", f"paths.raw_dir={raw}",
                                 "--set", f"paths.work_dir={tmp_path / 'work'}"])
    assert result.exit_code == 1
    assert "is not a taobao file" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "work" / "ingest").exists()  # nothing half-written


def test_run_deployment_passes_overrides_and_models(monkeypatch):
    import flows.deployments

    seen = {}

    def fake_run(name, parameters, timeout):
        seen.update(name=name, parameters=parameters)
        return {"flow_run_id": "x", "name": "n", "state": "COMPLETED"}

    monkeypatch.setattr(flows.deployments, "run_by_name", fake_run)
    result = runner.invoke(app, ["run-deployment", "score-sample", "--set", "train.lr=0.01",
                                 "--models", "score, svdpp"])
    assert result.exit_code == 0, result.output
    assert seen == {"name": "score-sample", "parameters": {
        "overrides": ["train.lr=0.01"], "models": ["score", "svdpp"]}}
    runner.invoke(app, ["run-deployment", "score-sample"])
    assert seen["parameters"] is None  # the deployment's own parameters


OWN_DATASET = """dataset:
  name: shop
  format: ratings
  files: [log.csv]
  timezone: UTC
  start: 2020-01-01
  slice_days: null
  num_slices: null
  last_day: 2020-03-31
  behaviors: [rating]
  positive_min_rating: 4
  negative_max_rating: 2
  rating_scale: [1, 5]
  kcore: 0
  drop_duplicates: true
  published: null
index:
  protocol: feedback
"""


def test_unknown_dataset_is_one_line_and_no_traceback():
    result = runner.invoke(app, ["pipeline", "--dataset", "nope"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unknown dataset 'nope': not a preset")
    assert "Traceback" not in result.output


def test_dataset_from_a_yaml_path_or_the_config_file(tmp_path, monkeypatch):
    own = tmp_path / "shop.yaml"
    own.write_text(OWN_DATASET)
    raw = tmp_path / "raw"
    result = runner.invoke(app, ["generate", "--dataset", str(own), "--set", f"paths.raw_dir={raw}",
                                 "--set", "generate.rows=2000", "--set", "generate.users=50",
                                 "--set", "generate.items=200"])
    assert result.exit_code == 0, result.output
    assert (raw / "log.csv").read_text().startswith("user,item,rating,timestamp\n")

    import flows.pipeline

    seen = {}
    monkeypatch.setattr(flows.pipeline, "pipeline_flow", lambda **kw: seen.update(kw) or {})
    result = runner.invoke(app, ["pipeline", "--config", str(own), "--dataset", "shop"])
    assert result.exit_code == 0, result.output
    assert (seen["dataset"], seen["config_file"]) == ("shop", str(own))  # as given, not a preset
    result = runner.invoke(app, ["pipeline", "--config", str(own), "--dataset", "shops"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert f"{own} does not set dataset.name: shops" in result.output
