"""One run at a time per work folder (store/lock.py, issue 25): the lock itself, and two
``seqrec pipeline`` processes started on one work folder at the same moment."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from flows import cluster
from store.files import staged_output
from store.lock import LOCK_FILE, WorkFolderBusy, work_lock
from trainers.checkpoints import load_checkpoint

SEQREC = Path(sys.executable).with_name("seqrec")


def _owner_file(folder: Path, host: str, pid: int, started: str = "2026-01-01T00:00:00+00:00"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps(
        {"host": host, "pid": pid, "started": started, "command": "seqrec pipeline x"}))


def test_a_live_lock_stops_a_second_run_and_a_dead_ones_is_taken_over(tmp_path):
    work = tmp_path / "work"
    with work_lock(str(work), "seqrec pipeline a"):
        assert json.loads((work / LOCK_FILE).read_text())["pid"] == os.getpid()
        with work_lock(str(work), "seqrec train"):  # re-entrant in the owner's process
            pass
        assert (work / LOCK_FILE).exists()
    assert not (work / LOCK_FILE).exists()

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _owner_file(work, socket.gethostname(), sleeper.pid)
        with pytest.raises(WorkFolderBusy, match=f"pid {sleeper.pid} on {socket.gethostname()}"):
            with work_lock(str(work), "seqrec pipeline b"):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with work_lock(str(work), "seqrec pipeline b"):  # its PID is gone: stale, taken over
        assert json.loads((work / LOCK_FILE).read_text())["command"] == "seqrec pipeline b"

    _owner_file(work, "elsewhere", 1)  # another host: never taken; old: named stale
    with pytest.raises(WorkFolderBusy, match=f"older than 12 h on another host.*{LOCK_FILE}"):
        with work_lock(str(work), "seqrec pipeline c", stale_hours=12):
            pass
    assert json.loads((work / LOCK_FILE).read_text())["host"] == "elsewhere"


def test_a_waiting_run_starts_when_the_owner_finishes(tmp_path):
    work, lines = tmp_path / "work", []
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from store.lock import work_lock\n"
         f"with work_lock({str(work)!r}, 'seqrec pipeline first'):\n"
         "    print('held', flush=True); time.sleep(1.5)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    assert holder.stdout.readline().strip() == "held"
    with work_lock(str(work), "seqrec pipeline second", wait=True, poll_s=0.05,
                   log=lines.append):
        assert holder.poll() is not None  # the first run had finished
    holder.wait()
    assert len(lines) == 1 and lines[0].startswith(f"waiting for {work}: in use by pid")


TINY = ["generate.rows=20000", "generate.users=300", "generate.items=600",
        "index.eval_negatives=19", "train.epochs=3", "train.full_rank_users=20",
        "flow.champion_floor=false", "train.cpus_per_worker=0.5", "spark.master=local[2]",
        "spark.shuffle_partitions=4", "recommend.k=10",
        "recommend.actors=0"]  # in-process top-K (tests/test_recommend.py runs Ray Data's)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """One Prefect server on 127.0.0.1 for the module's runs (each run would otherwise
    start a temporary one, ~10 s apiece); stopped by PID."""
    server, api = cluster.prefect_server(tmp_path_factory.mktemp("prefect"), cluster.free_port())
    yield api
    cluster.stop(server)


def _pipeline(root: Path, api: str) -> tuple[list[str], dict[str, str]]:
    """``seqrec pipeline`` on tiny generated data under ``root``, and its environment: a
    user's shell (no MLflow URIs that earlier tests' set_*_uri exported to this process)
    talking to the Prefect server at ``api``."""
    uri = f"sqlite:///{root}/mlflow.db"
    sets = [f"paths.raw_dir={root}/raw", f"paths.work_dir={root}/work",
            f"tracking.uri={uri}", f"tracking.artifact_location={root}/mla", *TINY]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
           **cluster.prefect_env(root / "services", api)}
    Path(env["PREFECT_HOME"]).mkdir(parents=True)
    return [str(SEQREC), "pipeline", *sum((["--set", s] for s in sets), [])], env


def _result(out: str) -> dict:
    return json.loads(out[out.index("{"):])


@pytest.fixture(scope="module")
def together(prefect_api, tmp_path_factory):
    """Two ``seqrec pipeline --wait`` started at the same moment on one work folder, and a
    third without ``--wait`` while they run."""
    root = tmp_path_factory.mktemp("together")
    args, env = _pipeline(root, prefect_api)
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
    assert first.returncode == 0 and second.returncode == 0, err_first[-3000:] + err_second[-3000:]
    results = [_result(out) for out in (out_first, out_second)]
    return {"root": root, "args": args, "env": env, "third": third,
            "out": out_first + out_second,
            "waited": next(r for r in results if r["train"]["skipped"]),
            "ran": next(r for r in results if not r["train"]["skipped"])}


def test_two_pipelines_on_one_work_folder_run_one_after_the_other(together):
    """Started together (``--wait``): one takes the work folder, the other waits for it and
    then finds every step done; a third without ``--wait`` exits 75 with one line naming
    the owner. The outputs are one run's: one MLflow run, one registered version."""
    root, args, env, third = (together[k] for k in ("root", "args", "env", "third"))
    assert third.returncode == 75, third.stderr[-2000:]
    assert third.stderr.strip().count("\n") == 0 and "WorkFolderBusy" in third.stderr
    assert "is in use by pid" in third.stderr
    waited, ran = together["waited"], together["ran"]
    steps = ("ingest", "index", "train", "evaluate", "register", "recommend")
    assert {s: waited[s]["reason"] for s in steps if not waited[s]["skipped"]} == {}
    assert waited["evaluate"]["test"] == ran["evaluate"]["test"]
    assert "waiting for" in together["out"]
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "seqrec"]
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert [int(v.version) for v in client.search_model_versions("name='score-sample'")] == [1]
    assert not (root / "work" / LOCK_FILE).exists()

    # without --json a run prints a summary a person reads, not the result's JSON (issue 25)
    quiet = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    lines = quiet.stdout.strip().splitlines()
    assert "{" not in quiet.stdout and len(lines) <= 20, quiet.stdout
    assert lines[0].startswith("ingest: skipped") and "recommend: skipped" in quiet.stdout
    assert any(line.startswith("| test |") for line in lines)
    assert any(line.startswith("| popularity_test |") for line in lines)
    assert lines[-2].startswith("champion: score-sample v1")
    assert lines[-1].startswith("MLflow run:") and ran["train"]["run_id"] in lines[-1]


