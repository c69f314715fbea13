"""Synthetic raw data in the exact public file formats (Taobao, Tmall, ratings CSV).

``generate(cfg)`` writes ``cfg.generate.rows`` lines of the preset's format
(``cfg.dataset.format``) into ``cfg.paths.raw_dir``, so ingest reads the sample and the real
downloads with the same reader:

- ``taobao`` -> ``UserBehavior.csv``, no header, ``user_id,item_id,category_id,behavior_type,
  timestamp``; behaviours ``pv``/``cart``/``fav``/``buy`` in the public file's shares;
  Unix seconds.
- ``tmall`` -> ``user_log_format1.csv``, header ``user_id,item_id,cat_id,seller_id,brand_id,
  time_stamp,action_type``; ``time_stamp`` is the local day as ``MMDD`` with the month
  unpadded (``829``, ``1111``; year implied); ``action_type`` 0 click, 1 cart, 2 purchase,
  3 favourite; ``brand_id`` empty for a few items, as in the public file.
- ``ratings`` -> ``ratings.csv``, header ``user,item,rating,timestamp``; integer ratings 1-5;
  Unix seconds.

Raw ids are large, sparse integers drawn from the public files' id ranges, so ingest's id
mapping does real work.

Generative model (why: a sequential collaborative model such as SCoRe must have something to
learn beyond popularity, and ingest/index must meet the quirks of real logs):

1. Communities. ``generate.communities`` latent groups K. Every item belongs to one community
   (round-robin over a random permutation, so none is empty); categories (and Tmall sellers)
   belong to communities too (group ``j`` to community ``j mod K``) and an item's category is
   one of its community's, skewed to the first ones. Every user has a main community.
2. Heavy tails. Within its community an item has Zipf weight ``rank^-ZIPF_ITEMS``; user
   activity (rows per user) is log-normal (``USER_ACTIVITY_SIGMA``), every user has >= 1 row
   when rows >= users.
3. Time. A user's rows are spread over the window (``dataset.start`` .. ``dataset.end`` in
   ``dataset.timezone``) by sorted uniforms (exponential spacings) mapped through a daily
   activity curve (``DIURNAL``). The file is grouped by user in ascending raw user id, as
   the public Taobao file is, and each user's rows are in time order. A share
   ``OUTSIDE_SHARE`` of rows falls up to ``OUTSIDE_DAYS`` days before or after the window,
   as stray rows do in the real file.
4. Choice of a fresh item at slice ``t``: the community is the user's main one with
   probability ``P_MAIN``, the user's drifting second interest with ``P_DRIFT`` (a community
   that changes every 2-4 slices, per user), otherwise any community uniformly (noise). The
   item is drawn from that community by its weight at slice ``t``:
   ``w_v(t) = rank_v^-ZIPF_ITEMS * exp(g_v * z_t)`` with ``g_v ~ N(0, POPULARITY_DRIFT)`` and
   ``z_t`` running from -1 (first slice) to 1 (last), so some items rise and some fade.
5. Repeats. With the format's ``repeat_share`` a row re-uses the item of one of the user's
   earlier rows, ``1 + Geometric(REPEAT_LAG_P)`` rows back (recent items are most likely).
6. Feedback. Taobao/Tmall behaviours are drawn in the public files' shares; ratings are
   high (4-5 mostly) for items of the user's main or drift community and low otherwise, so
   real negatives carry signal too.
7. Malformed lines. Each line is broken with probability ``generate.malformed_rate``, into one
   of the format's kinds (names match ingest's quarantine reasons): ``wrong_field_count``
   (truncated line, extra field, two records run together), ``non_numeric_id`` (empty,
   ``NULL``, prefixed or decimal id), ``bad_timestamp`` (ISO date text, empty, ``\\N``;
   Tmall: month 13, day 32, ISO date, empty), ``unknown_behavior`` (Taobao: ``click``,
   ``PV``, empty; Tmall: action 4, -1, empty) and, for ratings, ``bad_rating`` (0, 6, -1,
   empty, ``five``).

Determinism: global facts (ids, communities, weights, rows per user) come from
``numpy.random.default_rng(seed)``; every per-row random number is a counter-based hash of
(seed, stream, global row index), so the bytes do not depend on ``generate.chunk_rows``.
Chunks hold whole users (a user's repeats look back only at its own rows), at most
``chunk_rows`` rows unless one user alone has more; a worker thread draws the next chunk
while the current one is rendered to CSV by pyarrow and written.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs

from conf.loading import section_hash
from conf.schema import PipelineConfig
from spark_jobs.manifest import exists, filesystem, join, read_json, write_json

# Generative constants (see module docstring). Shares of real behaviours are facts of the public
# files; the others set how much learnable structure the sample carries.
ZIPF_ITEMS = 0.9  # item weight rank^-a inside a community: top 1% of items >> 1% of rows
USER_ACTIVITY_SIGMA = 1.0  # log-normal rows per user: a few heavy users, many light ones
P_MAIN = 0.6  # share of fresh choices from the user's main community
P_DRIFT = 0.25  # share from the user's slowly drifting second interest; the rest is noise
DRIFT_PERIODS = (2, 3, 4)  # slices between changes of a user's second interest
POPULARITY_DRIFT = 1.0  # std of an item's log-weight trend over the window
REPEAT_LAG_P = 0.3  # geometric lag of a repeat: mostly the last few rows
OUTSIDE_SHARE = 0.002  # rows with a timestamp outside the window (real logs have strays)
OUTSIDE_DAYS = 7  # how far outside the window stray rows fall
# Share of the day's activity per local hour 0..23: night trough, evening peak.
DIURNAL = np.array([3, 2, 1.2, 0.8, 0.6, 0.7, 1.2, 2.2, 3.2, 4, 4.5, 4.6,
                    4.6, 4.5, 4.5, 4.6, 4.6, 4.5, 4.6, 5, 5.6, 6, 5.5, 4.2])
RATINGS_LIKED = np.array([0.02, 0.04, 0.14, 0.40, 0.40])  # P(rating 1..5), liked community
RATINGS_NOISE = np.array([0.15, 0.25, 0.35, 0.17, 0.08])  # P(rating 1..5), noise pick
ITEMS_PER_SELLER = 220  # Tmall log: about 1.09M items over about 5,000 sellers
ITEMS_PER_BRAND = 130  # Tmall log: about 1.09M items over about 8,400 brands
BRAND_MISSING = 0.002  # Tmall: share of items whose brand_id is empty in the public file


@dataclass(frozen=True)
class FileFormat:
    """What the generator must reproduce of one public file format."""

    name: str
    file_name: str
    header: str | None  # exact first line, or None
    columns: tuple[str, ...]  # fields in file order
    # Largest raw id per entity in the public file: ids are drawn below these.
    id_space: dict[str, int]
    behaviors: tuple[str, ...]  # codes as written in the file ((), ratings)
    behavior_shares: tuple[float, ...]
    repeat_share: float  # share of rows that re-use an earlier item of the same user
    malformed_kinds: tuple[str, ...]


TAOBAO = FileFormat(
    name="taobao",
    file_name="UserBehavior.csv",
    header=None,
    columns=("user_id", "item_id", "category_id", "behavior_type", "timestamp"),
    id_space={"user": 1_018_011, "item": 5_163_070, "category": 5_162_429},
    behaviors=("pv", "cart", "fav", "buy"),
    behavior_shares=(0.89, 0.055, 0.03, 0.025),
    repeat_share=0.35,  # page views of the same item recur a lot in the public log
    malformed_kinds=("wrong_field_count", "non_numeric_id", "bad_timestamp",
                     "unknown_behavior"),
)
TMALL = FileFormat(
    name="tmall",
    file_name="user_log_format1.csv",
    header="user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type",
    columns=("user_id", "item_id", "cat_id", "seller_id", "brand_id", "time_stamp",
             "action_type"),
    id_space={"user": 424_170, "item": 1_113_166, "category": 1_671, "seller": 4_995,
              "brand": 8_477},
    behaviors=("0", "1", "2", "3"),  # click, cart, purchase, favourite
    behavior_shares=(0.8839, 0.0014, 0.0599, 0.0548),  # 48.55M/0.08M/3.29M/3.01M rows
    repeat_share=0.35,
    malformed_kinds=("wrong_field_count", "non_numeric_id", "bad_timestamp",
                     "unknown_behavior"),
)
RATINGS = FileFormat(
    name="ratings",
    file_name="ratings.csv",
    header="user,item,rating,timestamp",
    columns=("user", "item", "rating", "timestamp"),
    id_space={"user": 5_000_000, "item": 200_000, "category": 1_000},  # categories unwritten
    behaviors=(),
    behavior_shares=(),
    repeat_share=0.02,  # re-rating the same title is rare
    malformed_kinds=("wrong_field_count", "non_numeric_id", "bad_timestamp", "bad_rating"),
)
FORMATS = {f.name: f for f in (TAOBAO, TMALL, RATINGS)}

# Independent per-row random streams (any distinct integers).
(S_SPACING, S_SPACING_END, S_OUTSIDE, S_OUTSIDE_DAY, S_OUTSIDE_TIME, S_COMMUNITY, S_DRIFT,
 S_ITEM, S_REPEAT, S_LAG, S_BEHAVIOR, S_RATING, S_BAD, S_BAD_KIND, S_BAD_VARIANT) = range(15)
MASK64 = (1 << 64) - 1


def _splitmix(x: int) -> int:
    """SplitMix64 finaliser on a Python int (for stream keys)."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


