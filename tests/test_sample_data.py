"""The sample generator: exact public formats, determinism, malformed lines, structure.

Lines are checked by an independent reader written here from the public formats (not by the
generator's own code), so a format slip in the generator fails these tests. No Spark.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from typer.testing import CliRunner

from spark_jobs.sample_data import (
    FORMATS,
    GENERATOR_VERSION,
    STAMP,
    TRANSITION_FANOUT,
    RowRandom,
    build_world,
    generate,
    generate_rows,
    why_generate,
)

SMALL = ["generate.rows=20000", "generate.users=400", "generate.items=1500",
         "generate.categories=40", "generate.communities=10"]
MMDD = re.compile(r"^(1[0-2]|[1-9])(0[1-9]|[12][0-9]|3[01])$")  # month unpadded, day 2 digits
DIGITS = re.compile(r"^[0-9]+$")
TAOBAO_BEHAVIORS = {"pv", "buy", "cart", "fav"}
# format -> (preset, overrides that pick the format in that preset)
CASES = {
    "taobao": ("sample", []),
    "tmall": ("tmall", []),
    "ratings": ("ccmr", []),
    "amazon_ratings": ("sample-feedback", []),
    "amazon_ratings_2018": ("sample-feedback", ["dataset.format=amazon_ratings_2018",
                                                "dataset.files=[Sample.csv]"]),
    "amazon_reviews": ("sample-loo", []),
    "yelp_reviews": ("sample-loo", ["dataset.format=yelp_reviews",
                                    "dataset.files=[yelp_academic_dataset_review.json]"]),
    "s3rec": ("sample-loo", ["dataset.format=s3rec", "dataset.files=[Sample.txt]",
                             "dataset.behaviors=[interaction]", "dataset.start=null",
                             "dataset.last_day=null"]),  # no ratings, no dates
    "movielens_100k": ("movielens", ["dataset.start=1997-09-20", "dataset.last_day=1998-04-22"]),
    "movielens_1m": ("movielens", ["dataset.format=movielens_1m", "dataset.files=[ratings.dat]",
                                   "dataset.start=2000-04-25", "dataset.last_day=2003-02-28"]),
    "recbole_inter": ("ml-100k", ["dataset.start=1997-09-20", "dataset.last_day=1998-04-22"]),
}
# CSV layouts: (delimiter, field count, user column, item column, rating column, ts column)
CSV = {"taobao": (",", 5, 0, 1, None, 4), "tmall": (",", 7, 0, 1, None, 5),
       "ratings": (",", 4, 0, 1, 2, 3), "amazon_ratings": (",", 4, 0, 1, 2, 3),
       "amazon_ratings_2018": (",", 4, 1, 0, 2, 3), "movielens_100k": ("\t", 4, 0, 1, 2, 3),
       "movielens_1m": ("::", 4, 0, 1, 2, 3), "recbole_inter": ("\t", 4, 0, 1, 2, 3)}
STRING_IDS = {"amazon_ratings", "amazon_ratings_2018", "amazon_reviews", "yelp_reviews",
              "recbole_inter"}  # RecBole tokens are text, even ML-100K's numbers
INT_RATINGS = {"1", "2", "3", "4", "5"}
FLOAT_RATINGS = {"1.0", "2.0", "3.0", "4.0", "5.0"}
AMAZON_KEYS = ["reviewerID", "asin", "reviewerName", "helpful", "reviewText", "overall",
               "summary", "unixReviewTime", "reviewTime"]
YELP_KEYS = ["review_id", "user_id", "business_id", "stars", "useful", "funny", "cool", "text",
             "date"]


def _config(make_config, fmt: str, overrides: list[str]):
    dataset, picks = CASES[fmt]
    return make_config(dataset, overrides=SMALL + picks + overrides)


def _lines(path: str) -> list[str]:
    raw = Path(path).read_bytes()
    if path.endswith(".gz"):
        assert raw[:2] == b"\x1f\x8b"  # really gzip, as the public .json.gz
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8")
    assert text.endswith("\n")
    return text[:-1].split("\n")


def _data(fmt: str, path: str) -> list[str]:
    """The file's lines without its header (checked against the public header)."""
    lines = _lines(path)
    header = {"tmall": "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type",
              "ratings": "user,item,rating,timestamp",
              "recbole_inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float",
              }.get(fmt)
    if header is None:
        return lines
    assert lines[0] == header
    return lines[1:]


