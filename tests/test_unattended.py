"""Runs nobody watches (issue 25), end to end through the real ``seqrec pipeline`` command on
tiny generated data, in two scenarios that run at the same time (:func:`scenarios`):

- **together**: two runs started at one moment on one work folder, a third refused, while
  the MLflow tracking server on 127.0.0.1 goes away for 10 s mid-training;
- **killed**: a run SIGKILLed mid-index, its rerun SIGKILLed mid-training, a last rerun.

Each ends as one uninterrupted run: the killed scenario's results equal the together one's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import small_spark
from run_curves import epoch_curves
import torch
from mlflow import MlflowClient

from flows import cluster
from store.lock import LOCK_FILE
from store.runs import CHECKPOINT_FILE
from trainers.checkpoints import load_checkpoint

SEQREC = Path(sys.executable).with_name("seqrec")


EPOCHS = 4  # the kill lands after epoch 1's checkpoint
TINY = ["generate.rows=20000", "generate.users=300", "generate.items=600",
        "index.eval_negatives=19", f"train.epochs={EPOCHS}", "train.full_rank_users=20",
        "flow.champion_floor=false", "train.cpus_per_worker=0.5", "spark.master=local[2]",
        "spark.shuffle_partitions=4", small_spark.JVM, "recommend.k=10",
        "recommend.actors=0"]  # in-process top-K (tests/test_recommend.py runs Ray Data's)


def _pipeline(root: Path, api: str, uri: str) -> tuple[list[str], dict[str, str]]:
    """``seqrec pipeline`` on tiny generated data under ``root`` tracked at ``uri``, and its
    environment: a user's shell (no MLflow URIs that earlier tests' set_*_uri exported to
    this process) talking to the Prefect server at ``api``."""
    sets = [f"paths.raw_dir={root}/raw", f"paths.work_dir={root}/work",
            f"tracking.uri={uri}", f"tracking.artifact_location={root}/mla", *TINY]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
           **cluster.prefect_env(root / "services", api)}
    Path(env["PREFECT_HOME"]).mkdir(parents=True)
    return [str(SEQREC), "pipeline", *sum((["--set", s] for s in sets), [])], env


def _result(out: str) -> dict:
    return json.loads(out[out.index("{"):])


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    """The module's two end-to-end scenarios, each in a folder of its own, run at the same
    time (a tiny pipeline leaves ~30 % of two cores idle: Spark's and Ray's start-ups wait
    on each other): :func:`_together` and :func:`_killed`, both talking to one Prefect
    server on 127.0.0.1 (each run would otherwise start a temporary one), stopped by PID.
    A scenario's failure is raised by the test that reads it (``.result()``)."""
    with ThreadPoolExecutor(3) as pool:
        prefect = pool.submit(cluster.prefect_server, tmp_path_factory.mktemp("prefect"),
                              cluster.free_port())
        try:
            yield {name: pool.submit(scenario, prefect, tmp_path_factory.mktemp(name))
                   for name, scenario in (("together", _together), ("killed", _killed))}
        finally:
            cluster.stop(prefect.result()[0])


