"""The sample generator: exact public formats, determinism, malformed lines, structure.

Lines are checked by an independent reader written here from the public formats (not by the
generator's own code), so a format slip in the generator fails these tests. No Spark.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from typer.testing import CliRunner

from spark_jobs.sample_data import FORMATS, build_world, generate, why_generate

SMALL = ["generate.rows=20000", "generate.users=400", "generate.items=1500",
         "generate.categories=40", "generate.communities=10"]
MMDD = re.compile(r"^(1[0-2]|[1-9])(0[1-9]|[12][0-9]|3[01])$")  # month unpadded, day 2 digits
DIGITS = re.compile(r"^[0-9]+$")
TAOBAO_BEHAVIORS = {"pv", "buy", "cart", "fav"}


def _lines(path: str) -> list[str]:
    text = Path(path).read_text()
    assert text.endswith("\n")
    return text[:-1].split("\n")


def _reason(fmt: str, line: str, zone: str) -> tuple[str | None, int | None]:
    """First thing wrong with a raw line (ingest's reason names) and, if none, its UTC ts."""
    fields = line.split(",")
    expected = {"taobao": 5, "tmall": 7, "ratings": 4}[fmt]
    if len(fields) != expected:
        return "wrong_field_count", None
    if not (DIGITS.match(fields[0]) and DIGITS.match(fields[1])):
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
        return None, ts
    ts_field = fields[4] if fmt == "taobao" else fields[3]
    if not DIGITS.match(ts_field):
        return "bad_timestamp", None
    if fmt == "taobao" and fields[3] not in TAOBAO_BEHAVIORS:
        return "unknown_behavior", None
    if fmt == "ratings" and fields[2] not in {"1", "2", "3", "4", "5"}:
        return "bad_rating", None
    return None, int(ts_field)


def _window(cfg) -> tuple[int, int]:
    zone = ZoneInfo(cfg.dataset.timezone)
    start, end = (int(dt.datetime.combine(d, dt.time(0), tzinfo=zone).timestamp())
                  for d in (cfg.dataset.start, cfg.dataset.end))
    return start, end


@pytest.mark.parametrize("dataset", ["sample", "tmall", "ccmr"])
def test_exact_public_format(make_config, dataset):
    cfg = make_config(dataset, overrides=SMALL + ["generate.malformed_rate=0"])
    result = generate(cfg)
    fmt = FORMATS[cfg.dataset.format]
    assert [Path(f).name for f in result["files"]] == [fmt.file_name]
    lines = _lines(result["files"][0])
    if cfg.dataset.format == "taobao":
        data = lines  # the public UserBehavior.csv has no header
        assert DIGITS.match(data[0].split(",")[0])
    elif cfg.dataset.format == "tmall":
        assert lines[0] == "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type"
        data = lines[1:]
    else:
        assert lines[0] == "user,item,rating,timestamp"
        data = lines[1:]
    assert len(data) == result["rows"] == 20000
    assert sum(result["malformed"].values()) == 0
    reasons = [_reason(cfg.dataset.format, line, cfg.dataset.timezone)[0] for line in data]
    assert set(reasons) == {None}
    fields = [line.split(",") for line in data]
    if cfg.dataset.format == "taobao":
        behaviors = np.array([f[3] for f in fields])
        shares = {b: float(np.mean(behaviors == b)) for b in TAOBAO_BEHAVIORS}
        assert abs(shares["pv"] - 0.89) < 0.02 and abs(shares["buy"] - 0.025) < 0.01
        assert abs(shares["cart"] - 0.055) < 0.01 and abs(shares["fav"] - 0.03) < 0.01
        assert all(DIGITS.match(f[2]) for f in fields)
        assert max(int(f[1]) for f in fields) > 100_000  # sparse raw ids, not 1..items
    if cfg.dataset.format == "tmall":
        stamps = {f[5] for f in fields}
        assert all(MMDD.match(s) for s in stamps)
        assert any(len(s) == 3 for s in stamps)  # months 5-9: unpadded, e.g. 829
        assert {f[6] for f in fields} == {"0", "1", "2", "3"}
        assert all(f[4] == "" or DIGITS.match(f[4]) for f in fields)
    if cfg.dataset.format == "ratings":
        ratings = np.array([int(f[2]) for f in fields])
        assert set(np.unique(ratings)) == {1, 2, 3, 4, 5}


def test_same_seed_same_bytes_and_chunking_does_not_matter(make_config, tmp_path):
    base = SMALL + ["generate.malformed_rate=0.01"]
    one = generate(make_config(overrides=base + ["generate.chunk_rows=1000000"]))
    first = Path(one["files"][0]).read_bytes()
    again = generate(make_config(overrides=base + [f"paths.raw_dir={tmp_path}/again"]))
    assert Path(again["files"][0]).read_bytes() == first
    rerun = generate(make_config(overrides=base))  # replaces the file in place
    assert rerun["files"] == one["files"] and Path(rerun["files"][0]).read_bytes() == first
    for chunk_rows in (777, 1):  # 1: every user is a chunk of its own
        chunked = generate(make_config(overrides=base + [
            f"generate.chunk_rows={chunk_rows}", f"paths.raw_dir={tmp_path}/c{chunk_rows}"]))
        assert Path(chunked["files"][0]).read_bytes() == first
        assert chunked["malformed"] == one["malformed"]
        assert chunked["outside_window"] == one["outside_window"]
    other = generate(make_config(overrides=base + ["generate.seed=8",
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
    Path(result["files"][0]).unlink()
    assert "missing" in why_generate(cfg)


@pytest.mark.parametrize("dataset", ["sample", "tmall", "ccmr"])
def test_malformed_lines_match_rate_and_kinds(make_config, dataset):
    rate = 0.03
    cfg = make_config(dataset, overrides=SMALL + [f"generate.malformed_rate={rate}"])
    result = generate(cfg)
    fmt = FORMATS[cfg.dataset.format]
    lines = _lines(result["files"][0])[0 if fmt.header is None else 1:]
    assert len(lines) == result["rows"]
    found: dict[str, int] = {}
    for line in lines:
        reason, _ = _reason(cfg.dataset.format, line, cfg.dataset.timezone)
        if reason:
            found[reason] = found.get(reason, 0) + 1
    expected_kinds = {"wrong_field_count", "non_numeric_id", "bad_timestamp",
                      "bad_rating" if dataset == "ccmr" else "unknown_behavior"}
    assert set(result["malformed"]) == expected_kinds
    assert found == result["malformed"]  # every broken line is broken the documented way
    total = sum(found.values())
    sigma = np.sqrt(result["rows"] * rate * (1 - rate))
    assert abs(total - rate * result["rows"]) < 5 * sigma
    assert min(found.values()) > 0.15 * total  # kinds drawn evenly


@pytest.mark.parametrize("dataset", ["sample", "tmall", "ccmr"])
def test_timestamps_in_window_with_a_few_strays(make_config, dataset):
    cfg = make_config(dataset, overrides=SMALL + ["generate.rows=50000",
                                                  "generate.malformed_rate=0"])
    result = generate(cfg)
    fmt = FORMATS[cfg.dataset.format]
    start, end = _window(cfg)
    lines = _lines(result["files"][0])[0 if fmt.header is None else 1:]
    ts = np.array([_reason(cfg.dataset.format, line, cfg.dataset.timezone)[1] for line in lines])
    outside = (ts < start) | (ts >= end)
    assert outside.sum() == result["outside_window"]
    assert 0 < outside.mean() < 0.01
    week = 7 * 86400 + 1
    assert (ts >= start - week).all() and (ts < end + week).all()
    slices = (ts[~outside] - start) // (86400 * cfg.dataset.slice_days)
    per_slice = np.bincount(slices, minlength=cfg.dataset.num_slices)
    assert len(per_slice) == cfg.dataset.num_slices and per_slice.min() > 0.5 * per_slice.mean()


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
    with pytest.raises(ValueError, match="dataset.files"):
        generate(make_config(overrides=SMALL + ['dataset.files=["other.csv"]']))
    with pytest.raises(ValueError, match="calendar year"):
        generate(make_config("tmall", overrides=SMALL + ["dataset.start=2015-12-01"]))


def test_cli_prints_the_result(make_config, tmp_path):
    from flows.cli import app

    raw = tmp_path / "cli_raw"
    result = CliRunner().invoke(app, ["generate", "--set", f"paths.raw_dir={raw}",
                                      "--set", "generate.rows=3000", "--set",
                                      "generate.users=100", "--set", "generate.items=300"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["rows"] == 3000 and Path(printed["files"][0]).exists()
    assert printed["rows_per_s"] > 0