class RowRandom:
    """Counter-based uniforms: the value for (stream, index) never depends on chunking."""

    def __init__(self, seed: int):
        self._seed = seed & MASK64

    def uniform(self, stream: int, index: np.ndarray) -> np.ndarray:
        """Uniforms in the open interval (0, 1), one per index.

        Args:
            stream: which independent stream (the ``S_*`` constants).
            index: (n,) non-negative integer array, e.g. global row numbers.

        Returns:
            (n,) float64; SplitMix64 of ``key(stream) + index * golden`` (uint64 arithmetic
            wraps, which is the point).
        """
        key = np.uint64(_splitmix(_splitmix(self._seed) ^ (stream * 0x632BE59BD9B4E019)))
        x = index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x += key
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
        return ((x >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


@dataclass(frozen=True)
class World:
    """Global facts of the synthetic population, fixed by the seed (see module docstring).

    Sizes: U users, V items, C categories, K communities, T slices, D window days.
    """

    user_raw: np.ndarray  # (U,) int64 raw user ids
    item_raw: np.ndarray  # (V,) int64 raw item ids
    user_start: np.ndarray  # (U+1,) int64 first global row of each user; [-1] = rows
    user_main: np.ndarray  # (U,) int64 main community
    user_period: np.ndarray  # (U,) int64 slices between drift changes
    user_phase: np.ndarray  # (U,) int64 offset of the drift schedule
    item_community: np.ndarray  # (V,) int64 community of each item
    item_category: np.ndarray  # (V,) int64 raw category id
    item_seller: np.ndarray  # (V,) int64 raw seller id (Tmall; empty otherwise)
    item_brand: np.ndarray  # (V,) int64 raw brand id, -1 = empty field (Tmall; empty otherwise)
    items_by_community: np.ndarray  # (V,) item indices grouped by community
    choice_cdf: np.ndarray  # (T*V,) float64: table t*K+k holds values in (t*K+k, t*K+k+1]
    hour_cdf: np.ndarray  # (D*24,) float64 cumulative share of in-window activity per hour
    hour_start: np.ndarray  # (D*24,) int64 UTC second where each local hour starts
    hour_length: np.ndarray  # (D*24,) float64 seconds per local hour (DST-safe)
    day_midnight: np.ndarray  # (D+2*OUTSIDE_DAYS+1,) int64 UTC midnights from start-OUTSIDE_DAYS
    day_mmdd: np.ndarray  # same shape: local date as M*100+D (Tmall time_stamp)


def _id_sample(rng: np.random.Generator, space: int, n: int) -> np.ndarray:
    """``n`` distinct raw ids in 1..max(space, 2n), in random order (sparse, like real ids)."""
    return rng.choice(max(space, 2 * n), size=n, replace=False).astype(np.int64) + 1


def _group_of(community: np.ndarray, groups: int, k: int, u: np.ndarray) -> np.ndarray:
    """Index of a group (category, seller) tied to each community.

    Group ``j`` belongs to community ``j mod K``; an entity of community ``c`` takes one of
    its community's groups, skewed towards the first (``u**2``). With fewer groups than
    communities, communities share group ``c mod groups``.
    """
    if groups < k:
        return community % groups
    owned = (groups - community + k - 1) // k  # groups j < groups with j % k == c (>= 1)
    return community + np.floor(owned * u**2).astype(np.int64) * k


def _local_days(cfg: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """UTC midnights and MMDD of the local days start-OUTSIDE_DAYS .. end+OUTSIDE_DAYS.

    Returns:
        (midnight, mmdd): (D + 2*OUTSIDE_DAYS + 1,) int64 each; entry ``i`` is local day
        ``start + i - OUTSIDE_DAYS``, the extra last day bounds the final day's length.
    """
    ds = cfg.dataset
    zone = ZoneInfo(ds.timezone)
    days = ds.slice_days * ds.num_slices
    first = ds.start - dt.timedelta(days=OUTSIDE_DAYS)
    dates = [first + dt.timedelta(days=i) for i in range(days + 2 * OUTSIDE_DAYS + 1)]
    midnight = np.array([int(dt.datetime.combine(d, dt.time(0), tzinfo=zone).timestamp())
                         for d in dates], dtype=np.int64)
    mmdd = np.array([d.month * 100 + d.day for d in dates], dtype=np.int64)
    return midnight, mmdd


def build_world(cfg: PipelineConfig, fmt: FileFormat) -> World:
    """Draw the population, item tables and time grid for ``cfg`` (see module docstring).

    Raises:
        ValueError: fewer items than communities (a community would have no item).
    """
    g, ds = cfg.generate, cfg.dataset
    if g.items < g.communities:
        raise ValueError(f"generate.items ({g.items}) must be >= generate.communities "
                         f"({g.communities}): every community needs an item")
    rng = np.random.default_rng(g.seed)
    k, n_users, n_items, n_slices = g.communities, g.users, g.items, ds.num_slices

    user_raw = np.sort(_id_sample(rng, fmt.id_space["user"], n_users))  # files go by user id
    item_raw = _id_sample(rng, fmt.id_space["item"], n_items)
    category_raw = _id_sample(rng, fmt.id_space["category"], g.categories)

    activity = rng.lognormal(0.0, USER_ACTIVITY_SIGMA, n_users)
    if g.rows >= n_users:
        rows_per_user = 1 + rng.multinomial(g.rows - n_users, activity / activity.sum())
    else:
        rows_per_user = rng.multinomial(g.rows, activity / activity.sum())
    user_start = np.concatenate([[0], np.cumsum(rows_per_user)]).astype(np.int64)
    user_main = rng.integers(0, k, n_users)
    user_period = rng.choice(np.array(DRIFT_PERIODS), n_users)
    user_phase = rng.integers(0, 1 << 30, n_users) % user_period

    item_community = rng.permutation(np.arange(n_items) % k)  # every community non-empty
    item_category = category_raw[_group_of(item_community, g.categories, k,
                                           rng.random(n_items))]
    if fmt is TMALL:
        sellers = math.ceil(n_items / ITEMS_PER_SELLER)
        seller_raw = _id_sample(rng, fmt.id_space["seller"], sellers)
        item_seller = seller_raw[_group_of(item_community, sellers, k, rng.random(n_items))]
        brands = math.ceil(n_items / ITEMS_PER_BRAND)
        brand_raw = _id_sample(rng, fmt.id_space["brand"], brands)
        item_brand = np.where(rng.random(n_items) < BRAND_MISSING, -1,
                              brand_raw[rng.integers(0, brands, n_items)])
    else:  # only Tmall has sellers and brands
        item_seller = item_brand = np.zeros(0, dtype=np.int64)

    # Items grouped by community in random order; the order inside a group is the Zipf rank.
    items_by_community = np.lexsort((rng.random(n_items), item_community))
    sorted_community = item_community[items_by_community]
    community_start = np.searchsorted(sorted_community, np.arange(k))
    rank = np.arange(n_items) - community_start[sorted_community]
    log_base = -ZIPF_ITEMS * np.log1p(rank)
    trend = rng.normal(0.0, POPULARITY_DRIFT, n_items)[items_by_community]
    z = np.linspace(-1.0, 1.0, n_slices) if n_slices > 1 else np.zeros(1)
    tables = []
    for t in range(n_slices):
        weight = np.exp(log_base + trend * z[t])
        cum = np.cumsum(weight)
        before = np.concatenate([[0.0], cum])[community_start]  # mass before each group
        total = np.concatenate([cum[community_start[1:] - 1], cum[-1:]]) - before
        within = (cum - before[sorted_community]) / total[sorted_community]
        last = np.concatenate([community_start[1:] - 1, [n_items - 1]])
        within[last] = 1.0  # exact upper edge: a draw never spills into the next table
        tables.append(t * k + sorted_community + within)
    choice_cdf = np.concatenate(tables)

    midnight, mmdd = _local_days(cfg)
    days = ds.slice_days * ds.num_slices
    day_length = np.diff(midnight[OUTSIDE_DAYS:OUTSIDE_DAYS + days + 1]).astype(np.float64)
    hour_length = np.repeat(day_length / 24.0, 24)
    hour_start = (np.repeat(midnight[OUTSIDE_DAYS:OUTSIDE_DAYS + days], 24)
                  + np.floor(np.tile(np.arange(24), days) * hour_length).astype(np.int64))
    hour_weight = np.tile(DIURNAL, days)
    hour_cdf = np.cumsum(hour_weight) / hour_weight.sum()
    hour_cdf[-1] = 1.0
    return World(user_raw, item_raw, user_start, user_main, user_period, user_phase,
                 item_community, item_category, item_seller, item_brand, items_by_community,
                 choice_cdf, hour_cdf, hour_start, hour_length, midnight, mmdd)


@dataclass(frozen=True)
class Rows:
    """One chunk of generated rows (n rows, in file order) before rendering."""

    user: np.ndarray  # (n,) user index
    item: np.ndarray  # (n,) item index
    behavior: np.ndarray  # (n,) int8 index into the format's behaviours (empty for ratings)
    rating: np.ndarray  # (n,) int8 1..5 (ratings format; empty otherwise)
    ts: np.ndarray  # (n,) int64 UTC seconds
    day: np.ndarray  # (n,) int64 local day offset from dataset.start (may be outside)
    bad: np.ndarray  # (b,) local indices of rows to break, ascending
    bad_kind: np.ndarray  # (b,) index into the format's malformed kinds
    bad_variant: np.ndarray  # (b,) uniforms that pick how each line is broken


def generate_rows(cfg: PipelineConfig, fmt: FileFormat, world: World, rand: RowRandom,
                  u0: int, u1: int) -> Rows:
    """Rows of users ``u0 .. u1-1`` (global rows ``user_start[u0] .. user_start[u1]-1``).

    Args:
        cfg: the pipeline config (dataset window, generate section).
        fmt: the file format (behaviour shares, repeat share, malformed kinds).
        world: global facts from :func:`build_world`.
        rand: the per-row random streams.
        u0, u1: user index range; a chunk always holds whole users.

    Returns:
        The chunk's rows in file order (users ascending, each user's rows in time order).
    """
    ds, g = cfg.dataset, cfg.generate
    k, n_items = g.communities, len(world.item_raw)
    r0, r1 = int(world.user_start[u0]), int(world.user_start[u1])
    n = r1 - r0
    row = np.arange(r0, r1, dtype=np.int64)
    counts = np.diff(world.user_start[u0:u1 + 1])
    users = np.arange(u0, u1, dtype=np.int64)
    user = np.repeat(users, counts)
    first = np.repeat(world.user_start[u0:u1] - r0, counts)  # local row of the user's first
    local = np.arange(n, dtype=np.int64)

    # Sorted uniforms per user from exponential spacings: S_k / (S_n + E_end).
    spacing = -np.log(rand.uniform(S_SPACING, row))
    cum = np.cumsum(spacing)
    base = cum[first] - spacing[first]
    end = np.repeat(-np.log(rand.uniform(S_SPACING_END, users)), counts)
    last = np.repeat(world.user_start[u0 + 1:u1 + 1] - r0 - 1, counts)
    when = (cum - base) / (cum[last] - base + end)  # in (0, 1), ascending within a user
    hour = np.minimum(np.searchsorted(world.hour_cdf, when, side="right"),
                      len(world.hour_cdf) - 1)
    below = np.where(hour > 0, world.hour_cdf[hour - 1], 0.0)
    fraction = np.clip((when - below) / (world.hour_cdf[hour] - below), 0.0, 1.0 - 1e-12)
    ts = world.hour_start[hour] + np.floor(fraction * world.hour_length[hour]).astype(np.int64)
    day = hour // 24

    # Stray rows: a day up to OUTSIDE_DAYS before the window or after it, any second of it.
    n_days = ds.slice_days * ds.num_slices
    outside = np.flatnonzero(rand.uniform(S_OUTSIDE, row) < OUTSIDE_SHARE)
    if outside.size:
        u = rand.uniform(S_OUTSIDE_DAY, row[outside])
        offset = 1 + np.floor((2 * u % 1.0) * OUTSIDE_DAYS).astype(np.int64)  # 1..OUTSIDE_DAYS
        stray_day = np.where(u < 0.5, -offset, n_days - 1 + offset)
        midnight = world.day_midnight[stray_day + OUTSIDE_DAYS]
        length = world.day_midnight[stray_day + OUTSIDE_DAYS + 1] - midnight
        ts[outside] = midnight + np.floor(
            rand.uniform(S_OUTSIDE_TIME, row[outside]) * length).astype(np.int64)
        day[outside] = stray_day
    slice_ = np.clip(day // ds.slice_days, 0, ds.num_slices - 1)

    # Community of each fresh choice: main, drifting second interest, or noise.
    u = rand.uniform(S_COMMUNITY, row)
    period = world.user_period[user]
    epoch = (slice_ + world.user_phase[user]) // period
    drift = np.floor(rand.uniform(S_DRIFT, user * (ds.num_slices + 8) + epoch) * k)
    noise = np.floor((u - P_MAIN - P_DRIFT) / (1.0 - P_MAIN - P_DRIFT) * k)
    community = np.where(u < P_MAIN, world.user_main[user],
                         np.where(u < P_MAIN + P_DRIFT, drift, np.clip(noise, 0, k - 1)))
    liked = u < P_MAIN + P_DRIFT
    table = slice_ * k + community.astype(np.int64)
    key = table + rand.uniform(S_ITEM, row)
    # Searching keys grouped by table keeps each binary search inside one table's cache lines
    # (~8x faster on millions of items); 16-bit keys get numpy's radix sort.
    narrow = np.int16 if ds.num_slices * k < 2**15 else np.int64
    order = np.argsort(table.astype(narrow), kind="stable")
    drawn = np.empty(n, dtype=np.int64)
    drawn[order] = np.searchsorted(world.choice_cdf, key[order], side="right")
    fresh = world.items_by_community[drawn - slice_ * n_items]

    # Repeats point back 1 + Geometric(REPEAT_LAG_P) rows within the user; follow chains.
    repeat = (rand.uniform(S_REPEAT, row) < fmt.repeat_share) & (local > first)
    lag = 1 + np.floor(np.log(rand.uniform(S_LAG, row)) / math.log1p(-REPEAT_LAG_P))
    source = np.where(repeat, np.maximum(local - lag.astype(np.int64), first), local)
    while True:  # pointer jumping: chains halve each pass, fresh rows are fixed points
        nxt = source[source]
        if np.array_equal(nxt, source):
            break
        source = nxt
    item = fresh[source]
    liked = liked[source]

    behavior = rating = np.zeros(0, dtype=np.int8)
    if fmt.behaviors:
        shares = np.cumsum(fmt.behavior_shares)
        behavior = np.minimum(np.searchsorted(shares / shares[-1], rand.uniform(S_BEHAVIOR, row)),
                              len(shares) - 1).astype(np.int8)
    if fmt is RATINGS:
        u = rand.uniform(S_RATING, row)
        rating = 1 + np.where(liked, np.searchsorted(np.cumsum(RATINGS_LIKED), u),
                              np.searchsorted(np.cumsum(RATINGS_NOISE), u))
        rating = np.minimum(rating, 5).astype(np.int8)

    bad = np.flatnonzero(rand.uniform(S_BAD, row) < g.malformed_rate)
    kinds = len(fmt.malformed_kinds)
    bad_kind = np.minimum(np.floor(rand.uniform(S_BAD_KIND, row[bad]) * kinds),
                          kinds - 1).astype(np.int64)
    return Rows(user, item, behavior, rating, ts, day, bad, bad_kind,
                rand.uniform(S_BAD_VARIANT, row[bad]))


def to_table(fmt: FileFormat, world: World, rows: Rows) -> pa.Table:
    """The chunk as an Arrow table with the format's columns, in file order."""
    user = world.user_raw[rows.user]
    item = world.item_raw[rows.item]
    if fmt is TAOBAO:
        behavior = pa.DictionaryArray.from_arrays(rows.behavior, list(fmt.behaviors))
        columns = [user, item, world.item_category[rows.item], behavior, rows.ts]
    elif fmt is TMALL:
        brand = world.item_brand[rows.item]
        columns = [user, item, world.item_category[rows.item], world.item_seller[rows.item],
                   pa.array(brand, mask=brand < 0),
                   world.day_mmdd[rows.day + OUTSIDE_DAYS], rows.behavior]
    else:
        columns = [user, item, rows.rating, rows.ts]
    return pa.table(columns, names=list(fmt.columns))


def _pick(options: tuple, u: float):
    return options[min(int(u * len(options)), len(options) - 1)]


def break_line(fmt: FileFormat, kind: str, line: bytes, u: float) -> bytes:
    """A malformed version of one well-formed line, the way real files break.

    Args:
        fmt: the file format.
        kind: one of ``fmt.malformed_kinds``.
        line: the well-formed line, without its newline.
        u: uniform in (0, 1) that picks the variant (deterministic by seed).

    Returns:
        The broken line, without newline; ingest must quarantine it with reason ``kind``.
    """
    fields = line.split(b",")
    ts_field = fmt.columns.index("time_stamp" if fmt is TMALL else "timestamp")
    if kind == "wrong_field_count":
        return _pick((
            b",".join(fields[:-1]),  # truncated: the last field lost
            line + b",",  # a trailing empty field
            line + line,  # a lost newline runs two records together
        ), u)
    if kind == "non_numeric_id":
        column = 0 if u < 0.5 else 1
        fields[column] = _pick((b"", b"NULL", b"u" + fields[column], fields[column] + b".0"),
                               2 * u % 1.0)
    elif kind == "bad_timestamp":
        if fmt is TMALL:
            mmdd = int(fields[ts_field])
            month, day = divmod(mmdd, 100)
            fields[ts_field] = _pick((b"13%02d" % day, b"%d32" % month,
                                      b"2015-%02d-%02d" % (month, day), b""), u)
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(fields[ts_field])))
            fields[ts_field] = _pick((stamp.encode(), b"", b"\\N"), u)
    elif kind == "unknown_behavior":
        position = fmt.columns.index("action_type" if fmt is TMALL else "behavior_type")
        options = (b"4", b"-1", b"") if fmt is TMALL else (b"click", b"PV", b"")
        fields[position] = _pick(options, u)
    elif kind == "bad_rating":
        fields[fmt.columns.index("rating")] = _pick((b"0", b"6", b"-1", b"", b"five"), u)
    else:
        raise ValueError(f"unknown malformed kind {kind!r} for format {fmt.name}")
    return b",".join(fields)


def render(fmt: FileFormat, world: World, rows: Rows) -> list[bytes | memoryview]:
    """CSV bytes of one chunk (no header), malformed lines spliced in place of good ones.

    Returns:
        Pieces to write in order; together they hold exactly ``len(rows.ts)`` lines.
    """
    sink = pa.BufferOutputStream()
    pacsv.write_csv(to_table(fmt, world, rows), sink,
                    pacsv.WriteOptions(include_header=False, quoting_style="none",
                                       batch_size=1 << 16))
    text = memoryview(sink.getvalue())
    if rows.bad.size == 0:
        return [text]
    ends = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == ord("\n"))
    pieces: list[bytes | memoryview] = []
    previous = 0
    for local, kind, u in zip(rows.bad.tolist(), rows.bad_kind.tolist(),
                              rows.bad_variant.tolist()):
        start = int(ends[local - 1]) + 1 if local else 0
        end = int(ends[local])
        pieces.append(text[previous:start])
        pieces.append(break_line(fmt, fmt.malformed_kinds[kind], bytes(text[start:end]), u))
        previous = end  # keep the newline of the replaced line
    pieces.append(text[previous:])
    return pieces


def user_chunks(user_start: np.ndarray, chunk_rows: int) -> list[tuple[int, int]]:
    """Consecutive user ranges ``(u0, u1)`` of at most ``chunk_rows`` rows each (a single
    user with more rows gets a chunk of its own).

    Args:
        user_start: (U+1,) first global row of each user, ``user_start[-1]`` = rows.
        chunk_rows: row budget per chunk.
    """
    chunks, u0, n_users = [], 0, len(user_start) - 1
    while u0 < n_users:
        fits = int(np.searchsorted(user_start, user_start[u0] + chunk_rows, side="right")) - 1
        u1 = min(max(u0 + 1, fits), n_users)
        chunks.append((u0, u1))
        u0 = u1
    return chunks


def _check_window(cfg: PipelineConfig, fmt: FileFormat) -> None:
    ds = cfg.dataset
    first = ds.start - dt.timedelta(days=OUTSIDE_DAYS)
    last = ds.end + dt.timedelta(days=OUTSIDE_DAYS)
    if fmt is TMALL and first.year != last.year:
        raise ValueError(f"dataset {ds.name!r}: Tmall time_stamp (MMDD) has no year, so the "
                         f"window {ds.start}..{ds.end} (+-{OUTSIDE_DAYS} days) must stay "
                         f"within one calendar year")
    if not any(fnmatch.fnmatch(fmt.file_name, pattern) for pattern in ds.files):
        raise ValueError(f"dataset {ds.name!r}: generated file {fmt.file_name!r} matches none "
                         f"of dataset.files {ds.files}, so ingest would not read it")


STAMP = "_generated.json"  # in raw_dir: the config the file there was generated under


def _raw_dir(cfg: PipelineConfig) -> str:
    raw_dir = cfg.paths.raw_dir
    return raw_dir if "://" in raw_dir else os.path.abspath(raw_dir)


def generated_hash(cfg: PipelineConfig) -> str:
    """Hash of the settings that shape the generated bytes (stamped beside the file):
    the ``dataset`` and ``generate`` sections, less ``chunk_rows`` (bytes do not depend
    on it)."""
    shaping = cfg.model_copy(update={"generate": cfg.generate.model_copy(
        update={"chunk_rows": 1})})
    return section_hash(shaping, "dataset", "generate")


def why_generate(cfg: PipelineConfig) -> str | None:
    """Why the sample's raw file must be (re)generated; None when ``paths.raw_dir`` holds
    the file :func:`generate` wrote under the same ``dataset`` and ``generate`` sections.

    So a changed ``generate.rows`` (or seed, or window) regenerates the sample instead of
    silently training on the old one; an unchanged config reuses it.
    """
    stamp = read_json(join(_raw_dir(cfg), STAMP))
    if stamp is None:
        return f"no generated sample in {cfg.paths.raw_dir}"
    if not exists(join(_raw_dir(cfg), FORMATS[cfg.dataset.format].file_name)):
        return f"generated file missing from {cfg.paths.raw_dir}"
    if stamp.get("config_hash") != generated_hash(cfg):
        return "dataset or generate config changed since the sample was generated"
    return None


def generate(cfg: PipelineConfig) -> dict:
    """Write ``generate.rows`` synthetic lines in ``dataset.format`` to ``paths.raw_dir``.

    The file is streamed chunk by chunk (whole users, about ``generate.chunk_rows`` rows
    each) to ``<file>.tmp-<id>`` and renamed into place when complete; then
    ``<raw_dir>/_generated.json`` records the config hash it was written under (read by
    :func:`why_generate`).

    Args:
        cfg: composed pipeline config; reads ``dataset``, ``generate`` and ``paths.raw_dir``.

    Returns:
        ``{"files": [path], "rows": lines written (header excluded), "malformed": {kind:
        count}, "outside_window": well-formed rows with a timestamp outside the window,
        "seconds": wall time, "rows_per_s": rows / seconds}``.

    Raises:
        ValueError: fewer items than communities, a generated file name that
            ``dataset.files`` would not match, or a Tmall window spanning two years.
    """
    started = time.perf_counter()
    fmt = FORMATS[cfg.dataset.format]
    _check_window(cfg, fmt)
    world = build_world(cfg, fmt)
    rand = RowRandom(cfg.generate.seed)
    fs, directory = filesystem(_raw_dir(cfg))
    fs.create_dir(directory, recursive=True)
    final = join(directory, fmt.file_name)
    tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
    malformed = dict.fromkeys(fmt.malformed_kinds, 0)
    outside = 0
    n_days = cfg.dataset.slice_days * cfg.dataset.num_slices
    try:
        # One worker draws chunk i+1 while this thread renders and writes chunk i (numpy and
        # pyarrow release the GIL); at most two chunks are in memory.
        with fs.open_output_stream(tmp) as out, ThreadPoolExecutor(max_workers=1) as pool:
            if fmt.header is not None:
                out.write(fmt.header.encode() + b"\n")
            chunks = user_chunks(world.user_start, cfg.generate.chunk_rows)
            pending = pool.submit(generate_rows, cfg, fmt, world, rand, *chunks[0])
            for following in [*chunks[1:], None]:
                rows = pending.result()
                if following is not None:
                    pending = pool.submit(generate_rows, cfg, fmt, world, rand, *following)
                for piece in render(fmt, world, rows):
                    out.write(piece)
                for kind, count in zip(*np.unique(rows.bad_kind, return_counts=True)):
                    malformed[fmt.malformed_kinds[kind]] += int(count)
                stray = (rows.day < 0) | (rows.day >= n_days)
                stray[rows.bad] = False
                outside += int(stray.sum())
        fs.move(tmp, final)
    except BaseException:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
        raise
    seconds = time.perf_counter() - started
    rows_total = int(world.user_start[-1])
    result = {"files": [final], "rows": rows_total, "malformed": malformed,
              "outside_window": outside, "seconds": round(seconds, 3),
              "rows_per_s": round(rows_total / seconds) if seconds > 0 else None}
    write_json(join(_raw_dir(cfg), STAMP), result | {"config_hash": generated_hash(cfg)})
    return result