def _csv_reason(fmt: str, line: str, zone: str) -> tuple[str | None, tuple | None]:
    sep, count, user_at, item_at, rating_at, ts_at = CSV[fmt]
    fields = line.split(sep)
    if len(fields) != count:
        return "wrong_field_count", None
    user, item = fields[user_at], fields[item_at]
    if fmt in STRING_IDS:
        if not (user and item):
            return "empty_id", None
    elif not (DIGITS.match(user) and DIGITS.match(item)):
        return "non_numeric_id", None
    if fmt == "tmall":
        match = MMDD.match(fields[5])
        try:
            day = dt.date(2015, int(match.group(1)), int(match.group(2))) if match else None
        except ValueError:
            day = None
        if day is None:
            return "bad_timestamp", None
        ts = int(dt.datetime.combine(day, dt.time(0), tzinfo=ZoneInfo(zone)).timestamp())
        if fields[6] not in {"0", "1", "2", "3"}:
            return "unknown_behavior", None
        return None, (user, item, None, ts)
    if not DIGITS.match(fields[ts_at]):
        return "bad_timestamp", None
    if fmt == "taobao" and fields[3] not in TAOBAO_BEHAVIORS:
        return "unknown_behavior", None
    rating = None
    if rating_at is not None:
        scale = (FLOAT_RATINGS if fmt in STRING_IDS and fmt != "recbole_inter"  # ML-100K's
                 else INT_RATINGS)
        if fields[rating_at] not in scale:
            return "bad_rating", None
        rating = float(fields[rating_at])
    return None, (user, item, rating, int(fields[ts_at]))


def _json_reason(fmt: str, line: str, zone: str) -> tuple[str | None, tuple | None]:
    """As the public files' readers see a review: the fields the pipeline needs, typed."""
    try:
        doc = json.loads(line)
    except json.JSONDecodeError:
        return "bad_json", None
    amazon = fmt == "amazon_reviews"
    user_key, item_key, rating_key, ts_key = (
        ("reviewerID", "asin", "overall", "unixReviewTime") if amazon
        else ("user_id", "business_id", "stars", "date"))
    if not isinstance(doc, dict) or any(doc.get(k) is None for k in
                                        (user_key, item_key, rating_key, ts_key)):
        return "missing_field", None
    user, item, rating, when = (doc[k] for k in (user_key, item_key, rating_key, ts_key))
    number = isinstance(rating, (int, float)) and not isinstance(rating, bool)
    time_type = int if amazon else str
    if not (isinstance(user, str) and isinstance(item, str) and number
            and type(when) is time_type):
        return "wrong_type", None
    if not (user and item):
        return "empty_id", None
    if amazon:
        if abs(when) >= 10**12:
            return "bad_timestamp", None
        ts = when
    else:
        try:
            local = dt.datetime.strptime(when, "%Y-%m-%d %H:%M:%S")
        except ValueError:
            return "bad_timestamp", None
        ts = int(local.replace(tzinfo=ZoneInfo(zone)).timestamp())
    if not 1 <= rating <= 5:
        return "bad_rating", None
    keys = list(doc)
    if amazon:  # the public file's fields, in its order (a few reviews have no name)
        assert keys in (AMAZON_KEYS, [k for k in AMAZON_KEYS if k != "reviewerName"]), keys
        day = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
        assert ts % 86400 == 0 and doc["reviewTime"] == f"{day:%m} {day.day}, {day:%Y}"
        assert len(item) == 10 and re.match(r"^A[0-9A-Z]{13}$", user)
        assert doc["helpful"][0] <= doc["helpful"][1]
    else:
        assert keys == YELP_KEYS, keys
        assert all(re.match(r"^[A-Za-z0-9_-]{22}$", x) for x in (user, item, doc["review_id"]))
    return None, (user, item, float(rating), ts)


