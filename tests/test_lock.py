"""One run at a time per work folder (store/lock.py, issue 25): the lock itself, and two
``seqrec pipeline`` processes started on one work folder at the same moment."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows import cluster
from store.lock import LOCK_FILE, WorkFolderBusy, work_lock

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
        "index.eval_negatives=19", "train.epochs=2", "train.full_rank_users=20",
        "flow.champion_floor=false", "train.cpus_per_worker=0.5", "spark.master=local[2]",
        "spark.shuffle_partitions=4", "recommend.k=10"]


def test_two_pipelines_on_one_work_folder_run_one_after_the_other(tmp_path):
    """Started together (``--wait``): one takes the work folder, the other waits for it and
    then finds every step done; a third without ``--wait`` exits 75 with one line naming
    the owner. The outputs are one run's: one MLflow run, one registered version."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sets = [f"paths.raw_dir={tmp_path}/raw", f"paths.work_dir={tmp_path}/work",
            f"tracking.uri={uri}", f"tracking.artifact_location={tmp_path}/mla", *TINY]
    args = [str(SEQREC), "pipeline", *sum((["--set", s] for s in sets), [])]
    # as a user's shell: no MLflow URIs that earlier tests' set_*_uri exported to this process
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
           **cluster.prefect_env(tmp_path / "services")}
    Path(env["PREFECT_HOME"]).mkdir(parents=True)
    first = subprocess.Popen([*args, "--wait", "--json"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen([*args, "--wait", "--json"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "work" / LOCK_FILE).exists():
        assert time.time() < deadline and first.poll() is None and second.poll() is None
        time.sleep(0.2)
    third = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 75, third.stderr[-2000:]
    assert third.stderr.strip().count("\n") == 0 and "WorkFolderBusy" in third.stderr
    assert "is in use by pid" in third.stderr
    out_first, err_first = first.communicate(timeout=900)
    out_second, err_second = second.communicate(timeout=900)
    assert first.returncode == 0 and second.returncode == 0, err_first[-3000:] + err_second[-3000:]
    results = [json.loads(out[out.index("{"):]) for out in (out_first, out_second)]
    waited = next(r for r in results if r["train"]["skipped"])
    ran = next(r for r in results if not r["train"]["skipped"])
    steps = ("ingest", "index", "train", "evaluate", "register", "recommend")
    assert {s: waited[s]["reason"] for s in steps if not waited[s]["skipped"]} == {}
    assert waited["evaluate"]["test"] == ran["evaluate"]["test"]
    assert "waiting for" in (out_first + out_second)
    client = MlflowClient(uri, registry_uri=uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "seqrec"]
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert [int(v.version) for v in client.search_model_versions("name='score-sample'")] == [1]
    assert not (tmp_path / "work" / LOCK_FILE).exists()

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
