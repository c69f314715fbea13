"""The Prefect flow: skip rules, retries, failures, the sliding window, and a real end-to-end
run on tiny generated data (local mode, Prefect's ephemeral API under tmp_path)."""

from __future__ import annotations

import datetime as dt

import pytest
from mlflow.tracking import MlflowClient

import small_spark
from conf.loading import load_config
from flows.window import latest_start, window_overrides

TINY = ["generate.rows=20000", "generate.users=300", "generate.items=600",
        "index.eval_negatives=19", "train.epochs=2", "train.full_rank_users=20",
        "flow.champion_floor=false",  # 2 tiny epochs: the registry's mechanics, not a floor
        "train.cpus_per_worker=0.5",
        "recommend.actors=0"]  # in-process top-K (tests/test_recommend.py runs Ray Data's)


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    """Prefect's home and ephemeral API database under this module's tmp folder."""
    from prefect.settings import (
        PREFECT_API_DATABASE_CONNECTION_URL,
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    home = tmp_path_factory.mktemp("prefect")
    with temporary_settings(
        updates={PREFECT_HOME: str(home),
                 PREFECT_API_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{home}/prefect.db",
                 PREFECT_SERVER_ANALYTICS_ENABLED: False,
                 PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 180},
        restore_defaults={PREFECT_API_URL},
    ):
        yield home
        # Stop the ephemeral API server(s) these flows started, here rather than in Prefect's
        # atexit hook. Its "Stopping temporary server" line would go to Prefect's console
        # handler, which still holds a test's capture stream that pytest has closed (a
        # traceback at the end of every CI log), so that one INFO line is muted.
        import logging

        from prefect.logging.handlers import APILogWorker
        from prefect.server.api.server import SubprocessASGIServer

        APILogWorker.drain_all(timeout=5)  # the flows' last log lines, while their API runs
        logging.disable(logging.INFO)
        try:
            for server in list(SubprocessASGIServer._instances.values()):
                server.stop()
        finally:
            logging.disable(logging.NOTSET)


def _dataset(start: str, slice_days: int, num_slices: int):
    return load_config("tmall", overrides=[f"dataset.start={start}",
                                           f"dataset.slice_days={slice_days}",
                                           f"dataset.num_slices={num_slices}"]).dataset


def test_latest_start_keeps_the_slice_grid_and_drops_the_incomplete_slice():
    daily = _dataset("2017-11-25", 1, 9)
    # data through 12-05: the window slides two days, still 9 one-day slices
    assert latest_start(dt.date(2017, 12, 5), daily) == dt.date(2017, 11, 27)
    assert latest_start(dt.date(2017, 12, 3), daily) == dt.date(2017, 11, 25)  # unchanged
    fortnight = _dataset("2015-05-11", 15, 4)  # grid: 05-11, 05-26, 06-10, 06-25, 07-10 ...
    # 07-24 is the last day of the slice starting 07-10: that slice is complete
    assert latest_start(dt.date(2015, 7, 24), fortnight) == dt.date(2015, 5, 26)
    # one day earlier it is not: the window ends at 07-10
    assert latest_start(dt.date(2015, 7, 23), fortnight) == dt.date(2015, 5, 11)
    # data ending before the configured window moves it back on the same grid
    assert latest_start(dt.date(2015, 6, 30), fortnight) == dt.date(2015, 4, 26)


def test_window_override_from_raw_timestamps(spark, make_config, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shanghai = dt.timezone(dt.timedelta(hours=8))
    last = int(dt.datetime(2017, 12, 6, 23, 30, tzinfo=shanghai).timestamp())  # local 12-06
    future = int((dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=400)).timestamp())
    (raw / "UserBehavior.csv").write_text(
        f"1,10,5,pv,{last - 86400 * 3}\n"
        f"2,11,5,pv,{last}\n"
        f"3,12,5,buy,{last + 86400 * 5}\n"  # behaviour not kept: does not move the window
        f"4,13,5,pv,{future}\n"  # clock error in the future: ignored
        f"x,13,5,pv,{last + 86400 * 9}\n"  # malformed: ignored
    )
    fixed = make_config("sample")
    assert window_overrides(fixed) == []
    latest = make_config("sample", overrides=["dataset.window=latest"])
    assert window_overrides(latest) == ["dataset.start=2017-11-28"]  # 11-28 .. 12-06, T=9
    assert (tmp_path / "work" / "flow" / "window.json").exists()  # cached by fingerprint
    # a new file in the input folder that matches dataset.files moves the window again
    newer = make_config("sample", overrides=["dataset.window=latest",
                                             "dataset.files=[UserBehavior*.csv]"])
    (raw / "UserBehavior-1208.csv").write_text(f"5,14,5,pv,{last + 86400 * 2}\n")
    assert window_overrides(newer) == ["dataset.start=2017-11-30"]


class FakeStages:
    """Stage functions that record their calls; train skips when lr is unchanged, like
    trainers/train.py, and creates a real MLflow run so the run link resolves."""

    def __init__(self, monkeypatch, tracking_uri: str):
        import spark_jobs.ingest
        import spark_jobs.index
        import spark_jobs.sample_data
        import trainers.compare
        import trainers.evaluate
        import trainers.train
        import flows.champion
        from flows.champion import ChampionDecision

        self.calls: list[str] = []
        self.fail: dict[str, list[BaseException]] = {}
        self.runs: dict[float, str] = {}
        client = MlflowClient(tracking_uri)
        experiment = client.create_experiment("fake")

        def stage(name, result):
            def run(*args):
                self.calls.append(name)
                if self.fail.get(name):
                    raise self.fail[name].pop(0)
                return result(*args)
            return run

        def write_raw(cfg):
            from pathlib import Path

            from store.files import write_json
            from spark_jobs.sample_data import STAMP, file_names, generated_hash

            Path(cfg.paths.raw_dir).mkdir(parents=True, exist_ok=True)
            names = [name for name in file_names(cfg) if name is not None]
            for name in names:  # the preset's own file names; the content is never read
                (Path(cfg.paths.raw_dir) / name).write_text("1,2,3,pv,1511800000\n")
            write_json(f"{cfg.paths.raw_dir}/{STAMP}", {"config_hash": generated_hash(cfg)})
            return {"files": names}

        def train(cfg):
            skipped = cfg.train.lr in self.runs
            if not skipped:
                self.runs[cfg.train.lr] = client.create_run(experiment).info.run_id
            return {"run_id": self.runs[cfg.train.lr], "best_epoch": 1, "epochs": 1,
                    "valid": {"mrr": 0.5}, "selection_metric": "mrr",
                    "checkpoint": f"ckpt-{cfg.train.lr}",
                    "skipped": skipped}

        stage_result = {"uri": "x", "manifest": {}, "skipped": False, "reason": "fake"}
        metrics = {"mrr": 0.4, "hr@10": 0.8}
        monkeypatch.setattr(spark_jobs.sample_data, "generate", stage("generate", write_raw))
        monkeypatch.setattr(spark_jobs.ingest, "run_ingest", stage("ingest", lambda c: stage_result))
        monkeypatch.setattr(spark_jobs.index, "run_index", stage("index", lambda c: stage_result))
        monkeypatch.setattr(trainers.train, "run_training", stage("train", train))
        monkeypatch.setattr(trainers.evaluate, "run_evaluation", stage(
            "evaluate", lambda c: {"test": metrics, "popularity_test": metrics,
                                   "popularity_valid": {"mrr": 0.2}}))
        monkeypatch.setattr(trainers.compare, "run_comparison", stage(
            "compare", lambda c, models, seeds: {"run_id": "parent", "rows": [], "csv": "",
                                          "table": f"| {' | '.join(models)} |\n"}))
        monkeypatch.setattr(flows.champion, "register_and_promote", stage(
            "register", lambda *a: ChampionDecision("m", "1", True, 0.5, None, None)))

    def ran(self) -> list[str]:
        out, self.calls = self.calls, []
        return out


def test_flow_skips_unchanged_steps_retries_transient_and_fails_with_step_message(
        prefect_home, make_config, monkeypatch, tmp_path):
    from flows.pipeline import pipeline_flow

    base = make_config().tracking.uri
    fake = FakeStages(monkeypatch, base)
    overrides = [f"paths.raw_dir={tmp_path}/raw", f"paths.work_dir={tmp_path}/work",
                 f"tracking.uri={base}", "flow.retry_delay_seconds=0"]

    def run(*extra):
        return pipeline_flow("sample", "score", "local", overrides + list(extra))

    first = run()
    assert fake.ran() == ["generate", "ingest", "index", "train", "evaluate", "register"]
    assert first["evaluate"]["reason"] == "no previous result"
    second = run()
    assert fake.ran() == ["ingest", "index", "train"]  # raw exists; evaluate/register reused
    assert second["evaluate"]["skipped"] and second["register"]["skipped"]
    assert second["evaluate"]["test"] == first["evaluate"]["test"]
    third = run("train.eval_batch_size=64")  # same run, other evaluation config
    assert fake.ran() == ["ingest", "index", "train", "evaluate"]
    assert third["evaluate"]["reason"] == "config changed"
    run("train.lr=0.01")  # a new training run: evaluated and registered
    assert fake.ran() == ["ingest", "index", "train", "evaluate", "register"]
    run("train.lr=0.01", "generate.rows=30000")  # another sample: generated again
    assert fake.ran()[0] == "generate"

    fake.fail["ingest"] = [ConnectionError("spark master went away")]  # transient: retried
    run("train.lr=0.01", "generate.rows=30000")
    assert fake.ran() == ["ingest", "ingest", "index", "train"]
    fake.fail["index"] = [ValueError("index: no positive interaction in slice 3")]
    with pytest.raises(ValueError, match="no positive interaction in slice 3"):
        run("train.lr=0.01", "generate.rows=30000")
    assert fake.ran() == ["ingest", "index"]  # a bad-input error is not retried


def test_one_flow_generates_every_generated_preset_and_no_download(
        prefect_home, make_config, monkeypatch, tmp_path):
    from flows.pipeline import pipeline_flow

    assert pipeline_flow.name == "seqrec"  # the project's flow, whatever the paper
    base = make_config().tracking.uri
    fake = FakeStages(monkeypatch, base)
    for dataset, model in (("sample-loo", "dualrec"), ("sample-feedback", "dfar"),
                           ("taobao", "score")):
        overrides = [f"paths.raw_dir={tmp_path}/{dataset}/raw",
                     f"paths.work_dir={tmp_path}/{dataset}/work", f"tracking.uri={base}"]
        pipeline_flow(dataset, model, "local", overrides)
        ran = fake.ran()
        assert ran[0] == ("generate" if dataset != "taobao" else "ingest"), (dataset, ran)
        pipeline_flow(dataset, model, "local", overrides)
        assert fake.ran()[0] == "ingest"  # the sample is current: not generated again


def test_flow_compares_a_model_list_after_the_data_stages(prefect_home, make_config,
                                                          monkeypatch, tmp_path):
    from flows.pipeline import pipeline_flow

    base = make_config().tracking.uri
    fake = FakeStages(monkeypatch, base)
    overrides = [f"paths.raw_dir={tmp_path}/raw", f"paths.work_dir={tmp_path}/work",
                 f"tracking.uri={base}", "flow.retry_delay_seconds=0"]
    result = pipeline_flow("sample", "score", "local", overrides, models=["svdpp", "rrn"])
    assert fake.ran() == ["generate", "ingest", "index", "compare"]  # nothing registered
    assert result["compare"]["table"] == "| svdpp | rrn |\n"
    assert "train" not in result and "register" not in result
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        pipeline_flow("sample", "score", "local", overrides, models=["rrn", "nope"])
    assert fake.ran() == []  # a bad list fails before any stage


@pytest.mark.slow
def test_pipeline_end_to_end_then_cached_then_only_training_reruns(prefect_home, spark, tmp_path):
    from flows.pipeline import pipeline_flow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [f"paths.raw_dir={tmp_path}/raw", f"paths.work_dir={tmp_path}/work",
                 f"tracking.uri={uri}", f"tracking.artifact_location={tmp_path}/mlartifacts",
                 "spark.master=local[2]", "spark.driver_memory=2g",
                 "spark.shuffle_partitions=4", small_spark.JVM, *TINY]

    first = pipeline_flow("sample", "score", "local", overrides)
    assert first["generate"]["rows"] > 0
    assert not any(first[s]["skipped"] for s in ("ingest", "index", "train", "evaluate"))
    assert first["register"]["promoted"] and first["register"]["version"] == "1"
    assert 0.0 < first["evaluate"]["test"]["mrr"] <= 1.0
    recommended = first["recommend"]  # issue 24: top-K from the champion after register
    assert not recommended["skipped"] and recommended["uri"].endswith("score-sample/v1")
    assert recommended["manifest"]["k"] == 20  # the sample preset's top-20 of 100 candidates
    assert recommended["manifest"]["rows"] == 20 * recommended["manifest"]["users"]
    assert len(recommended["examples"]) == 3 and len(recommended["examples"][0]["top"]) == 10

    second = pipeline_flow("sample", "score", "local", overrides)
    assert "generate" not in second
    assert all(second[s]["skipped"]
               for s in ("ingest", "index", "train", "evaluate", "register", "recommend"))
    assert second["train"]["run_id"] == first["train"]["run_id"]
    assert second["evaluate"]["test"] == first["evaluate"]["test"]

    third = pipeline_flow("sample", "score", "local", overrides + ["train.lr=0.003"])
    assert third["ingest"]["skipped"] and third["index"]["skipped"]
    assert not third["train"]["skipped"] and not third["evaluate"]["skipped"]
    assert third["train"]["run_id"] != first["train"]["run_id"]
    assert third["register"]["version"] == "2"
    promoted = third["register"]["promoted"]
    assert promoted == (third["register"]["candidate_value"]
                        > first["register"]["candidate_value"])

    client = MlflowClient(uri, registry_uri=uri)
    runs = {r.info.run_id: r for r in client.search_runs(
        [client.get_experiment_by_name("seqrec").experiment_id])}
    assert set(runs) == {first["train"]["run_id"], third["train"]["run_id"]}
    assert all("test_mrr" in r.data.metrics for r in runs.values())
    champion = client.get_model_version_by_alias("score-sample", "champion")
    assert champion.run_id == (third if promoted else first)["train"]["run_id"]

    from prefect.artifacts import Artifact

    artifact = Artifact.get("score-sample-metrics")
    assert "| mrr |" in artifact.data and third["train"]["run_id"] in artifact.data
    # the new version, champion or not, is recommended from only when it is the champion
    version = "2" if promoted else "1"
    assert third["recommend"]["uri"].endswith(f"score-sample/v{version}")
    assert third["recommend"]["skipped"] == (not promoted)
    assert f"## Recommendations: score-sample v{version}" in artifact.data