def _reason(fmt: str, line: str, zone: str) -> tuple[str | None, tuple | None]:
    """First thing wrong with a raw line (ingest's reason names) and, if none, the record
    (user, item, rating or None, UTC ts; S3-Rec: (user, [items]))."""
    if fmt in ("amazon_reviews", "yelp_reviews"):
        return _json_reason(fmt, line, zone)
    if fmt == "s3rec":
        tokens = line.split(" ")
        if len(tokens) < 2:
            return "wrong_field_count", None
        if not all(DIGITS.match(t) and not t.startswith("0") for t in tokens):
            return "non_numeric_id", None
        return None, (tokens[0], tokens[1:])
    return _csv_reason(fmt, line, zone)


def _window(cfg) -> tuple[int, int]:
    zone = ZoneInfo(cfg.dataset.timezone)
    start, end = (int(dt.datetime.combine(d, dt.time(0), tzinfo=zone).timestamp())
                  for d in (cfg.dataset.start, cfg.dataset.end))
    return start, end


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_every_format_parses_back_with_the_expected_counts(make_config, fmt):
    cfg = _config(make_config, fmt, ["generate.malformed_rate=0"])
    result = generate(cfg)
    [name] = [Path(f).name for f in result["files"]]
    assert name == (FORMATS[fmt].file_name if "*" in cfg.dataset.files[0]  # a glob: default
                    else cfg.dataset.files[0])  # else the name the preset reads
    data = _data(fmt, result["files"][0])
    read = [_reason(fmt, line, cfg.dataset.timezone) for line in data]
    assert {reason for reason, _ in read} == {None}
    assert sum(result["malformed"].values()) == 0
    records = [record for _, record in read]
    if fmt == "s3rec":  # a line per user, uids ascending from 1, items in a 5-core
        assert len(data) == result["lines"]
        uids = [int(r[0]) for r in records]
        assert uids == sorted(uids) and 390 <= len(uids) <= 400 and max(uids) <= 400
        items = np.array([int(i) for r in records for i in r[1]])
        assert len(items) == result["rows"] and 0.9 * 20000 < len(items) <= 20000
        assert min(len(r[1]) for r in records) >= 5 and items.max() <= 1500
        assert np.unique(items, return_counts=True)[1].min() >= 5  # every item too
        return
    assert len(data) == result["rows"] == result["lines"]
    assert result["rows"] == 20000 or (fmt == "amazon_reviews" and result["rows"] > 18000)
    users = np.array([r[0] for r in records])
    per_user = np.unique(users, return_counts=True)[1]
    per_item = np.unique([r[1] for r in records], return_counts=True)[1]
    assert len(per_user) >= 390 and len(per_item) <= 1500
    least = {"amazon_reviews": 5, "movielens_100k": 20, "movielens_1m": 20,
             "recbole_inter": 20}.get(fmt, 1)
    assert per_user.min() >= least
    if fmt == "amazon_reviews":  # a 5-core file: every item too
        assert per_item.min() >= 5
    fields = [line.split(CSV[fmt][0]) for line in data] if fmt in CSV else []
    if fmt == "taobao":
        behaviors = np.array([f[3] for f in fields])
        shares = {b: float(np.mean(behaviors == b)) for b in TAOBAO_BEHAVIORS}
        assert abs(shares["pv"] - 0.89) < 0.02 and abs(shares["buy"] - 0.025) < 0.01
        assert abs(shares["cart"] - 0.055) < 0.01 and abs(shares["fav"] - 0.03) < 0.01
        assert all(DIGITS.match(f[2]) for f in fields)
        assert max(int(f[1]) for f in fields) > 100_000  # sparse raw ids, not 1..items
    if fmt == "tmall":
        stamps = {f[5] for f in fields}
        assert any(len(s) == 3 for s in stamps)  # months 5-9: unpadded, e.g. 829
        assert {f[6] for f in fields} == {"0", "1", "2", "3"}
        assert all(f[4] == "" or DIGITS.match(f[4]) for f in fields)
    if fmt.startswith("movielens") or fmt == "recbole_inter":  # ids 1..n as GroupLens's
        assert int(max(users, key=int)) == 400
    if fmt in ("amazon_ratings", "amazon_ratings_2018"):
        assert all(r[3] % 86400 == 0 for r in records)  # day resolution, UTC midnights
        assert {len(r[1]) for r in records} == {10}  # ASINs
    if CSV.get(fmt, (0,) * 5)[4] is not None or fmt in STRING_IDS:
        assert {r[2] for r in records} == {1.0, 2.0, 3.0, 4.0, 5.0}


