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