def _together(prefect: Future, root: Path) -> dict:
    """Two ``seqrec pipeline --wait`` started at the same moment on one work folder, and a
    third without ``--wait`` while they run; their MLflow server stops once epoch 1's
    checkpoint is written and answers again on its port at least 10 s later."""
    state, port = root / "mlflow", cluster.free_port()
    started = time.monotonic()
    server, uri = cluster.mlflow_server(state, port)
    restart_lead = (time.monotonic() - started) / 2  # a restart takes longer than this
    args, env = _pipeline(root, prefect.result()[1], uri)
    outage: dict = {"server": server}
    run_folder = root / "work" / "train" / "score"
    first_checkpoint = run_folder / "checkpoint_epoch_0001" / CHECKPOINT_FILE

    def away() -> None:
        while not first_checkpoint.exists():
            if outage.get("over"):
                return
            time.sleep(0.02)
        cluster.stop(outage["server"])
        outage["down"] = time.monotonic()
        outage["last_saved_before"] = (run_folder / f"checkpoint_epoch_{EPOCHS:04d}").exists()
        time.sleep(10 - restart_lead)  # the successor starts so that it answers after 10 s
        outage["server"], _ = cluster.mlflow_server(state, port)
        outage["up"] = time.monotonic()

    thread = threading.Thread(target=away, daemon=True)
    thread.start()
    try:
        first = subprocess.Popen([*args, "--wait", "--json"], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        second = subprocess.Popen([*args, "--wait", "--json"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not (root / "work" / LOCK_FILE).exists():
            assert time.time() < deadline and first.poll() is None and second.poll() is None
            time.sleep(0.2)
        third = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        out_first, err_first = first.communicate(timeout=900)
        out_second, err_second = second.communicate(timeout=900)
        outage["over"] = True
        thread.join(timeout=120)
        assert first.returncode == 0 and second.returncode == 0, (err_first[-3000:]
                                                                  + err_second[-3000:])
        results = [_result(out) for out in (out_first, out_second)]
        ran = next(r for r in results if not r["train"]["skipped"])
        quiet = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        curves = epoch_curves(uri, ran["train"]["run_id"])
        versions = [int(v.version) for v in MlflowClient(uri, registry_uri=uri)
                    .search_model_versions("name='score-sample'")]
        runs = len(MlflowClient(uri).search_runs(
            [MlflowClient(uri).get_experiment_by_name("seqrec").experiment_id]))
    finally:
        cluster.stop(outage["server"])
    return {"root": root, "third": third, "quiet": quiet, "outage": outage, "curves": curves,
            "versions": versions, "runs": runs, "out": out_first + out_second,
            "err": err_first + err_second,
            "waited": next(r for r in results if r["train"]["skipped"]), "ran": ran}


def test_two_pipelines_on_one_work_folder_run_one_after_the_other(scenarios):
    """Started together (``--wait``): one takes the work folder, the other waits for it and
    then finds every step done; a third without ``--wait`` exits 75 with one line naming
    the owner. The outputs are one run's: one MLflow run, one registered version."""
    together = scenarios["together"].result()
    root, third, quiet = together["root"], together["third"], together["quiet"]
    assert third.returncode == 75, third.stderr[-2000:]
    assert third.stderr.strip().count("\n") == 0 and "WorkFolderBusy" in third.stderr
    assert "is in use by pid" in third.stderr
    waited, ran = together["waited"], together["ran"]
    steps = ("ingest", "index", "train", "evaluate", "register", "recommend")
    assert {s: waited[s]["reason"] for s in steps if not waited[s]["skipped"]} == {}
    assert waited["evaluate"]["test"] == ran["evaluate"]["test"]
    assert "waiting for" in together["out"]
    assert "PreemptionWatcher" not in together["err"]  # a local Ray runs none (issue 25, §5)
    assert together["runs"] == 1 and together["versions"] == [1]
    assert not (root / "work" / LOCK_FILE).exists()

    # without --json a run prints a summary a person reads, not the result's JSON (issue 25)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    lines = quiet.stdout.strip().splitlines()
    assert "{" not in quiet.stdout and len(lines) <= 20, quiet.stdout
    assert lines[0].startswith("ingest: skipped") and "recommend: skipped" in quiet.stdout
    assert any(line.startswith("| test |") for line in lines)
    assert any(line.startswith("| popularity_test |") for line in lines)
    assert lines[-2].startswith("champion: score-sample v1")
    assert lines[-1].startswith("MLflow run:") and ran["train"]["run_id"] in lines[-1]


def test_a_tracking_server_away_for_10_s_costs_no_metric(scenarios):
    """Issue 25, section 3: the run's MLflow server stopped once epoch 1's checkpoint was
    written, before the last one, and answered again on its port 10 s later or more.
    MLflow's client retries with backoff (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``), so the run
    ends as the killed scenario's, whose store never went away: every epoch's loss and
    validation metrics, the same values."""
    together, killed = scenarios["together"].result(), scenarios["killed"].result()
    outage = together["outage"]
    assert outage["up"] - outage["down"] >= 10 and not outage["last_saved_before"], outage
    curves = together["curves"]
    assert {"train_loss", "valid_mrr"} <= set(curves)
    assert all(set(steps) == set(range(1, EPOCHS + 1)) for steps in curves.values()), curves
    assert curves == killed["curves"]


def _processes_of(root: Path) -> list[int]:
    """Live (not zombie) processes whose environment names ``root``: every process a run
    under ``root`` started, Ray's workers included (they are not in its process group)."""
    alive, mark = [], str(root).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z" and mark in (entry / "environ").read_bytes():
                    alive.append(int(entry.name))
            except OSError:
                continue
    return alive


def _kill_when(args: list[str], env: dict[str, str], ready, log: Path, root: Path) -> dict:
    """Start ``args`` in a session of its own; once ``ready()`` holds, SIGKILL its whole
    process group (the CLI, Spark's JVM, Ray's raylet and GCS) and, at the same moment,
    Ray's worker processes, which live outside the group; wait until no process of the run
    is left; return what the work folder held at the kill.

    Killed with the group alone, Ray's training worker went on for seconds before it saw
    its raylet gone, and once finished every epoch: the rerun then had nothing to resume."""
    with log.open("w") as out:
        run = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
        deadline = time.time() + 300
        while not (state := ready()):
            assert run.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        os.killpg(run.pid, signal.SIGKILL)
        for pid in _processes_of(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run.wait()
    deadline = time.time() + 60
    while _processes_of(root):
        assert time.time() < deadline, _processes_of(root)
        time.sleep(0.2)
    return state


def _killed(prefect: Future, root: Path) -> dict:
    """``seqrec pipeline`` SIGKILLed while its index is half written, then again once epoch
    1's checkpoint is recorded, then run to its end."""
    uri = f"sqlite:///{root}/mlflow.db"
    args, env = _pipeline(root, prefect.result()[1], uri)
    work = root / "work"
    run_folder = work / "train" / "score"

    def index_half_written():
        tables = list(work.glob("index.tmp-*/*/_SUCCESS"))
        return tables and {"ingest": (work / "ingest" / "manifest.json").exists(),
                           "index": (work / "index").exists(), "tables": len(tables)}

    def epoch_1_saved():  # written, and recorded as Ray Train's latest checkpoint
        try:
            snapshot = json.loads((run_folder / "checkpoint_manager_snapshot.json").read_text())
        except (OSError, ValueError):  # not there yet, or being written
            return None
        latest = snapshot.get("latest_checkpoint_result") or {}
        return latest.get("checkpoint_dir_name") == "checkpoint_epoch_0001" and {
            "last": (run_folder / f"checkpoint_epoch_{EPOCHS:04d}").exists()}

    at_index = _kill_when(args, env, index_half_written, root / "killed-index.log", root)
    at_train = _kill_when(args, env, epoch_1_saved, root / "killed-train.log", root)
    lock = json.loads((work / LOCK_FILE).read_text())  # the dead run's
    rerun = subprocess.run([*args, "--json"], env=env, capture_output=True, text=True,
                           timeout=600)
    ended = rerun.returncode == 0
    curves = epoch_curves(uri, _result(rerun.stdout)["train"]["run_id"]) if ended else {}
    return {"work": work, "at_index": at_index, "at_train": at_train, "lock": lock,
            "rerun": rerun, "curves": curves}


def test_a_pipeline_killed_mid_index_then_mid_training_ends_as_an_uninterrupted_run(
        scenarios):
    """Issue 25, section 3: SIGKILL the whole ``seqrec pipeline`` process group while the
    index is half written, rerun: the index is built again from the ingest output (the
    last complete one) and training starts; SIGKILL once epoch 1's checkpoint is written,
    rerun: training resumes after its last recorded checkpoint (epoch 1, or epoch 2 when
    Ray records it in the moment between the check and the kill). The end is the
    uninterrupted run's: the same index, validation and test metrics, best epoch, weights
    and recommendations, and the dead runs' locks and half-written folders are gone."""
    killed, ran = scenarios["killed"].result(), scenarios["together"].result()["ran"]
    at_index, at_train, rerun, work = (killed[k] for k in ("at_index", "at_train", "rerun",
                                                           "work"))
    assert at_index["ingest"] and not at_index["index"], at_index
    assert not at_train["last"]  # killed before the last epoch's checkpoint
    assert killed["lock"]["pid"] > 0
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    done = _result(rerun.stdout)
    assert done["ingest"]["skipped"] and done["index"]["skipped"]
    assert not done["train"]["skipped"]
    said = rerun.stdout + rerun.stderr
    resumed = re.search(r"resuming after epoch (\d+) ", said)
    assert resumed and 1 <= int(resumed.group(1)) < EPOCHS, said[-3000:]
    assert not any(f"epoch {e}/{EPOCHS}:" in said for e in range(1, int(resumed.group(1)) + 1))
    assert f"epoch {EPOCHS}/{EPOCHS}:" in said
    assert done["index"]["manifest"]["counts"] == ran["index"]["manifest"]["counts"]
    for key in ("best_epoch", "epochs", "optimizer_steps", "valid"):
        assert done["train"][key] == ran["train"][key], key
    assert done["evaluate"]["test"] == ran["evaluate"]["test"]
    assert done["register"]["version"] == "1"
    weights = [load_checkpoint(r["train"]["checkpoint"])["model"] for r in (done, ran)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
    lists = [pd.read_parquet(r["recommend"]["uri"]).sort_values(["user_id", "rank"])
             .reset_index(drop=True) for r in (done, ran)]
    pd.testing.assert_frame_equal(lists[0], lists[1])
    assert not list(work.glob("*.tmp-*")) and not (work / LOCK_FILE).exists()
