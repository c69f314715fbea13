"""``seqrec recommend`` and the served model, end to end on the real stages (issue 24).

A SASRec is trained on a generated Amazon reviews file (text ids) from which five users
were held out, registered as champion, and asked for every user's top-K: once on its own
index, then after the held-out users came back, when ingest has renumbered every id. The
same champion serves the same users over HTTP with ``mlflow models serve``.
"""

from __future__ import annotations

import calendar
import datetime as dt
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conf.loading import load_config

NAME = "sasrec-rec"
HELD_OUT = 5
K = 20
SMALL = ["generate.users=540", "generate.items=650", "generate.rows=5400",
         "generate.communities=10", "train.batch_size=64", "train.epochs=2",
         "train.cpus_per_worker=1", "train.full_rank_users=0", f"recommend.k={K}",
         "spark.master=local[2]", "spark.shuffle_partitions=4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reviews(raw: Path) -> tuple[Path, list[str]]:
    path = raw / "reviews_Sample_5.json.gz"
    with gzip.open(path, "rt") as f:
        return path, f.read().splitlines()


def _write(path: Path, lines: list[str]) -> None:
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")


def _frame(uri: str) -> pd.DataFrame:
    return pd.read_parquet(uri).sort_values(["user_id", "rank"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, spark):
    """A champion trained without five users of the file: (config, the full file's lines,
    the held-out user ids, the users it was trained on)."""
    import ray

    from flows.champion import register_and_promote
    from spark_jobs.index import run_index
    from spark_jobs.ingest import run_ingest
    from spark_jobs.sample_data import generate
    from trainers.train import run_training

    root = tmp_path_factory.mktemp("recommend")
    cfg = load_config("sample-loo", "sasrec", "local", [
        f"paths.raw_dir={root}/raw", f"paths.work_dir={root}/work",
        f"tracking.uri=sqlite:///{root}/mlflow.db", f"tracking.artifact_location={root}/mla",
        *SMALL])
    generate(cfg)
    path, lines = _reviews(Path(cfg.paths.raw_dir))
    users = sorted({json.loads(line)["reviewerID"] for line in lines})
    held_out = users[::len(users) // HELD_OUT][:HELD_OUT]
    _write(path, [x for x in lines if json.loads(x)["reviewerID"] not in held_out])
    run_ingest(cfg)
    run_index(cfg)
    from trainers.snapshot import snapshot_of_index

    known = list(snapshot_of_index(cfg.paths.work_dir, False).user_ids[1:])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_training(cfg)
        decision = register_and_promote(cfg.tracking.uri, NAME, f"runs:/{result['run_id']}/model",
                                        result["run_id"], result["valid"]["mrr"])
        assert decision.promoted
        yield cfg, lines, held_out, known
    finally:
        ray.shutdown()


def test_recommend_every_user_in_original_ids_then_skip_then_a_users_file(trained, tmp_path):
    from trainers.recommend import run_recommend
    from trainers.snapshot import snapshot_of_index

    cfg, lines, held_out, _ = trained
    first = run_recommend(cfg, NAME)
    m = first["manifest"]
    today = snapshot_of_index(cfg.paths.work_dir, False)
    assert not first["skipped"] and first["uri"].endswith(f"recommendations/{NAME}/v1")
    assert (m["users"], m["cold_users"], m["dropped_events"]) == (today.num_users, 0, 0)
    assert m["rows"] == K * today.num_users and m["version"] == 1 and m["k"] == K
    frame = _frame(first["uri"])
    assert frame["user_id"].map(type).eq(str).all() and frame["item_id"].map(type).eq(str).all()
    assert set(frame["user_id"]) == set(today.user_ids[1:])
    assert not set(frame["user_id"]) & set(held_out)
    assert frame.groupby("user_id")["rank"].apply(lambda r: list(r) == [*range(1, K + 1)]).all()
    assert (frame.groupby("user_id")["score"].apply(lambda s: s.is_monotonic_decreasing)).all()
    # what the user reviewed inside the dataset's window: ingest filters the generator's
    # stray reviews of 2013 and 2015 out of the window (and quarantines a broken time), so
    # no history holds them and a model may rank them
    start = calendar.timegm(cfg.dataset.start.timetuple())
    end = calendar.timegm((cfg.dataset.last_day + dt.timedelta(days=1)).timetuple())
    seen = {(r["reviewerID"], r["asin"]) for r in map(json.loads, lines)
            if isinstance(r.get("unixReviewTime"), int) and start <= r["unixReviewTime"] < end}
    assert not any((u, i) in seen for u, i in zip(frame["user_id"], frame["item_id"]))
    assert len(m["examples"]) == 3 and len(m["examples"][0]["top"]) == 10

    again = run_recommend(cfg, NAME)
    assert again["skipped"] and again["manifest"] == m
    # where and how fast is not what: other actors or batches find the same lists done
    busier = cfg.model_copy(update={"recommend": cfg.recommend.model_copy(
        update={"actors": 1, "users_per_batch": 7})})
    assert run_recommend(busier, NAME)["skipped"]

    # recommend.actors 0: the same scorer in this process (no Ray) writes the same lists
    here = cfg.model_copy(update={
        "paths": cfg.paths.model_copy(update={"work_dir": str(tmp_path / "here")}),
        "recommend": cfg.recommend.model_copy(update={"actors": 0, "users_per_batch": 50})})
    shutil.copytree(Path(cfg.paths.work_dir) / "index", tmp_path / "here" / "index")
    shutil.copytree(Path(cfg.paths.work_dir) / "ingest", tmp_path / "here" / "ingest")
    local = run_recommend(here, NAME)
    assert not local["skipped"] and local["manifest"]["rows"] == m["rows"]
    assert len(list(Path(local["uri"]).glob("*.parquet"))) == 1
    # the same lists, up to float near-ties: the in-process scorer batches 50 users where
    # the actors batch their own, and a matmul's summation order follows the batch's shape
    mine = _frame(local["uri"])
    pd.testing.assert_frame_equal(mine.drop(columns=["item_id", "score"]),
                                  frame.drop(columns=["item_id", "score"]))
    np.testing.assert_allclose(mine["score"], frame["score"], rtol=1e-5, atol=1e-5)
    swapped = mine["item_id"] != frame["item_id"]
    assert swapped.mean() < 1e-3, frame[swapped].head()

    listed = tmp_path / "users.txt"
    known = frame["user_id"].iloc[0]
    listed.write_text(f"user_id\n{known}\nNOBODY\n")
    some = run_recommend(cfg, NAME, users_file=str(listed))
    assert some["uri"].endswith("/v1-users-" + some["manifest"]["input_hash"][-16:][:8])
    assert some["manifest"]["users_not_in_index"] == 1
    picked = _frame(some["uri"])
    assert picked[picked["user_id"] == known]["item_id"].tolist() == \
        frame[frame["user_id"] == known]["item_id"].tolist()
    nobody = picked[picked["user_id"] == "NOBODY"]
    assert len(nobody) == K and nobody["score"].is_monotonic_decreasing  # popularity counts
    assert _frame(first["uri"]).equals(frame)  # the all-users output is left alone


def test_the_champion_recommends_on_a_renumbered_index_through_original_ids(trained):
    """The held-out users return: ingest renumbers every user, the champion still reads
    today's histories by original id; the returning users get popularity's ranking and
    everyone else exactly what they got before."""
    from spark_jobs.index import run_index
    from spark_jobs.ingest import run_ingest
    from trainers.recommend import run_recommend
    from trainers.snapshot import snapshot_of_index

    cfg, lines, held_out, _ = trained
    before = _frame(run_recommend(cfg, NAME)["uri"])
    path, _ = _reviews(Path(cfg.paths.raw_dir))
    _write(path, lines)
    run_ingest(cfg)
    run_index(cfg)
    today = snapshot_of_index(cfg.paths.work_dir, False)
    # the held-out users, and any the 5-core had dropped without them
    new = sorted(set(today.user_ids[1:]) - set(before["user_id"]))
    assert set(held_out) & set(new)
    result = run_recommend(cfg, NAME)
    m = result["manifest"]
    assert not result["skipped"] and m["cold_users"] == len(new)
    assert m["users"] == today.num_users
    after = _frame(result["uri"])
    warm = after[~after["user_id"].isin(new)].reset_index(drop=True)
    ids = ["user_id", "item_id", "rank"]
    assert warm[ids].equals(before[ids])  # scores: the same up to float batching order
    assert np.allclose(warm["score"], before["score"], rtol=1e-5)
    returning = after[after["user_id"] == new[0]]
    assert len(returning) == K and returning["score"].is_monotonic_decreasing
    assert returning["score"].iloc[0] == int(returning["score"].iloc[0])  # an item's count


def test_mlflow_models_serve_answers_in_original_ids(trained):
    """The registered pyfunc (logged from code) behind ``mlflow models serve`` on 127.0.0.1
    answers a POST to /invocations with the users' top-k, the batch stage's own lists."""
    from trainers.recommend import run_recommend

    cfg, _, _, known = trained
    batch = _frame(run_recommend(cfg, NAME, version=1)["uri"])
    port = _free_port()
    venv_bin = Path(sys.executable).parent  # mlflow runs `uvicorn` from the PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": cfg.tracking.uri,
           "MLFLOW_REGISTRY_URI": cfg.tracking.uri,
           "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    mlflow_cli = venv_bin / "mlflow"
    server = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", f"models:/{NAME}@champion",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        users = known[:2]  # their histories are the model's own (the index may be newer)
        body = json.dumps({"dataframe_split": {"columns": ["user_id", "k"],
                                               "data": [[u, 5] for u in users]}}).encode()
        deadline, answer = time.time() + 180, None
        while answer is None:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                                 {"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = json.loads(response.read())
            except OSError:
                assert server.poll() is None, "mlflow models serve exited"
                assert time.time() < deadline, "mlflow models serve did not answer in 180 s"
                time.sleep(1)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # uvicorn runs in its process group
        server.wait(timeout=30)
    served = pd.DataFrame(answer["predictions"])
    assert list(served.columns) == ["user_id", "item_id", "rank", "score"]
    for user in users:
        got = served[served["user_id"] == user].sort_values("rank")
        assert got["rank"].tolist() == [1, 2, 3, 4, 5]
        assert got["item_id"].tolist() == batch[batch["user_id"] == user]["item_id"].tolist()[:5]


def test_a_users_file_of_text_for_integer_ids_is_one_clear_error(tmp_path):
    import numpy as np

    from trainers.recommend import _users
    from trainers.snapshot import Snapshot, translate

    snap = Snapshot(protocol="leave_one_out", num_slices=0, string_ids=False,
                    user_ids=np.asarray(["", "7", "42"]), item_ids=np.asarray(["", "5"]),
                    offsets=np.asarray([0, 0, 1, 2]), items=np.asarray([1, 1], dtype=np.int32),
                    labels=np.asarray([1, 1], dtype=np.int8), slices=None, user_sets=None,
                    item_sets=None)
    moved = translate(snap, snap)
    listed = tmp_path / "users.txt"
    listed.write_text("042\n99\n")  # integers as a person writes them: 042 is user 42
    users, ids, missing = _users(snap, moved, str(listed))
    assert users.tolist() == [2, snap.num_users + 1] and missing == 1
    listed.write_text("42\nA3K9\n")
    with pytest.raises(ValueError, match="integers; not: A3K9"):
        _users(snap, moved, str(listed))
