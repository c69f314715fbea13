"""RecBole atomic ``.inter`` files (format ``recbole_inter``): the header decides the columns.

Header parsing and its errors need no Spark; the rest runs the real ingest job on small files
written here in RecBole's exact layout (tab-separated, ``name:type`` header), and on a
generated sample whose broken lines must land in quarantine under the generator's kinds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conf.loading import ConfigError, load_config
from spark_jobs.ingest import run_ingest
from spark_jobs.readers.recbole_atomic import bind, header_columns
from test_readers import _table, _write

ML100K_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
UNWINDOWED = ["dataset.start=null", "dataset.last_day=null", "dataset.kcore=0"]
# Ratings >= 4 positive, <= 2 real negatives, 3 neutral (dropped and counted).
LABELS = ["dataset.positive_min_rating=4", "dataset.negative_max_rating=2"]


def _config(make_config, files: list[str], extra: list[str] = ()):
    return make_config("ml-100k", overrides=[f"dataset.files={json.dumps(files)}",
                                             *UNWINDOWED, *extra])


def _rows(out: Path) -> set[tuple]:
    """(raw user, raw item, ts, rating, label, behavior) of every written interaction."""
    users, items = ({r["idx"]: r["raw"] for r in _table(out / "id_maps" / name)}
                    for name in ("users", "items"))
    return {(users[r["user_idx"]], items[r["item_idx"]], r["ts"], r["rating"], r["label"],
             r["behavior"]) for r in _table(out / "interactions")}


def test_header_columns_name_and_type_every_column():
    assert header_columns(ML100K_HEADER) == {"user_id": "token", "item_id": "token",
                                             "rating": "float", "timestamp": "float"}
    assert header_columns("item_id:token\tmovie_title:token_seq\tvec:float_seq") == {
        "item_id": "token", "movie_title": "token_seq", "vec": "float_seq"}


@pytest.mark.parametrize("header, message", [
    ("user_id\titem_id:token\ttimestamp:float", "column 'user_id' is not name:type"),
    ("user_id:token:x\titem_id:token", "is not name:type"),
    (":token\titem_id:token", "is not name:type"),
    ("user_id:int\titem_id:token\ttimestamp:float", "type 'int'; RecBole's types are token"),
    ("user_id:token\tuser_id:float", "column 'user_id' appears twice"),
    ("user_id:token\titem_id:token", ("no column 'timestamp' (dataset.atomic_fields.time); "
                                      "its columns: user_id:token, item_id:token")),
    ("user_id:token\titem:token\ttimestamp:float", "no column 'item_id'"),
    ("user_id:float\titem_id:token\ttimestamp:float",
     "column 'user_id' (dataset.atomic_fields.user) is float, not token"),
    ("user_id:token\titem_id:token\ttimestamp:token", "is token, not float"),
    ("user_id:token\titem_id:token\trating:token_seq\ttimestamp:float", "is token_seq"),
])
def test_a_header_the_reader_cannot_use_is_one_clear_error(header, message):
    dataset = load_config("ml-100k").dataset
    with pytest.raises(ValueError, match="f.inter is not a RecBole atomic") as err:
        bind(header, dataset, "f.inter")
    assert message in str(err.value)


def test_bound_format_reads_the_columns_by_name_and_asks_for_rating_thresholds():
    dataset = load_config("ml-100k").dataset
    bound = bind(ML100K_HEADER, dataset, "ml-100k.inter")
    assert bound.header == ML100K_HEADER and bound.from_header is None and bound.string_ids
    unrated = load_config("ml-100k", overrides=["dataset.positive_min_rating=null",
                                                "dataset.rating_scale=null"]).dataset
    with pytest.raises(ValueError, match=r"has a rating column \(rating:float\): set dataset"
                                         r"\.positive_min_rating"):
        bind(ML100K_HEADER, unrated, "ml-100k.inter")
    # Without a rating column, or with it switched off, no thresholds are needed.
    bind("user_id:token\titem_id:token\ttimestamp:float", unrated, "x.inter")
    off = load_config("ml-100k", overrides=["dataset.positive_min_rating=null",
                                            "dataset.rating_scale=null",
                                            "dataset.atomic_fields.rating=null"]).dataset
    bind(ML100K_HEADER, off, "ml-100k.inter")


def test_atomic_fields_name_distinct_columns():
    with pytest.raises(ConfigError, match="name one column each"):
        load_config("ml-100k", overrides=["dataset.atomic_fields.item=user_id"])


# Columns in another order than ML-100K's, with columns the reader skips (a token_seq holding
# spaces). The comment on each line is its outcome.
MIXED_HEADER = "timestamp:float\tuser_id:token\ttags:token_seq\titem_id:token\trating:float"
MIXED = [
    ("881250949\t007\tgood fun\t242\t5", None),
    ("881250949.9\t7\t\t242\t1", None),  # "7" is not "007"; the fraction is dropped
    ("8.8125095e8\t7\ta b c\t0302\t4.5", None),  # a float as pandas writes it
    ("881250950\t7\tx\t0302\t3", "neutral_rating"),
    ("881250951\t\tx\t242\t5", "empty_id"),
    ("881250951\t7\tx\t \t5", "empty_id"),  # a blank token is empty once trimmed
    ("881250951\t7\tx\t242", "wrong_field_count"),
    ("881250951\t7\tx\t242\t5\t", "wrong_field_count"),  # a trailing tab is a sixth field
    ("1997-09-20 03:05:10\t7\tx\t242\t5", "bad_timestamp"),
    ("NaN\t7\tx\t242\t5", "bad_timestamp"),
    ("1e13\t7\tx\t242\t5", "bad_timestamp"),  # 10^13 seconds: not a Unix time
    ("881250951\t7\tx\t242\t6", "bad_rating"),  # off the 1..5 scale
    ("881250951\t7\tx\t242\tfive", "bad_rating"),
    ("881250951\t7\tx\t242\t", "bad_rating"),
]


def test_columns_by_header_string_tokens_and_quarantine_reasons(spark, make_config, tmp_path):
    _write(tmp_path / "raw" / "mixed.inter", [MIXED_HEADER] + [line for line, _ in MIXED])
    result = run_ingest(_config(make_config, ["mixed.inter"], LABELS))
    manifest = result["manifest"]
    counts = manifest["counts"]
    assert counts["quarantined"] == {"wrong_field_count": 2, "empty_id": 2, "bad_timestamp": 3,
                                     "bad_rating": 3}
    assert counts["filtered"]["neutral_rating"] == 1
    assert (counts["header_lines"], counts["input_lines"], counts["kept"]) == (1, 14, 3)
    assert manifest["format"] == "recbole_inter" and "text order" in manifest["id_order"]
    out = Path(result["uri"])
    assert _rows(out) == {("007", "242", 881250949, 5.0, 1, "interaction"),
                          ("7", "242", 881250949, 1.0, 0, "interaction"),
                          ("7", "0302", 881250950, 4.5, 1, "interaction")}
    users = {r["raw"]: r["idx"] for r in _table(out / "id_maps" / "users")}
    assert users == {"007": 1, "7": 2}  # text order: tokens are strings
    bad = {(r["file"], r["raw"], r["reason"]) for r in _table(out / "quarantine")}
    assert bad == {("mixed.inter", line, why) for line, why in MIXED
                   if why not in (None, "neutral_rating")}


def test_implicit_file_renamed_columns_and_split_files(spark, make_config, tmp_path):
    """A RecBole Yelp-like file: the item is business_id, the time date, no rating read;
    RecBole's split files share the header and are read together."""
    header = "review_id:token\tuser_id:token\tbusiness_id:token\tstars:float\tdate:float"
    _write(tmp_path / "raw" / "yelp.train.inter", [header, "r1\tu1\tb1\t5\t1546300800",
                                                   "r2\tu1\tb2\t1\t1546300900"])
    _write(tmp_path / "raw" / "yelp.test.inter", [header, "r3\tu1\tb3\t2\t1546301000"])
    renamed = ["dataset.atomic_fields.item=business_id", "dataset.atomic_fields.time=date",
               "dataset.atomic_fields.rating=null", "dataset.positive_min_rating=null",
               "dataset.rating_scale=null"]
    result = run_ingest(_config(make_config, ["yelp.*.inter"], renamed))
    counts = result["manifest"]["counts"]
    assert (counts["header_lines"], counts["kept"]) == (2, 3)
    assert _rows(Path(result["uri"])) == {  # every line one positive, whatever its stars
        ("u1", "b1", 1546300800, None, 1, "interaction"),
        ("u1", "b2", 1546300900, None, 1, "interaction"),
        ("u1", "b3", 1546301000, None, 1, "interaction")}


