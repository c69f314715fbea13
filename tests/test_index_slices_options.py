"""Slices index with lists_per_user=one (valid/test), train_lists_per_user=every_positive,
train_targets=every_slice and the SCoRe code's active-item negatives: row counts and
negatives by hand; and a run whose Spark JVM is killed
midway, rerun, equals an uninterrupted run (issue 15)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from index_data import TOY, random_rows, ts, write_ingest

from conf.loading import load_config
from spark_jobs.index import run_index

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("user_sets", "item_sets", "item_popularity", "sequences",
          "samples/train", "samples/valid", "samples/test")
CHILD = """
import json, sys
from conf.loading import load_config
from spark_jobs.index import run_index
run_index(load_config("sample", "score", "local", json.loads(sys.argv[1])))
"""


def _overrides(root):
    return [f"paths.raw_dir={root}/raw", f"paths.work_dir={root}/work",
            f"tracking.uri=sqlite:///{root}/mlflow.db",
            f"tracking.artifact_location={root}/mlartifacts",
            "spark.master=local[2]", "spark.driver_memory=2g", "spark.shuffle_partitions=2",
            "index.eval_negatives=5", "index.train_negatives=2", "index.seed=11",
            "index.set_size=3", "index.lists_per_user=one",
            "index.train_lists_per_user=every_positive", "index.train_targets=every_slice",
            "index.negative_sampling=active", "index.active_min_slices=2"]


def _positives():
    """(user, slice) -> positive items of the in-window rows (slices are local days here)."""
    out = {}
    for u, i, t, label in TOY + random_rows():
        day = (t - ts(0, 0)) // 86400
        if label == 1 and 0 <= day < 9:
            out.setdefault((u, day), set()).add(i)
    return out


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("slices_options")
    write_ingest(root / "work", TOY + random_rows())
    return run_index(load_config("sample", "score", "local", _overrides(root)))


def test_train_rows_per_positive_of_every_slice_eval_lists_one_per_user(built):
    pos = _positives()
    slices_of = {}
    for (_, t), items in pos.items():
        for i in items:
            slices_of.setdefault(i, set()).add(t)
    active = {i for i, slices in slices_of.items() if len(slices) >= 2}  # of all 9 slices
    assert 10 < len(active) < 40
    train = pq.read_table(f"{built['uri']}/samples/train").to_pylist()
    assert sorted((r["user"], r["cut"], r["candidates"][0]) for r in train) == sorted(
        (u, t, i) for (u, t), items in pos.items() if 1 <= t <= 6 for i in items)
    for split, cuts in (("train", range(1, 7)), ("valid", [7]), ("test", [8])):
        rows = pq.read_table(f"{built['uri']}/samples/{split}").to_pylist()
        expected = {key for key in pos if key[1] in cuts}
        if split != "train":
            assert sorted((r["user"], r["cut"]) for r in rows) == sorted(expected)
        for r in rows:
            key = (r["user"], r["cut"])
            assert r["candidates"][0] in pos[key] and not set(r["candidates"][1:]) & pos[key]
            assert set(r["candidates"][1 + r["real_negatives"]:]) <= active
    m = built["manifest"]
    assert m["train_slices"] == [1, 2, 3, 4, 5, 6] and m["lists_per_user"] == "one"
    assert m["train_lists_per_user"] == "every_positive"
    assert m["counts"]["samples_valid"] == 3 and m["counts"]["samples_test"] == 3


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _is_java(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "java"
    except OSError:
        return False


def _table(uri):
    rows = pq.read_table(uri).to_pylist()
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


def test_killed_jvm_then_rerun_equals_uninterrupted_run(built, tmp_path):
    write_ingest(tmp_path / "work", TOY + random_rows())
    overrides = _overrides(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(overrides)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tmp_path / "work"
    deadline = time.monotonic() + 300
    # Mid-index: the staged folder holds its first table, the later steps have not run.
    while not list(work.glob("index.tmp-*/user_sets/_SUCCESS")):
        assert child.poll() is None and time.monotonic() < deadline, "index child ended early"
        time.sleep(0.05)
    jvms = [p for p in _descendants(child.pid) if _is_java(p)]
    assert jvms, "no Spark JVM under the index child"
    for pid in jvms:
        os.kill(pid, signal.SIGKILL)
    try:
        rc = child.wait(timeout=120)
    except subprocess.TimeoutExpired:  # a driver stuck on the dead gateway is killed too
        child.kill()
        rc = child.wait()
    assert rc != 0 and not (work / "index").exists()  # nothing half-written was published

    rerun = run_index(load_config("sample", "score", "local", overrides))
    assert not rerun["skipped"]
    for table in TABLES:
        assert _table(f"{rerun['uri']}/{table}") == _table(f"{built['uri']}/{table}"), table
    assert rerun["manifest"]["counts"] == built["manifest"]["counts"]


def test_slices_on_unsliced_data_is_one_clear_error(spark, tmp_path):
    write_ingest(tmp_path / "work", TOY)
    cfg = load_config("sample", "score", "local",
                      [*_overrides(tmp_path), "dataset.slice_days=null", "dataset.num_slices=null"])
    with pytest.raises(ValueError, match="index.protocol=slices needs dataset.slice_days"):
        run_index(cfg)