def test_s3rec_negatives_file_is_aligned_and_never_touched(make_config):
    cfg = _config(make_config, "s3rec", ["generate.malformed_rate=0",
                                         "dataset.negatives_file=Sample_sample.txt"])
    result = generate(cfg)
    assert [Path(f).name for f in result["files"]] == ["Sample.txt", "Sample_sample.txt"]
    sequences, negatives = (_lines(f) for f in result["files"])
    assert len(negatives) == len(sequences) == 400
    for line, sample in zip(sequences, negatives):
        uid, *items = line.split(" ")
        nuid, *drawn = sample.split(" ")
        assert nuid == uid and len(drawn) == len(set(drawn)) == 99
        assert not set(drawn) & set(items) and all(1 <= int(i) <= 1500 for i in drawn)
    assert why_generate(cfg) is None
    Path(result["files"][1]).unlink()
    assert "missing" in why_generate(cfg)


def test_ratings_follow_user_item_affinity(make_config):
    """A user's ratings of items in its main community are higher, and 1-star ratings
    (negative feedback) rarer, than of other items: negatives carry signal."""
    cfg = _config(make_config, "amazon_ratings", ["generate.malformed_rate=0"])
    result = generate(cfg)
    world = build_world(cfg, FORMATS["amazon_ratings"])
    user_of = {raw.decode(): u for u, raw in enumerate(world.user_raw)}
    item_of = {raw.decode(): v for v, raw in enumerate(world.item_raw)}
    records = [_reason("amazon_ratings", line, "UTC")[1] for line in _lines(result["files"][0])]
    user = np.array([user_of[r[0]] for r in records])
    item = np.array([item_of[r[1]] for r in records])
    rating = np.array([r[2] for r in records])
    main = world.item_community[item] == world.user_main[user]
    assert 0.4 < main.mean() < 0.8
    assert rating[main].mean() > rating[~main].mean() + 0.3
    assert (rating[~main] == 1).mean() > 2 * (rating[main] == 1).mean()


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    rank_a, rank_b = (np.argsort(np.argsort(x)).astype(float) for x in (a, b))
    return float(np.corrcoef(rank_a, rank_b)[0, 1])


def test_ratings_follow_item_quality(make_config):
    """Good items are rated higher, and an item's share of positive ratings (4-5 among 1, 4
    and 5, the feedback labels) rises with its number of ratings, as in real logs
    (MovieLens-100K: Spearman 0.31); without item quality it did not (-0.11)."""
    cfg = _config(make_config, "amazon_ratings", ["generate.rows=60000"])
    fmt = FORMATS["amazon_ratings"]
    world = build_world(cfg, fmt)
    rows = generate_rows(cfg, fmt, world, RowRandom(cfg.generate.seed), 0,
                         len(world.user_raw))
    quality = world.item_quality[rows.item]
    assert abs(world.item_quality.mean()) < 0.2 and 0.8 < world.item_quality.std() < 1.2
    assert np.corrcoef(quality, rows.rating)[0, 1] > 0.15
    labelled = (rows.rating >= 4) | (rows.rating == 1)
    count = np.bincount(rows.item[labelled], minlength=len(world.item_raw))
    positive = np.bincount(rows.item[rows.rating >= 4], minlength=len(world.item_raw))
    rated = count >= 10
    assert rated.sum() > 200
    assert _spearman(count[rated], positive[rated] / count[rated]) > 0.15
    assert _spearman(world.item_quality[rated], positive[rated] / count[rated]) > 0.3