def test_files_with_different_headers_are_one_error_before_spark(make_config, tmp_path):
    _write(tmp_path / "raw" / "a.inter", [ML100K_HEADER, "1\t2\t5\t881250949"])
    _write(tmp_path / "raw" / "b.inter", ["user_id:token\titem_id:token\ttimestamp:float",
                                          "1\t3\t881250949"])
    with pytest.raises(ValueError, match=r"b\.inter is not a recbole_inter file: expected "
                                         r"RecBole atomic \.inter.*the first file's"):
        run_ingest(_config(make_config, ["*.inter"]))
    # The first file of dataset.files (in pattern order) gives the header.
    _write(tmp_path / "raw" / "b.inter", ["user_id:token\titem_id:token", "1\t3"])
    with pytest.raises(ValueError, match=r"b\.inter is not a RecBole atomic .*no column "
                                         r"'timestamp'"):
        run_ingest(_config(make_config, ["b.inter", "a.inter"]))


def test_generated_sample_is_read_back_with_the_generators_broken_lines(spark, make_config):
    from spark_jobs.sample_data import generate

    cfg = make_config("ml-100k", overrides=[
        "dataset.start=1997-09-20", "dataset.last_day=1998-04-22", "generate.rows=6000",
        "generate.users=150", "generate.items=600", "generate.communities=5",
        "generate.categories=10", "generate.malformed_rate=0.02", "dataset.kcore=0"])
    written = generate(cfg)
    assert Path(written["files"][0]).read_text().split("\n", 1)[0] == ML100K_HEADER
    counts = run_ingest(cfg)["manifest"]["counts"]
    assert counts["quarantined"] == written["malformed"]
    assert counts["filtered"]["out_of_window"] == written["outside_window"]
    assert counts["input_lines"] == written["lines"]
