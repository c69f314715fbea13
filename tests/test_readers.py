"""Every public format on tiny hand-written files: exact counts per reason, string ids that
round-trip through the id maps, seq as the tie-break of equal ts, JSON quarantine reasons, a
truncated gzip, and S3-Rec sequences with their fixed negatives. Runs the real ingest job on
the shared local Spark session."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from spark_jobs.ingest import run_ingest

UTC = dt.timezone.utc
DAY = int(dt.datetime(2014, 1, 1, tzinfo=UTC).timestamp())  # Amazon times are UTC midnights
UNSLICED = ["dataset.start=null", "dataset.slice_days=null", "dataset.num_slices=null",
            "dataset.timezone=UTC", "dataset.kcore=0", "dataset.drop_duplicates=true"]
# Ratings >= 4 positive, <= 2 real negatives, 3 neutral (dropped and counted).
RATED = ["dataset.behaviors=[rating]", "dataset.positive_min_rating=4",
         "dataset.negative_max_rating=2", "dataset.rating_scale=[1, 5]"]


def _config(make_config, fmt: str, files: list[str], extra: list[str] = ()):
    return make_config("sample", overrides=[f"dataset.format={fmt}",
                                            f"dataset.files={json.dumps(files)}",
                                            *UNSLICED, *extra])


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _table(uri: Path) -> list[dict]:
    return pq.read_table(str(uri)).to_pylist()


def _maps(out: Path) -> tuple[dict[int, str], dict[int, str]]:
    return tuple({r["idx"]: r["raw"] for r in _table(out / "id_maps" / name)}
                 for name in ("users", "items"))


def _histories(out: Path) -> dict[str, list[tuple]]:
    """Raw user -> [(raw item, ts, label, seq)] in the written order, checking that each
    file is sorted by (user_idx, ts, seq) and holds each user in one file."""
    users, items = _maps(out)
    histories: dict[str, list[tuple]] = {}
    for part in sorted((out / "interactions").glob("*.parquet")):
        rows = _table(part)
        keys = [(r["user_idx"], r["ts"], r["seq"]) for r in rows]
        assert keys == sorted(keys)
        for user in {r["user_idx"] for r in rows}:
            assert users[user] not in histories  # each user's rows in one file
        for r in rows:
            histories.setdefault(users[r["user_idx"]], []).append(
                (items[r["item_idx"]], r["ts"], r["label"], r["seq"]))
    return histories


def _bad(out: Path) -> set[tuple[str, str, str]]:
    return {(r["file"], r["raw"], r["reason"]) for r in _table(out / "quarantine")}


# Amazon 2014 ratings, two files: seq follows the sorted file names (a before b), not the
# order of dataset.files. The comment on each line is its seq.
AMAZON_A = [
    (f"A2ZY,0000031852,5.0,{DAY}", None),  # 0
    (f"A1BC,0000031852,1.0,{DAY}", None),  # 1: <= 2, a real negative
    (f"A2ZY,B00XYZ,5.0,{DAY}", None),  # 2: same day as 0: after it, by line order
    (f",B00XYZ,3.0,{DAY}", "empty_id"),  # 3
    (f"A1BC,B00XYZ,6.0,{DAY}", "bad_rating"),  # 4: off the 1..5 scale
    ("A1BC,B00XYZ,4.0", "wrong_field_count"),  # 5
    (f"A1BC,B00XYZ,3.0,{DAY}", "neutral_rating"),  # 6
]
AMAZON_B = [
    (f"A2ZY,00001,4.0,{DAY}", None),  # 7: same day again, last of A2ZY's
    (f"A2ZY,0000031852,5.0,{DAY}", "duplicate"),  # 8: line 0 again; the first is kept
    (f"u 1,B00XYZ,2.0,{DAY + 86400}", None),  # 9: an inner space is part of the id
]


def test_amazon_ratings_string_ids_text_order_and_line_order_ties(spark, make_config, tmp_path):
    _write(tmp_path / "raw" / "ratings_a.csv", [line for line, _ in AMAZON_A])
    _write(tmp_path / "raw" / "ratings_b.csv", [line for line, _ in AMAZON_B])
    result = run_ingest(_config(make_config, "amazon_ratings",
                                ["ratings_b.csv", "ratings_a.csv"], RATED))
    counts = result["manifest"]["counts"]
    assert counts["quarantined"] == {"wrong_field_count": 1, "empty_id": 1,
                                     "bad_timestamp": 0, "bad_rating": 1}
    assert counts["filtered"] == {"behavior_not_kept": 0, "out_of_window": 0,
                                  "neutral_rating": 1, "duplicate": 1, "kcore": 0}
    assert (counts["input_lines"], counts["input_records"], counts["kept"]) == (10, 10, 5)
    assert result["manifest"]["window"]["start_ts"] is None
    assert "text order" in result["manifest"]["id_order"]

    out = Path(result["uri"])
    users, items = _maps(out)
    # Text order: "0000031852" < "00001" (a numeric order would put 00001 = 1 first).
    assert users == {1: "A1BC", 2: "A2ZY", 3: "u 1"}
    assert items == {1: "0000031852", 2: "00001", 3: "B00XYZ"}
    assert _histories(out) == {
        "A1BC": [("0000031852", DAY, 0, 1)],
        "A2ZY": [("0000031852", DAY, 1, 0), ("B00XYZ", DAY, 1, 2), ("00001", DAY, 1, 7)],
        "u 1": [("B00XYZ", DAY + 86400, 0, 9)],
    }
    assert _bad(out) == {("ratings_a.csv", line, why) for line, why in AMAZON_A
                         if why in ("empty_id", "bad_rating", "wrong_field_count")}


@pytest.mark.parametrize("fmt, name, lines, kept, quarantined", [
    ("amazon_ratings_2018", "Toys.csv",
     [f"0000031852,A2ZY,5.0,{DAY}", f"B00X,A2ZY,1.5,{DAY + 1}", "B00X,A2ZY,4.5"],
     {("A2ZY", "0000031852", DAY, 1), ("A2ZY", "B00X", DAY + 1, 0)},
     {"wrong_field_count": 1, "empty_id": 0, "bad_timestamp": 0, "bad_rating": 0}),
    ("movielens_100k", "u.data",
     ["196\t242\t5\t881250949", "186\t302\t1\t891717742", "196 242 3 881250949",
      "x\t1\t4\t881250949", "22\t377\t4\t8.8e8"],
     {("196", "242", 881250949, 1), ("186", "302", 891717742, 0)},
     {"wrong_field_count": 1, "non_numeric_id": 1, "bad_timestamp": 1, "bad_rating": 0}),
    ("movielens_1m", "ratings.dat",
     ["1::1193::5::978300760", "1::661::3::978302109", "2::1357::5", "2::1357::4::978298709",
      "2::07::4::978298709"],
     {("1", "1193", 978300760, 1), ("2", "1357", 978298709, 1)},
     {"wrong_field_count": 1, "non_numeric_id": 1, "bad_timestamp": 0, "bad_rating": 0}),
])
def test_delimited_rating_formats_read_their_fields_in_place(spark, make_config, tmp_path, fmt,
                                                             name, lines, kept, quarantined):
    _write(tmp_path / "raw" / name, lines)
    result = run_ingest(_config(make_config, fmt, [name], RATED))
    counts = result["manifest"]["counts"]
    assert counts["quarantined"] == quarantined and counts["kept"] == len(kept)
    assert counts["input_lines"] == len(lines)
    got = {(user, item, ts, label) for user, rows in _histories(Path(result["uri"])).items()
           for item, ts, label, _ in rows}
    assert got == kept


def _review(**fields) -> str:
    return json.dumps(fields)


AMAZON_REVIEWS = [
    (_review(reviewerID="A2ZY", asin="0000031852", reviewerName="x", helpful=[0, 0],
             reviewText="ok", overall=5.0, summary="s", unixReviewTime=DAY,
             reviewTime="01 1, 2014"), None),
    (_review(reviewerID="A1BC", asin="0000031852", overall=4, unixReviewTime=DAY), None),
    ('{"reviewerID": "A1BC", "asin": "B00X", "overall": 5.0, "unixReviewTime": 13', "bad_json"),
    ("not json", "bad_json"),
    (_review(reviewerID="A1BC", overall=5.0, unixReviewTime=DAY), "missing_field"),
    (_review(reviewerID="A1BC", asin=None, overall=5.0, unixReviewTime=DAY), "missing_field"),
    ("[1, 2]", "missing_field"),  # JSON, but no object
    (_review(reviewerID="A1BC", asin="B00X", overall="5.0", unixReviewTime=DAY), "wrong_type"),
    (_review(reviewerID=12, asin="B00X", overall=5.0, unixReviewTime=DAY), "wrong_type"),
    (_review(reviewerID="A1BC", asin="B00X", overall=5.0, unixReviewTime=str(DAY)),
     "wrong_type"),
    (_review(reviewerID="", asin="B00X", overall=5.0, unixReviewTime=DAY), "empty_id"),
    (_review(reviewerID="A1BC", asin="B00X", overall=5.0, unixReviewTime=10**14),
     "bad_timestamp"),
    (_review(reviewerID="A1BC", asin="B00X", overall=7.0, unixReviewTime=DAY), "bad_rating"),
    (_review(reviewerID="A1BC", asin="B00X", overall=2.0, unixReviewTime=DAY + 86400,
             style={"Size:": " 1"}, verified=True), None),  # 2018 fields are ignored
]


def test_amazon_reviews_json_gz_quarantines_by_reason(spark, make_config, tmp_path):
    path = tmp_path / "raw" / "reviews_Toys_5.json.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress("".join(f"{line}\n" for line, _ in AMAZON_REVIEWS).encode()))
    result = run_ingest(_config(make_config, "amazon_reviews", [path.name], RATED))
    counts = result["manifest"]["counts"]
    assert counts["quarantined"] == {"bad_json": 2, "missing_field": 3, "wrong_type": 3,
                                     "empty_id": 1, "bad_timestamp": 1, "bad_rating": 1}
    assert counts["kept"] == 3 and counts["input_lines"] == len(AMAZON_REVIEWS)
    out = Path(result["uri"])
    assert _histories(out) == {
        "A1BC": [("0000031852", DAY, 1, 1), ("B00X", DAY + 86400, 0, 13)],
        "A2ZY": [("0000031852", DAY, 1, 0)],
    }
    assert _bad(out) == {(path.name, line, why) for line, why in AMAZON_REVIEWS
                         if why is not None}


@pytest.mark.parametrize("lines", [50, 20000])  # inside the header read; only Spark sees it
def test_truncated_gzip_is_one_clear_error_naming_the_file(spark, make_config, tmp_path, lines):
    good = "".join(f"{_review(reviewerID=f'A{i}', asin='B', overall=5.0, unixReviewTime=DAY)}\n"
                   for i in range(lines)).encode()
    whole = gzip.compress(good)
    path = tmp_path / "raw" / "reviews_Toys_5.json.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(ValueError) as err:
        run_ingest(_config(make_config, "amazon_reviews", [path.name], RATED))
    assert str(path) in str(err.value) and "truncated" in str(err.value)
    assert not (tmp_path / "work").exists() or not list((tmp_path / "work").rglob("*.parquet"))


def _shanghai(text: str) -> int:
    from zoneinfo import ZoneInfo

    return int(dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Asia/Shanghai"))
               .timestamp())


YELP = [
    (_review(review_id="r1", user_id="u_A", business_id="b_1", stars=5, useful=0, text="t",
             date="2019-01-01 00:00:00"), None),  # the window's first second
    (_review(user_id="u_A", business_id="b_2", stars=4.0, date="2018-12-31 23:59:59"),
     "out_of_window"),
    (_review(user_id="u_B", business_id="b_1", stars=1, date="2019-12-31 23:59:59"), None),
    (_review(user_id="u_B", business_id="b_2", stars=5, date="2020-01-01 00:00:00"),
     "out_of_window"),
    (_review(user_id="u_B", business_id="b_2", stars=5, date="2019-02-30 10:00:00"),
     "bad_timestamp"),
    (_review(user_id="u_B", business_id="b_2", stars=5, date="2019-03-01"), "bad_timestamp"),
    (_review(user_id="u_B", business_id="b_2", stars="5", date="2019-03-01 10:00:00"),
     "wrong_type"),
    (_review(user_id="u_B", business_id="b_2", stars=5, date=20190301), "wrong_type"),
    (_review(user_id="u_B", business_id="b_2", stars=5), "missing_field"),
    (_review(user_id="u_B", business_id="b_2", stars=3, date="2019-03-01 10:00:00"),
     "neutral_rating"),
]


def test_yelp_dates_in_the_dataset_zone_and_inclusive_last_day(spark, make_config, tmp_path):
    _write(tmp_path / "raw" / "review.json", [line for line, _ in YELP])
    result = run_ingest(_config(make_config, "yelp_reviews", ["review.json"], RATED + [
        "dataset.timezone=Asia/Shanghai", "dataset.start=2019-01-01",
        "dataset.last_day=2019-12-31"]))
    counts = result["manifest"]["counts"]
    assert counts["quarantined"] == {"bad_json": 0, "missing_field": 1, "wrong_type": 2,
                                     "empty_id": 0, "bad_timestamp": 2, "bad_rating": 0}
    assert counts["filtered"]["out_of_window"] == 2
    assert counts["filtered"]["neutral_rating"] == 1 and counts["kept"] == 2
    window = result["manifest"]["window"]
    assert (window["start_ts"], window["end_ts"]) == (_shanghai("2019-01-01 00:00:00"),
                                                      _shanghai("2020-01-01 00:00:00"))
    assert _histories(Path(result["uri"])) == {
        "u_A": [("b_1", _shanghai("2019-01-01 00:00:00"), 1, 0)],
        "u_B": [("b_1", _shanghai("2019-12-31 23:59:59"), 0, 2)],
    }


# S3-Rec: uid then items in time order. Users kept: 1 2 5 6 7 8 9 -> idx 1..7; items 10..14
# -> idx 1..5. The sample lines (3 negatives each here) are aligned with the sequence lines.
SEQUENCES = ["1 10 11 12 10", "2 11 13", "3 x 12", "4", "5 13 14 11", "6 10 11", "7 12 13",
             "8 14 10", "9 13 12"]
SAMPLE = [
    ("1 13 14 99", "unknown_item"),  # 99 is no item
    ("2 10 12 14", None),
    ("3 10 11 13", "unknown_user"),  # its sequence line is quarantined
    ("4 10 11 12", "unknown_user"),
    ("5 10 12 12", "duplicate_negative"),
    ("6 12 13 11", "negative_in_sequence"),  # user 6 has item 11
    ("7 10 11", "wrong_field_count"),
    ("8 11 1x 12", "non_numeric_id"),
    ("9 10 11 14", None),
]
S3REC = ["dataset.behaviors=[interaction]", "dataset.positive_min_rating=null",
         "dataset.negative_max_rating=null", "dataset.rating_scale=null",
         "dataset.negatives_file=Beauty_sample.txt", "dataset.negatives_count=3"]


def test_s3rec_sequences_positions_and_fixed_negatives(spark, make_config, tmp_path):
    _write(tmp_path / "raw" / "Beauty.txt", SEQUENCES)
    _write(tmp_path / "raw" / "Beauty_sample.txt", [line for line, _ in SAMPLE])
    result = run_ingest(_config(make_config, "s3rec", ["Beauty.txt"], S3REC))
    counts = result["manifest"]["counts"]
    assert counts["quarantined"] == {"wrong_field_count": 1, "non_numeric_id": 1}
    # 9 lines; 7 readable lines hold 17 items, each quarantined line is one record.
    assert (counts["input_lines"], counts["input_records"], counts["kept"]) == (9, 19, 17)
    assert (counts["users"], counts["items"]) == (7, 5)
    assert counts["negatives"] == {
        "lines": 9, "kept": 2,
        "quarantined": {"wrong_field_count": 1, "non_numeric_id": 1, "duplicate_negative": 1,
                        "unknown_user": 2, "unknown_item": 1, "negative_in_sequence": 1}}

    out = Path(result["uri"])
    histories = _histories(out)
    line = 1 << 20  # seq = line position << 20 | item position; ts = item position
    assert histories["1"] == [("10", 0, 1, 0), ("11", 1, 1, 1), ("12", 2, 1, 2), ("10", 3, 1, 3)]
    assert histories["5"] == [("13", 0, 1, 4 * line), ("14", 1, 1, 4 * line + 1),
                              ("11", 2, 1, 4 * line + 2)]
    assert sorted(histories) == ["1", "2", "5", "6", "7", "8", "9"]
    negatives = pq.read_table(str(out / "fixed_negatives"))
    assert [str(t) for t in negatives.schema.types] == ["int32", "list<element: int32>"]
    assert negatives.to_pylist() == [{"user": 2, "negatives": [1, 3, 5]},
                                     {"user": 7, "negatives": [1, 2, 5]}]
    assert _bad(out) == ({("Beauty.txt", "3 x 12", "non_numeric_id"),
                          ("Beauty.txt", "4", "wrong_field_count")}
                         | {("Beauty_sample.txt", raw, why) for raw, why in SAMPLE if why})
    inputs = {Path(e["path"]).name: e["lines"] for e in result["manifest"]["inputs"]}
    assert inputs == {"Beauty.txt": 9, "Beauty_sample.txt": 9}


@pytest.mark.parametrize("sample, message", [
    ([line for line, _ in SAMPLE][:-1], "8 lines for 9 sequence lines"),
    ([SAMPLE[1][0], SAMPLE[0][0]] + [line for line, _ in SAMPLE][2:],
     "line 1 has uid '2', the sequence line has '1'"),
])
def test_misaligned_sample_file_is_one_clear_error(spark, make_config, tmp_path, sample,
                                                   message):
    _write(tmp_path / "raw" / "Beauty.txt", SEQUENCES)
    path = _write(tmp_path / "raw" / "Beauty_sample.txt", sample)
    with pytest.raises(ValueError) as err:
        run_ingest(_config(make_config, "s3rec", ["Beauty.txt"], S3REC))
    assert str(path) in str(err.value) and message in str(err.value)
    assert not (tmp_path / "work" / "ingest").exists()