@pytest.mark.parametrize("fmt", ["taobao", "amazon_reviews", "s3rec"])
def test_same_seed_same_bytes_and_chunking_does_not_matter(make_config, tmp_path, fmt):
    base = ["generate.malformed_rate=0.01"]
    one = generate(_config(make_config, fmt, base + ["generate.chunk_rows=1000000"]))
    first = Path(one["files"][0]).read_bytes()
    again = generate(_config(make_config, fmt, base + [f"paths.raw_dir={tmp_path}/again"]))
    assert Path(again["files"][0]).read_bytes() == first
    rerun = generate(_config(make_config, fmt, base))  # replaces the file in place
    assert rerun["files"] == one["files"] and Path(rerun["files"][0]).read_bytes() == first
    for chunk_rows in (777, 1) if fmt != "amazon_reviews" else (777,):  # 1: a chunk per user
        chunked = generate(_config(make_config, fmt, base + [
            f"generate.chunk_rows={chunk_rows}", f"paths.raw_dir={tmp_path}/c{chunk_rows}"]))
        assert Path(chunked["files"][0]).read_bytes() == first
        assert chunked["malformed"] == one["malformed"]
        assert chunked["outside_window"] == one["outside_window"]
    other = generate(_config(make_config, fmt, base + ["generate.seed=8",
                                                       f"paths.raw_dir={tmp_path}/other"]))
    assert Path(other["files"][0]).read_bytes() != first
    assert not [p for p in Path(one["files"][0]).parent.iterdir() if ".tmp-" in p.name]


def test_why_generate_names_a_missing_or_stale_sample(make_config, tmp_path):
    cfg = make_config(overrides=SMALL + [f"paths.raw_dir={tmp_path}/raw"])
    assert "no generated sample" in why_generate(cfg)
    result = generate(cfg)
    assert why_generate(cfg) is None
    assert why_generate(make_config(overrides=SMALL + [  # same bytes: still current
        f"paths.raw_dir={tmp_path}/raw", "generate.chunk_rows=777"])) is None
    bigger = make_config(overrides=SMALL + [f"paths.raw_dir={tmp_path}/raw",
                                            "generate.rows=30000"])
    assert "config changed" in why_generate(bigger)
    stamp = Path(tmp_path, "raw", STAMP)
    current = json.loads(stamp.read_text())
    older = current | {"config_hash": current["config_hash"].replace(
        f"v{GENERATOR_VERSION}-", f"v{GENERATOR_VERSION - 1}-")}
    stamp.write_text(json.dumps(older))  # the same config drawn by the generator before
    assert f"GENERATOR_VERSION {GENERATOR_VERSION}" in why_generate(cfg)
    Path(result["files"][0]).unlink()
    assert "missing" in why_generate(cfg)


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_malformed_lines_match_rate_and_kinds(make_config, fmt):
    from spark_jobs.readers import FORMATS as READERS

    rate = 0.25 if fmt == "s3rec" else 0.03  # s3rec breaks user lines: fewer lines
    cfg = _config(make_config, fmt, [f"generate.malformed_rate={rate}"])
    result = generate(cfg)
    lines = _data(fmt, result["files"][0])
    assert len(lines) == result["lines"]
    found: dict[str, int] = {}
    for line in lines:
        reason, _ = _reason(fmt, line, cfg.dataset.timezone)
        if reason:
            found[reason] = found.get(reason, 0) + 1
    assert set(result["malformed"]) == set(READERS[fmt].reasons)  # every reason the reader has
    assert found == result["malformed"]  # every broken line is broken the documented way
    total = sum(found.values())
    sigma = np.sqrt(result["lines"] * rate * (1 - rate))
    assert abs(total - rate * result["lines"]) < 5 * sigma
    assert min(found.values()) > 0.5 * total / len(found)  # kinds drawn evenly


@pytest.mark.parametrize("fmt", ["taobao", "tmall", "ratings", "amazon_reviews",
                                 "yelp_reviews", "movielens_1m"])
def test_timestamps_in_window_with_a_few_strays(make_config, fmt):
    rows = 20000 if fmt.endswith("reviews") else 50000  # JSON parses slower here
    cfg = _config(make_config, fmt, [f"generate.rows={rows}", "generate.malformed_rate=0"])
    result = generate(cfg)
    start, end = _window(cfg)
    lines = _data(fmt, result["files"][0])
    ts = np.array([_reason(fmt, line, cfg.dataset.timezone)[1][3] for line in lines])
    outside = (ts < start) | (ts >= end)
    assert outside.sum() == result["outside_window"]
    assert 0 < outside.mean() < 0.01
    week = 7 * 86400 + 1
    assert (ts >= start - week).all() and (ts < end + week).all()
    ds = cfg.dataset
    days = (ds.end - ds.start).days
    periods = ds.num_slices if ds.sliced else 12  # drift periods of an unsliced window
    period = (ts[~outside] - start) // 86400 * periods // days
    per_period = np.bincount(period, minlength=periods)
    assert len(per_period) == periods and per_period.min() > 0.5 * per_period.mean()


