"""The champion alias moves only on a strict improvement of the validation selection metric
(MRR, or AUC under the feedback protocol; real sqlite registry)."""

from __future__ import annotations

import math

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows.champion import CHAMPION, MRR_TAG, current_champion, register_and_promote


def _logged_model(uri: str, artifacts: str, mrr: float) -> tuple[str, str]:
    """A finished run holding a minimal MLflow model folder; returns (run id, model uri)."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = "champion-test"
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        mlflow.log_metric("best_valid_mrr", mrr)
        mlflow.log_text("flavors: {}\n", "model/MLmodel")
    return run.info.run_id, f"runs:/{run.info.run_id}/model"


def test_alias_moves_only_when_validation_mrr_improves(tmp_path):
    uri = f"sqlite:///{tmp_path}/registry.db"
    artifacts = str(tmp_path / "artifacts")
    client = MlflowClient(uri, registry_uri=uri)
    # versions: 1 (0.30, first), 2 (0.25, worse), 3 (0.30, a tie is no gain), 4 (0.41, better)
    steps = [(0.30, True, "1"), (0.25, False, "1"), (0.30, False, "1"), (0.41, True, "4")]
    for number, (mrr, promoted, champion) in enumerate(steps, start=1):
        run_id, model_uri = _logged_model(uri, artifacts, mrr)
        decision = register_and_promote(uri, "score-sample", model_uri, run_id, mrr)
        assert decision.version == str(number)
        assert decision.promoted is promoted, decision.message
        assert current_champion(client, "score-sample") == (champion, pytest.approx(
            max(m for m, _, _ in steps[:number])))
        assert str(client.get_model_version_by_alias("score-sample", CHAMPION).version) == champion
        # the decision and both numbers are on the version and on the run
        version = client.get_model_version("score-sample", str(number))
        assert float(version.tags[MRR_TAG]) == mrr
        assert version.tags["champion_decision"] == ("promoted" if promoted else "kept")
        run_tags = client.get_run(run_id).data.tags
        assert float(run_tags["registry.candidate_val_mrr"]) == mrr
        assert run_tags["registry.model"] == f"score-sample/{number}"
        if number == 1:
            assert run_tags["registry.champion_val_mrr"] == "none"
            assert "first champion" in decision.message
        else:
            assert decision.champion_value == max(m for m, _, _ in steps[:number - 1])
            assert float(run_tags["registry.champion_val_mrr"]) == decision.champion_value
    assert "0.4100 > champion v1's 0.3000" in decision.message


def test_refuses_nan_and_names_a_hand_set_alias_without_tag(tmp_path):
    uri = f"sqlite:///{tmp_path}/registry.db"
    run_id, model_uri = _logged_model(uri, str(tmp_path / "artifacts"), 0.1)
    with pytest.raises(ValueError, match="validation MRR"):
        register_and_promote(uri, "m", model_uri, run_id, math.nan)
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("m")
    version = client.create_model_version("m", source=model_uri, run_id=run_id)
    client.set_registered_model_alias("m", CHAMPION, version.version)
    with pytest.raises(ValueError, match="no 'val_mrr' tag"):
        register_and_promote(uri, "m", model_uri, run_id, 0.2)


def test_feedback_champion_compares_validation_auc(tmp_path):
    uri = f"sqlite:///{tmp_path}/registry.db"
    artifacts = str(tmp_path / "artifacts")
    client = MlflowClient(uri, registry_uri=uri)
    for auc, promoted in ((0.70, True), (0.69, False), (0.72, True)):
        run_id, model_uri = _logged_model(uri, artifacts, auc)
        decision = register_and_promote(uri, "dfar-sample", model_uri, run_id, auc, "auc")
        assert decision.promoted is promoted and decision.metric == "auc"
        version = client.get_model_version("dfar-sample", decision.version)
        assert float(version.tags["val_auc"]) == auc and MRR_TAG not in version.tags
        assert float(client.get_run(run_id).data.tags["registry.candidate_val_auc"]) == auc
    assert "validation AUC 0.7200 > champion v1's 0.7000" in decision.message
    assert current_champion(client, "dfar-sample", "auc") == ("3", pytest.approx(0.72))
    # A champion chosen by AUC is not compared by MRR: one clear error, no silent promotion.
    with pytest.raises(ValueError, match="no 'val_mrr' tag"):
        register_and_promote(uri, "dfar-sample", model_uri, run_id, 0.5, "mrr")


def test_a_version_under_popularity_or_random_never_becomes_champion(tmp_path):
    """Issue 25: a 3-epoch DFAR at validation AUC 0.495 became the first champion. A version
    that does not beat popularity's validation metric (and random, under feedback) is
    registered and tagged with the reason; the alias stays where it is, even when there is
    no champion yet."""
    uri = f"sqlite:///{tmp_path}/registry.db"
    artifacts = str(tmp_path / "artifacts")
    client = MlflowClient(uri, registry_uri=uri)
    floors = {"popularity": 0.568, "random": 0.5}
    run_id, model_uri = _logged_model(uri, artifacts, 0.495)
    first = register_and_promote(uri, "dfar-sample", model_uri, run_id, 0.495, "auc", floors)
    assert not first.promoted and current_champion(client, "dfar-sample", "auc") is None
    assert "validation AUC 0.4950 <= popularity's 0.5680" in first.message
    assert "'champion' left where it is" in first.message
    version = client.get_model_version("dfar-sample", "1")
    assert version.tags["champion_decision"] == "below_floor"
    assert client.get_run(run_id).data.tags["registry.champion_decision"] == "below_floor"

    run_id, model_uri = _logged_model(uri, artifacts, 0.61)
    second = register_and_promote(uri, "dfar-sample", model_uri, run_id, 0.61, "auc", floors)
    assert second.promoted and current_champion(client, "dfar-sample", "auc")[0] == "2"
    # above the champion's 0.61 would not do either while under a floor (a tie is no gain)
    run_id, model_uri = _logged_model(uri, artifacts, 0.62)
    third = register_and_promote(uri, "dfar-sample", model_uri, run_id, 0.62, "auc",
                                 {"popularity": 0.62})
    assert not third.promoted and current_champion(client, "dfar-sample", "auc")[0] == "2"


def test_the_flow_floors_are_popularity_and_random_on_validation():
    from flows.pipeline import champion_floors

    ranking = {"popularity_valid": {"mrr": 0.37, "auc": 0.8}, "test": {"mrr": 0.4}}
    assert champion_floors(ranking, "mrr") == {"popularity": 0.37}
    feedback = {"popularity_valid": {"auc": 0.568}, "random_test": {"auc": 0.5}}
    assert champion_floors(feedback, "auc") == {"popularity": 0.568, "random": 0.5}