def _session(pid: int) -> list[int]:
    """Live (not zombie) processes of session ``pid``, read from /proc."""
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == pid and fields[0] != "Z":
                alive.append(int(entry.name))
    return alive


def _kill_when(args: list[str], env: dict[str, str], ready, log: Path) -> dict:
    """Start ``args`` in a session of its own; once ``ready()`` holds, SIGKILL its whole
    process group (the CLI, the Prefect server it started, Spark's JVM, Ray's driver side);
    return what the work folder held at that moment."""
    with log.open("w") as out:
        run = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
        deadline = time.time() + 300
        while not (state := ready()):
            assert run.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    deadline = time.time() + 60
    while _session(run.pid):  # Ray's processes follow their parent (PR_SET_PDEATHSIG)
        assert time.time() < deadline, _session(run.pid)
        time.sleep(0.2)
    return state


def test_a_pipeline_killed_mid_index_then_mid_training_ends_as_an_uninterrupted_run(
        together, prefect_api, tmp_path):
    """Issue 25, section 3: SIGKILL the whole ``seqrec pipeline`` process group while the
    index is half written, rerun: the index is built again from the ingest output (the
    last complete one) and training starts; SIGKILL once epoch 1's checkpoint is written,
    rerun: training resumes after its last recorded checkpoint (epoch 1; epoch 2 when Ray
    records it in the moment before the kill). The end is the uninterrupted run's: the same
    index, validation and test metrics, best epoch, weights and recommendations, and the
    dead runs' locks and half-written folders are gone."""
    args, env = _pipeline(tmp_path, prefect_api)
    work = tmp_path / "work"
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
            "last": (run_folder / "checkpoint_epoch_0003").exists()}

    at_index = _kill_when(args, env, index_half_written, tmp_path / "killed-index.log")
    assert at_index["ingest"] and not at_index["index"], at_index
    at_train = _kill_when(args, env, epoch_1_saved, tmp_path / "killed-train.log")
    assert not at_train["last"]  # killed before the last epoch's checkpoint
    assert json.loads((work / LOCK_FILE).read_text())["pid"] > 0  # the dead run's lock

    rerun = subprocess.run([*args, "--json"], env=env, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    done, ran = _result(rerun.stdout), together["ran"]
    assert done["ingest"]["skipped"] and done["index"]["skipped"]
    assert not done["train"]["skipped"]
    # Ray Train may record epoch 2's checkpoint in the moment between the check and the kill
    said = rerun.stdout + rerun.stderr
    resumed = re.search(r"resuming after epoch (\d+) ", said)
    assert resumed and 1 <= int(resumed.group(1)) < 3, said[-3000:]
    assert not any(f"epoch {e}/3:" in said for e in range(1, int(resumed.group(1)) + 1))
    assert "epoch 3/3:" in said
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


def test_the_next_writer_deletes_a_killed_writers_half_written_folders(tmp_path):
    out = tmp_path / "index"
    for leftover in ("index.tmp-1a2b3c4d", "index.old-5e6f7a8b"):
        (tmp_path / leftover / "samples").mkdir(parents=True)
    (tmp_path / "index.tmp-9").write_text("x")
    (tmp_path / "indexes.tmp-1").mkdir()  # another output's: kept
    with staged_output(str(out)) as tmp:
        Path(tmp, "manifest.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "indexes.tmp-1"]
