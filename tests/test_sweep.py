"""Ray Tune sweeps (trainers/sweep.py): trial lists, trial configs, and one real sweep of
the tiny test model on a hand-written index (nested MLflow runs, table, plot)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tiny_index
from conf.loading import ConfigError
from trainers import sweep

TESTS_DIR = Path(__file__).resolve().parent


def test_one_at_a_time_varies_each_key_alone():
    space = {"model.params.a": [1, 2, 3], "model.params.b": [0.1, 0.2]}
    assert sweep.trials(space, "one_at_a_time") == [
        {"model.params.a": 1}, {"model.params.a": 2}, {"model.params.a": 3},
        {"model.params.b": 0.1}, {"model.params.b": 0.2}]


def test_grid_is_the_cartesian_product():
    got = sweep.trials({"x.a": [1, 2], "x.b": ["p", "q"]}, "grid")
    assert got == [{"x.a": 1, "x.b": "p"}, {"x.a": 1, "x.b": "q"},
                   {"x.a": 2, "x.b": "p"}, {"x.a": 2, "x.b": "q"}]


def test_variants_are_named_override_sets_in_order():
    variants = {"full": {}, "w/o MO": {"model.params.label_mask": False},
                "w/o FHA": {"model.params.attention": "mha", "model.params.label_mask": False}}
    assert sweep.variant_trials(variants) == [
        {}, {"model.params.label_mask": False},
        {"model.params.attention": "mha", "model.params.label_mask": False}]
    with pytest.raises(ValueError, match="needs sweep.variants"):
        sweep.variant_trials({})
    with pytest.raises(ValueError, match="'a' and 'b' set the same overrides"):
        sweep.variant_trials({"a": {"train.lr": 0.1}, "b": {"train.lr": 0.1}})
    with pytest.raises(ConfigError, match="variant names .*'fast, wide'"):
        tiny_index.tiny_config(Path("/nonexistent"), ['sweep.variants={"fast, wide": {}}'])


@pytest.mark.parametrize("space", [{}, {"train.lr": []}, {"train.lr": [0.1, 0.1]}])
def test_bad_spaces_are_errors(space):
    with pytest.raises(ValueError):
        sweep.trials(space, "one_at_a_time")


def test_trial_config_applies_overrides_in_its_own_run_directory(tmp_path):
    cfg = tiny_index.tiny_config(tmp_path)
    a = sweep.trial_config(cfg, {"train.lr": 0.2, "model.params.dim": 6})
    b = sweep.trial_config(cfg, {"train.lr": 0.3})
    assert a.train.lr == 0.2 and a.model.params["dim"] == 6 and b.train.lr == 0.3
    assert a.train.run_name != b.train.run_name
    assert a.train.run_name.startswith("test_tiny-sweep-")
    assert sweep.trial_config(cfg, {"train.lr": 0.2}).train.run_name == \
        sweep.trial_config(cfg, {"train.lr": 0.2}).train.run_name  # reruns resume


@pytest.mark.parametrize("overrides", [{"train.no_such_key": 1}, {"train.lr": -1.0},
                                       {"model.params.dim": "wide"}])
def test_trial_config_rejects_bad_overrides(tmp_path, overrides):
    with pytest.raises(ConfigError):
        sweep.trial_config(tiny_index.tiny_config(tmp_path), overrides)


@pytest.mark.slow
def test_real_sweep_logs_nested_trials_table_and_plot(tmp_path, monkeypatch):
    """A real Ray Tune sweep in ``variants`` mode. The modes differ only in the trial list
    (``one_at_a_time`` / ``grid``: the tests above), not in how trials run and are logged."""
    # Ray workers import the test model's module by name: put tests/ on their path.
    monkeypatch.setenv("PYTHONPATH", f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    tiny_index.write_index(tmp_path / "work")
    cfg = tiny_index.tiny_config(tmp_path, [
        "train.epochs=2", "train.full_rank_users=0", "train.lr=0.01", "sweep.mode=variants",
        'sweep.variants={"base": {}, "fast wide": {"train.lr": 0.1, "model.params.dim": 6}}'])
    assert cfg.sweep.metric == "valid_mrr"
    result = sweep.run_sweep(cfg)
    # the named sets, several keys at once; {} is the config itself
    assert [(r["variant"], r.get("train.lr"), r.get("model.params.dim"))
            for r in result["rows"]] == [("base", None, None), ("fast wide", 0.1, 6)]
    assert result["table"].startswith("| variant | train.lr | model.params.dim |")
    assert result["best"]["valid_mrr"] == max(r["valid_mrr"] for r in result["rows"])
    for row in result["rows"]:
        assert 0.0 < row["test_mrr"] <= 1.0 and row["valid_mrr"] > 0.0

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    children = {row["run_id"] for row in result["rows"]}
    assert len(children) == 2
    for run_id in children:
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == result["run_id"]
    names = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"sweep.md", "sweep.csv", "sweep.png"} <= names


def test_trials_over_seeds_fold_into_mean_and_half_width():
    """Issue 26: SCoRe Table 4 and DFAR Table 3 (variants) over seeds: one row per variant,
    each metric the mean over seeds with its 95 % t half-width."""
    from trainers.sweep import seed_rows

    rows = [{"variant": "full", "model.params.x": 1, "train.seed": 1, "valid_auc": 0.70,
             "test_auc": 0.60, "run_id": "a", "best_epoch": 3},
            {"variant": "full", "model.params.x": 1, "train.seed": 2, "valid_auc": 0.74,
             "test_auc": 0.62, "run_id": "b", "best_epoch": 5},
            {"variant": "w/o MO", "model.params.x": 2, "train.seed": 1, "valid_auc": 0.66,
             "test_auc": 0.58, "run_id": "c", "best_epoch": 2},
            {"variant": "w/o MO", "model.params.x": 2, "train.seed": 2, "valid_auc": 0.66,
             "test_auc": 0.58, "run_id": "d", "best_epoch": 2}]
    full, ablated = seed_rows(rows, ["variant", "model.params.x"])
    assert full["variant"] == "full" and full["seeds"] == 2 and full["run_id"] == "a,b"
    assert full["valid_auc"] == pytest.approx(0.72) and full["best_epoch"] == 4
    # two seeds: half-width = t_{0.975, 1} * s / sqrt(2), s = |0.74 - 0.70| / sqrt(2)
    assert full["valid_auc_ci95"] == pytest.approx(12.706205 * 0.04 / 2, rel=1e-6)
    assert ablated["test_auc"] == pytest.approx(0.58) and ablated["test_auc_ci95"] == 0.0
    assert "train.seed" not in full
    table = sweep.markdown_table([full, ablated], ["variant", "model.params.x"], "valid_auc")
    assert "**0.7200 ± 0.2541**" in table and "| seeds |" in table.splitlines()[0]