def _taobao_rows(make_config, overrides):
    cfg = make_config(overrides=SMALL + ["generate.malformed_rate=0"] + overrides)
    result = generate(cfg)
    table = np.array([line.split(",") for line in _lines(result["files"][0])])
    world = build_world(cfg, FORMATS["taobao"])
    user = np.searchsorted(np.sort(world.user_raw), table[:, 0].astype(np.int64))
    user = np.argsort(world.user_raw)[user]
    item = np.argsort(world.item_raw)[np.searchsorted(np.sort(world.item_raw),
                                                      table[:, 1].astype(np.int64))]
    assert (world.item_raw[item] == table[:, 1].astype(np.int64)).all()
    start, _ = _window(cfg)
    day = (table[:, 4].astype(np.int64) - start) // 86400
    return cfg, world, user, item, day


def test_heavy_tails_and_communities(make_config):
    cfg, world, user, item, _ = _taobao_rows(make_config, [])
    counts = np.sort(np.bincount(item, minlength=cfg.generate.items))[::-1]
    top = counts[: cfg.generate.items // 100].sum() / counts.sum()
    assert top > 0.08  # the top 1% of items get far more than 1% of rows
    activity = np.bincount(user, minlength=cfg.generate.users)
    assert activity.max() > 5 * np.median(activity)  # heavy users exist
    # Each user's rows concentrate in one community (uniform would give 1/K = 0.1).
    community = world.item_community[item]
    table = np.zeros((cfg.generate.users, cfg.generate.communities))
    np.add.at(table, (user, community), 1)
    active = table.sum(1) >= 20
    top_share = table[active].max(1) / table[active].sum(1)
    assert np.median(top_share) > 0.45
    # The user's main community is the one it concentrates in.
    assert np.mean(table[active].argmax(1) == world.user_main[active]) > 0.9


def test_collaborative_signal_beats_popularity(make_config):
    """Next-slice prediction of an item new to the user, against 99 sampled negatives: what
    the user's co-interaction neighbours (users sharing items with it before the target
    slice, as in SCoRe's sets) did in the previous slice ranks it higher than last-slice
    popularity does. Repeats are excluded, so the signal is the community structure."""
    cfg, world, user, item, day = _taobao_rows(make_config, ["generate.rows=40000"])
    n_users, n_items = cfg.generate.users, cfg.generate.items
    target = cfg.dataset.num_slices - 1
    history = np.zeros((n_users, n_items), dtype=np.float32)
    keep = (day >= 0) & (day < target)
    history[user[keep], item[keep]] = 1.0
    recent = np.zeros_like(history)
    recent[user[day == target - 1], item[day == target - 1]] = 1.0
    popularity = recent.sum(0)
    rng = np.random.default_rng(0)
    new = np.flatnonzero((day == target) & (history[user, item] == 0))
    picks = new[np.unique(user[new], return_index=True)[1]]  # one new item per user
    users, positives = user[picks], item[picks]
    overlap = history[users] @ history.T  # (users, U) items shared with each other user
    overlap[np.arange(len(users)), users] = 0  # neighbours only, not the user itself
    neighbours_recent = overlap @ recent  # (users, V)
    mrr = {"popularity": [], "co_interaction": []}
    for row, positive in enumerate(positives):
        candidates = np.concatenate([[positive], rng.integers(0, n_items, 99)])
        jitter = rng.random(100) * 1e-6  # random tie-break
        for name, scores in (("popularity", popularity[candidates]),
                             ("co_interaction", neighbours_recent[row, candidates])):
            rank = int(((scores + jitter) > (scores[0] + jitter[0])).sum())
            mrr[name].append(1.0 / (rank + 1))
    assert len(positives) > 200
    assert np.mean(mrr["co_interaction"]) > 1.1 * np.mean(mrr["popularity"])


def test_transitions_follow_the_previous_item_one_way(make_config):
    """Point 5: with ``generate.transition_share`` that share of the rows that are neither a
    user's first nor a repeat takes a successor of the previous row's item. The lists hold
    items of the item's own community, never the item itself, and run one way: the previous
    item is barely likelier a successor of the next than chance. At 0 the world draws no lists,
    and the next item follows the previous one only by chance."""
    fmt = FORMATS["amazon_reviews"]
    cfg = _config(make_config, "amazon_reviews", ["generate.transition_share=0.3"])
    off = _config(make_config, "amazon_reviews", ["generate.transition_share=0"])
    world = build_world(cfg, fmt)
    assert build_world(off, fmt).item_next.shape == (0, TRANSITION_FANOUT)
    nxt = world.item_next
    assert nxt.shape == (len(world.item_raw), TRANSITION_FANOUT)
    assert not (nxt == np.arange(len(nxt))[:, None]).any()
    assert (world.item_community[nxt] == world.item_community[:, None]).all()

    def shares(c) -> tuple[float, float]:
        rows = generate_rows(c, fmt, world, RowRandom(c.generate.seed), 0, len(world.user_raw))
        same_user = rows.user[1:] == rows.user[:-1]
        before, after = rows.item[:-1][same_user], rows.item[1:][same_user]
        return ((nxt[before] == after[:, None]).any(1).mean(),
                (nxt[after] == before[:, None]).any(1).mean())

    forward, backward = shares(cfg)
    chance, chance_back = shares(off)
    assert chance < 0.06 and abs(chance_back - chance) < 0.01
    # share x (not a repeat) on top of chance
    assert abs(forward - chance - 0.3 * (1 - fmt.repeat_share)) < 0.03, (forward, chance)
    # one way: the backward excess (same community, popular successors) is a small part
    assert backward - chance < 0.15 * (forward - chance), (backward, chance, forward)


def test_item_popularity_drifts(make_config):
    cfg, world, user, item, day = _taobao_rows(make_config, ["generate.rows=60000"])
    # First interaction of each (user, item) pair only: repeats would tie adjacent days.
    first = np.unique(user * cfg.generate.items + item, return_index=True)[1]
    item, day = item[first], day[first]
    last = cfg.dataset.num_slices - 1
    counts = [np.bincount(item[day == s], minlength=cfg.generate.items) for s in (0, 1, last)]
    near = np.corrcoef(np.log1p(counts[0]), np.log1p(counts[1]))[0, 1]
    far = np.corrcoef(np.log1p(counts[0]), np.log1p(counts[2]))[0, 1]
    assert near > far + 0.05  # recent popularity says more than old popularity


def test_bad_settings_name_the_problem(make_config):
    with pytest.raises(ValueError, match="generate.items"):
        generate(make_config(overrides=["generate.items=5", "generate.communities=10"]))
    with pytest.raises(ValueError, match=r"2 x generate.communities \(10\)"):
        generate(make_config(overrides=["generate.items=15", "generate.communities=10",
                                        "generate.transition_share=0.3"]))
    with pytest.raises(ValueError, match="dataset.files"):
        generate(make_config(overrides=SMALL + ['dataset.files=["other*.csv"]']))
    with pytest.raises(ValueError, match="bounded window"):
        generate(make_config("beauty", overrides=SMALL))
    with pytest.raises(ValueError, match=r"must be >= 5 x generate.users"):
        generate(make_config("sample-loo", overrides=SMALL + ["generate.rows=1000"]))
    with pytest.raises(ValueError, match="calendar year"):
        generate(make_config("tmall", overrides=SMALL + ["dataset.start=2015-12-01"]))


def test_cli_prints_the_result(make_config, tmp_path):
    from flows.cli import app

    raw = tmp_path / "cli_raw"
    result = CliRunner().invoke(app, ["generate", "--set", f"paths.raw_dir={raw}",
                                      "--set", "generate.rows=3000", "--set",
                                      "generate.users=100", "--set", "generate.items=300",
                                      "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["rows"] == 3000 and Path(printed["files"][0]).exists()
    assert printed["rows_per_s"] > 0
