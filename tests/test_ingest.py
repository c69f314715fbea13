"""Ingest stage on hand-written raw files: every malformed line is placed by hand, so the
counts per reason are exact. Runs the real Spark job on the shared local session."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conf.loading import ConfigError, load_config
from spark_jobs.ingest import run_ingest

UTC = dt.timezone.utc
# 2017-11-25 00:00 in Asia/Shanghai is 2017-11-24 16:00 UTC: the Taobao window opens there.
TAOBAO_START = int(dt.datetime(2017, 11, 24, 16, tzinfo=UTC).timestamp())
TAOBAO_END = TAOBAO_START + 9 * 86400  # 2017-12-04 00:00 Shanghai, exclusive


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _table(uri: str) -> list[dict]:
    return pq.read_table(uri).to_pylist()


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


S, E = TAOBAO_START, TAOBAO_END
TAOBAO_LINES = [
    (f"1,100,5,pv,{S}", None),  # 2017-11-25 00:00:00 Shanghai: first second in the window
    (f"1,101,5,pv,{S - 1}", "out_of_window"),  # 2017-11-24 23:59:59 Shanghai
    (f"2,100,5,pv,{E - 1}", None),  # last second of 2017-12-03 Shanghai
    (f"2,102,5,pv,{E}", "out_of_window"),
    (f"3,103,5,buy,{S + 100}", "behavior_not_kept"),
    (f"10,100,5,pv,{S + 200}", None),
    (f"10,100,5,pv,{S + 200}", "duplicate"),
    ("1,100,5,pv", "wrong_field_count"),
    ("", "wrong_field_count"),
    (f"1,100,5,pv,{S},9", "wrong_field_count"),
    (f"u1,100,5,pv,{S}", "non_numeric_id"),
    (f"1,x9,5,pv,{S}", "non_numeric_id"),
    (f"007,100,5,pv,{S}", "non_numeric_id"),  # ids are canonical: "007" is not user 7
    (f"-3,100,5,pv,{S}", "non_numeric_id"),
    (f"1,100.0,5,pv,{S}", "non_numeric_id"),
    (f"1,99999999999999999999,5,pv,{S}", "non_numeric_id"),  # beyond int64
    ("1,100,5,pv,2017-11-25", "bad_timestamp"),
    (f"1,100,5,click,{S}", "unknown_behavior"),
    (f"9,104,5,pv,{S + 300}", None),
    (f"2,104,5, pv ,{S + 400}", None),  # padded fields are trimmed
]


def _counts(expected: list[tuple[str, str | None]], reasons: tuple[str, ...]) -> dict[str, int]:
    return {r: sum(1 for _, why in expected if why == r) for r in reasons}


TAOBAO_KEPT = {(f[0], f[1], int(f[4]), f[3].strip(), 1)
               for f in (line.split(",") for line, why in TAOBAO_LINES if why is None)}


def _raw_interactions(out: Path) -> set[tuple]:
    """The written interactions as (raw user, raw item, ts, behavior, label)."""
    users = {r["idx"]: r["raw"] for r in _table(str(out / "id_maps" / "users"))}
    items = {r["idx"]: r["raw"] for r in _table(str(out / "id_maps" / "items"))}
    return {(users[r["user_idx"]], items[r["item_idx"]], r["ts"], r["behavior"], r["label"])
            for r in _table(str(out / "interactions"))}


def test_taobao_counts_ids_window_rerun_and_rebuild(spark, make_config, tmp_path):
    _write(tmp_path / "raw" / "UserBehavior.csv", [line for line, _ in TAOBAO_LINES])
    cfg = make_config("sample")
    result = run_ingest(cfg)
    assert not result["skipped"]
    counts = result["manifest"]["counts"]
    from spark_jobs.ingest import FILTER_REASONS
    from spark_jobs.readers import FORMATS

    reasons = FORMATS["taobao"].reasons
    assert counts["quarantined"] == _counts(TAOBAO_LINES, reasons)
    assert counts["filtered"] == _counts(TAOBAO_LINES, FILTER_REASONS)
    assert counts["kept"] == sum(1 for _, why in TAOBAO_LINES if why is None) == 5
    assert counts["input_lines"] == len(TAOBAO_LINES) and counts["header_lines"] == 0
    assert (counts["duplicates"], counts["users"], counts["items"]) == (1, 4, 2)
    assert result["manifest"]["time_range"]["min_ts"] == S
    assert result["manifest"]["time_range"]["max_ts"] == E - 1

    out = Path(result["uri"])
    bad = {(r["file"], r["raw"], r["reason"]) for r in _table(str(out / "quarantine"))}
    assert bad == {("UserBehavior.csv", line, why) for line, why in TAOBAO_LINES
                   if why in reasons}

    # Id maps round-trip raw -> idx -> raw; idx is 1..n in numeric order of the raw id.
    users = {r["raw"]: r["idx"] for r in _table(str(out / "id_maps" / "users"))}
    items = {r["raw"]: r["idx"] for r in _table(str(out / "id_maps" / "items"))}
    assert users == {"1": 1, "2": 2, "9": 3, "10": 4} and items == {"100": 1, "104": 2}
    rows = pq.read_table(str(out / "interactions"))
    assert rows.schema.names[-1] == "seq"
    assert [str(t) for t in rows.schema.types] == ["int32", "int32", "int64", "string",
                                                   "float", "int8", "int64"]
    assert _raw_interactions(out) == TAOBAO_KEPT

    before = _snapshot(out)
    again = run_ingest(cfg)
    assert again["skipped"] and "unchanged" in again["reason"]
    assert _snapshot(out) == before

    wider = run_ingest(make_config("sample", overrides=["dataset.behaviors=[pv, buy]"]))
    assert not wider["skipped"]
    assert wider["manifest"]["counts"]["kept"] == 6
    assert wider["manifest"]["counts"]["filtered"]["behavior_not_kept"] == 0
    assert wider["manifest"]["config_hash"] != result["manifest"]["config_hash"]
    assert not list(out.parent.glob("ingest.*"))  # no staged or old folders left behind


def test_id_maps_over_broadcast_max_ids_give_the_same_interactions(spark, make_config, tmp_path):
    _write(tmp_path / "raw" / "UserBehavior.csv", [line for line, _ in TAOBAO_LINES])
    result = run_ingest(make_config("sample", overrides=["spark.broadcast_max_ids=0"]))
    counts = result["manifest"]["counts"]
    assert (counts["kept"], counts["duplicates"], counts["users"]) == (5, 1, 4)
    assert _raw_interactions(Path(result["uri"])) == TAOBAO_KEPT


def _local_midnight_utc(month: int, day: int) -> int:
    from zoneinfo import ZoneInfo

    return int(dt.datetime(2015, month, day, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp())


def test_tmall_mmdd_actions_and_quarantine(spark, make_config, tmp_path):
    header = "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type"
    lines = [
        ("1,10,5,7,8,511,0", None),
        ("1,11,5,7,,829,1", None),  # empty brand_id is normal in the public file
        ("2,10,5,7,8,1111,2", None),
        ("2,12,5,7,8,1111,3", None),
        ("3,10,5,7,8,0231,0", "bad_timestamp"),  # 31 February
        ("3,10,5,7,8,1301,0", "bad_timestamp"),
        ("3,10,5,7,8,11-11,0", "bad_timestamp"),
        ("3,10,5,7,8,1111,4", "unknown_behavior"),
        ("3,10,5,7,8,1111", "wrong_field_count"),
        ("a,10,5,7,8,1111,0", "non_numeric_id"),
        ("4,13,5,7,8,510,0", "out_of_window"),  # day before dataset.start 2015-05-11
    ]
    _write(tmp_path / "raw" / "user_log_format1.csv", [header] + [line for line, _ in lines])
    result = run_ingest(make_config("tmall"))
    counts = result["manifest"]["counts"]
    assert counts["header_lines"] == 1 and counts["input_lines"] == len(lines)
    assert counts["quarantined"] == {"wrong_field_count": 1, "non_numeric_id": 1,
                                     "bad_timestamp": 3, "unknown_behavior": 1}
    assert counts["filtered"]["out_of_window"] == 1 and counts["kept"] == 4

    out = Path(result["uri"])
    users = {r["idx"]: r["raw"] for r in _table(str(out / "id_maps" / "users"))}
    items = {r["idx"]: r["raw"] for r in _table(str(out / "id_maps" / "items"))}
    got = {(users[r["user_idx"]], items[r["item_idx"]], r["ts"], r["behavior"])
           for r in _table(str(out / "interactions"))}
    assert got == {
        ("1", "10", _local_midnight_utc(5, 11), "click"),
        ("1", "11", _local_midnight_utc(8, 29), "cart"),
        ("2", "10", _local_midnight_utc(11, 11), "purchase"),
        ("2", "12", _local_midnight_utc(11, 11), "favourite"),
    }
    assert _local_midnight_utc(11, 11) == int(dt.datetime(2015, 11, 10, 16, tzinfo=UTC).timestamp())


def test_ratings_labels_and_iterative_kcore(spark, make_config, tmp_path):
    t = int(dt.datetime(2010, 1, 1, tzinfo=UTC).timestamp())
    lines = [
        (f"1,10,5,{t}", None),
        (f"1,11,3,{t + 1}", None),  # 3 <= negative_max_rating: a real negative
        (f"2,10,4,{t + 2}", None),  # 4 >= positive_min_rating: positive
        (f"2,11,4.5,{t + 3}", None),
        (f"3,10,1,{t + 4}", "kcore"),  # user 3 has one interaction
        (f"4,10,5,{t + 5}", "kcore"),  # user 4 falls below 2 once item 12 is gone (round 2)
        (f"4,12,5,{t + 6}", "kcore"),  # item 12 has one interaction
        (f"2,10,3.5,{t + 7}", "neutral_rating"),
        (f"2,10,abc,{t}", "bad_rating"),
        (f"2,10,NaN,{t}", "bad_rating"),
        (f"5,10,,{t}", "bad_rating"),
        (f"2,10,6,{t}", "bad_rating"),  # off the 1..5 scale
        (f"2,10,0,{t}", "bad_rating"),
        ("3,13,2,1000", "out_of_window"),
    ]
    _write(tmp_path / "raw" / "ratings.csv",
           ["user,item,rating,timestamp"] + [line for line, _ in lines])
    result = run_ingest(make_config("ccmr", overrides=["dataset.kcore=2"]))
    counts = result["manifest"]["counts"]
    assert counts["quarantined"]["bad_rating"] == 5
    assert counts["filtered"] == {"behavior_not_kept": 0, "out_of_window": 1,
                                  "neutral_rating": 1, "duplicate": 0, "kcore": 3}
    assert (counts["kept"], counts["users"], counts["items"]) == (4, 2, 2)

    out = Path(result["uri"])
    users = {r["idx"]: r["raw"] for r in _table(str(out / "id_maps" / "users"))}
    items = {r["idx"]: r["raw"] for r in _table(str(out / "id_maps" / "items"))}
    got = {(users[r["user_idx"]], items[r["item_idx"]]): (r["rating"], r["label"], r["behavior"])
           for r in _table(str(out / "interactions"))}
    assert got == {("1", "10"): (5.0, 1, "rating"), ("1", "11"): (3.0, 0, "rating"),
                   ("2", "10"): (4.0, 1, "rating"), ("2", "11"): (4.5, 1, "rating")}


def test_wrong_header_is_one_clear_error_before_spark(make_config, tmp_path):
    path = _write(tmp_path / "raw" / "user_log_format1.csv", [f"1,100,5,pv,{S}"])
    with pytest.raises(ValueError) as err:
        run_ingest(make_config("tmall"))
    message = str(err.value)
    assert str(path) in message and "tmall" in message and f"1,100,5,pv,{S}" in message
    assert "time_stamp MMDD" in message  # the expected layout is spelled out


def test_file_where_no_line_parses_is_one_clear_error(spark, make_config, tmp_path):
    header = "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type"
    path = _write(tmp_path / "raw" / "UserBehavior.csv", [header, "1,10,5,7,8,511,0"])
    with pytest.raises(ValueError) as err:
        run_ingest(make_config("sample"))
    message = str(err.value)
    assert str(path) in message and "taobao" in message and header in message
    work = tmp_path / "work"  # nothing but the logs the one-line error names
    assert not work.exists() or {p.name for p in work.iterdir()} <= {"logs"}


def test_missing_raw_dir_or_files_names_both_settings(make_config, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        run_ingest(make_config("sample"))
    assert "paths.raw_dir" in str(err.value) and "dataset.files" in str(err.value)
    _write(tmp_path / "raw" / "other.csv", ["x"])
    with pytest.raises(FileNotFoundError) as err:
        run_ingest(make_config("sample"))
    assert "UserBehavior.csv" in str(err.value) and str(tmp_path / "raw") in str(err.value)


def test_behavior_the_format_never_produces_is_rejected(make_config, tmp_path):
    _write(tmp_path / "raw" / "UserBehavior.csv", [f"1,100,5,pv,{S}"])
    with pytest.raises(ValueError, match=r"dataset.behaviors .*'click'"):
        run_ingest(make_config("sample", overrides=["dataset.behaviors=[pv, click]"]))


@pytest.mark.parametrize("text, key", [("dataset:\n  kcorr: 2\n", "dataset.kcorr"),
                                       ("dataset:\n  kcore: many\n", "dataset.kcore")])
def test_config_errors_name_key_and_file(tmp_path, text, key):
    extra = tmp_path / "mine.yaml"
    extra.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config("sample", config_file=extra)
    assert key in str(err.value) and str(extra) in str(err.value)


# k = 2. Items i1:3, i2:2, i3:2; user 4 has one row. items_then_users keeps every item, then
# drops user 4 (6 rows, i3 left with one). Iterative drops u4, then i3, then u3 (4 rows).
KCORE_LINES = ["1,1,5,{t}", "1,2,5,{t}", "2,1,5,{t}", "2,2,5,{t}", "3,1,5,{t}", "3,3,5,{t}",
               "4,3,5,{t}"]


@pytest.mark.parametrize("mode, kept, users, items", [("iterative", 4, 2, 2),
                                                       ("items_then_users", 6, 3, 3)])
def test_kcore_modes_and_published_sizes_beside_ours(spark, make_config, tmp_path, caplog,
                                                     mode, kept, users, items):
    import logging

    t = int(dt.datetime(2010, 1, 1, tzinfo=UTC).timestamp())
    _write(tmp_path / "raw" / "ratings.csv",
           ["user,item,rating,timestamp"] + [line.format(t=t) for line in KCORE_LINES])
    caplog.set_level(logging.INFO, logger="spark_jobs.ingest")
    result = run_ingest(make_config("ccmr", overrides=[
        "dataset.kcore=2", f"dataset.kcore_mode={mode}",
        "dataset.published={users: 2, items: 2, interactions: 4}"]))
    m = result["manifest"]
    assert (m["counts"]["kept"], m["counts"]["filtered"]["kcore"]) == (kept, 7 - kept)
    assert m["sizes"] == {"ours": {"users": users, "items": items, "interactions": kept},
                          "published": {"users": 2, "items": 2, "interactions": 4}}
    assert (f"ingest ccmr: {kept} interactions, {users} users, {items} items (published: 4 "
            "interactions, 2 users, 2 items)") in caplog.text
    assert m["shape"] == {
        "ours": {"events_per_user": round(kept / users, 3),
                 "sparsity": round(1 - kept / (users * items), 6)},
        "published": {"events_per_user": 2.0, "sparsity": 0.0}}
    assert f"events a user, sparsity {100 * (1 - kept / (users * items)):.3f} %" in caplog.text


def test_a_core_that_unravels_over_many_rounds(spark, make_config, tmp_path):
    """A path user 1 - item 1 - user 2 - item 2 - ... has no 2-core, and each round strips
    only its two ends: 14 rounds here. Each round reads the previous one three times, so a
    plan kept across rounds grows threefold a round (3^14 nodes: ingest stalled); the
    rounds cut it, and a 2-by-2 block beside the path survives alone."""
    t = int(dt.datetime(2010, 1, 1, tzinfo=UTC).timestamp())
    path = [f"{u},{i},5,{t}" for n in range(1, 15) for u, i in ((n, n), (n + 1, n))]
    block = [f"{u},{i},5,{t}" for u in (101, 102) for i in (101, 102)]
    _write(tmp_path / "raw" / "ratings.csv", ["user,item,rating,timestamp", *path, *block])
    m = run_ingest(make_config("ccmr", overrides=["dataset.kcore=2",
                                                  "dataset.kcore_mode=iterative"]))["manifest"]
    assert (m["counts"]["kept"], m["counts"]["filtered"]["kcore"]) == (4, len(path))
    assert (m["counts"]["users"], m["counts"]["items"]) == (2, 2)


@pytest.mark.parametrize("overrides, message", [
    (["dataset.num_slices=null"], "slice_days and num_slices"),
    (["dataset.last_day=2017-12-31"], "sliced data needs start and no last_day"),
    (["dataset.start=null"], "sliced data needs start"),
    (["dataset.slice_days=null", "dataset.num_slices=null", "dataset.window=latest"],
     "window: latest"),
    (["dataset.slice_days=null", "dataset.num_slices=null", "dataset.last_day=2017-11-24"],
     "last_day must not be before start"),
    (["dataset.negatives_file=x_sample.txt"], "negatives_file is read only with format 's3rec'"),
    (["dataset.format=s3rec", "dataset.slice_days=null", "dataset.num_slices=null"],
     "format 's3rec' has no timestamps"),
    (["dataset.format=amazon_ratings"], "needs positive_min_rating and rating_scale"),
])
def test_window_and_format_rules_reject_bad_combinations(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("sample", overrides=overrides)


def test_unsliced_window_bounds_and_no_slices():
    open_ended = load_config("sample", overrides=[
        "dataset.slice_days=null", "dataset.num_slices=null", "dataset.start=null"]).dataset
    assert open_ended.window_bounds() == (None, None) and open_ended.end is None
    with pytest.raises(ValueError, match="has no slices"):
        open_ended.slice_bounds()
    year = load_config("sample", overrides=[
        "dataset.slice_days=null", "dataset.num_slices=null", "dataset.start=2019-01-01",
        "dataset.last_day=2019-12-31", "dataset.timezone=UTC"]).dataset
    assert year.end == dt.date(2020, 1, 1)
    assert year.window_bounds() == (int(dt.datetime(2019, 1, 1, tzinfo=UTC).timestamp()),
                                    int(dt.datetime(2020, 1, 1, tzinfo=UTC).timestamp()))
