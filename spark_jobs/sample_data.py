"""Synthetic raw data in the exact public file formats of every preset.

``generate(cfg)`` writes ``cfg.generate.rows`` interactions in the preset's format
(``cfg.dataset.format``) into ``cfg.paths.raw_dir``, so ingest reads the sample and the real
downloads with the same reader. The formats and their bytes are in
``spark_jobs/sample_formats.py``: ``taobao`` (``UserBehavior.csv``), ``tmall``
(``user_log_format1.csv``), ``ratings`` (CSV with header, integer ratings), ``amazon_ratings``
(2014 ``ratings_<Cat>.csv``: no header, ``user,item,rating,timestamp``, ratings ``1.0``-``5.0``,
UTC-midnight timestamps), ``amazon_ratings_2018`` (``item,user,rating,timestamp``),
``amazon_reviews`` (5-core JSON lines, ``.json.gz`` when the file name says so),
``yelp_reviews`` (JSON lines, local ``date``), ``s3rec`` (``<Name>.txt`` sequences and, with
``dataset.negatives_file``, the aligned ``<Name>_sample.txt`` of ``index.eval_negatives``
never-touched items per user), ``movielens_100k`` (``u.data``), ``movielens_1m``
(``ratings.dat``) and ``recbole_inter`` (RecBole's atomic ``.inter`` with ML-100K's
tab-separated typed header ``user_id:token``, ``item_id:token``, ``rating:float``,
``timestamp:float``). The file name is the preset's literal ``dataset.files`` entry (else the
format's default name), so the sample is written where the preset reads.

Raw ids are what the public files use: large, sparse integers drawn from the files' id ranges
(Taobao, Tmall, ratings CSV), 1..n (MovieLens, S3-Rec), Amazon reviewer ids and 10-character
ASINs, or Yelp's 22-character ids; so ingest's id mapping does real work.

Generative model (why: a sequential collaborative model such as SCoRe must have something to
learn beyond popularity, and ingest/index must meet the quirks of real logs):

1. Communities. ``generate.communities`` latent groups K. Every item belongs to one community
   (round-robin over a random permutation, so none is empty); categories (and Tmall sellers)
   belong to communities too (group ``j`` to community ``j mod K``) and an item's category is
   one of its community's, skewed to the first ones. Every user has a main community.
2. Heavy tails. Within its community an item has Zipf weight ``rank^-generate.item_zipf``; user
   activity (rows per user) is log-normal (``USER_ACTIVITY_SIGMA``); every user has at least
   the format's ``min_user_rows`` rows (1; 5 for the 5-core files; 20 for MovieLens). The
   5-core formats (Amazon 5-core reviews, S3-Rec) then write only the rows of the drawn
   rows' iterative 5-core (``core``), as the public files were cut, so ingest's own 5-core
   keeps them all and S3-Rec's negatives name only items of the file.
3. Time. A user's rows are spread over the window (``dataset.start`` .. ``dataset.end`` in
   ``dataset.timezone``) by sorted uniforms (exponential spacings) mapped through a daily
   activity curve (``DIURNAL``). The file is grouped by user in ascending raw user id, as
   the public Taobao file is, and each user's rows are in time order. A share
   ``OUTSIDE_SHARE`` of rows falls up to ``OUTSIDE_DAYS`` days before or after the window,
   as stray rows do in the real file. Amazon formats write the UTC day's midnight (their
   ``unixReviewTime`` has day resolution); rows of one day keep their order in the file.
4. Choice of a fresh item at slice ``t``: the community is the user's main one with
   probability ``generate.main_share``, the user's drifting second interest with
   ``generate.drift_share`` (a community
   that changes every 2-4 slices, per user), otherwise any community uniformly (noise). The
   item is drawn from that community by its weight at slice ``t``:
   ``w_v(t) = rank_v^-item_zipf * exp(g_v * z_t)`` with ``g_v ~ N(0, POPULARITY_DRIFT)`` and
   ``z_t`` running from -1 (first slice) to 1 (last), so some items rise and some fade.
5. Repeats. With the format's ``repeat_share`` a row re-uses the item of one of the user's
   earlier rows, ``1 + Geometric(REPEAT_LAG_P)`` rows back (recent items are most likely).
   Transitions. With ``generate.transition_share`` a row that is not the user's first and not a
   repeat follows the user's previous row instead of point 4: it takes one of that item's
   ``TRANSITION_FANOUT`` successors, uniformly. Each item's successors are drawn once, with
   replacement, from its own community by the items' base weights (point 2, without the trend; a
   popular item may fill two places), never the item itself (so a share above 0 needs
   ``generate.items >= 2 x communities``); the lists are one-way (``w`` after ``v`` says nothing
   of ``v`` after ``w``). A transition keeps its predecessor's affinity (point 6). Real logs
   read in order carry this: on the real Amazon Toys 5-core (S3-Rec's sequences), ranking each
   test list by what came right after the history's last item in the train parts gives 1.22x
   popularity's HR@10, by what came after a random earlier item 1.05x, by what came before the
   last item 1.04x (``benchmarks/order_signal.py``); without transitions the generated log gave
   1.04x, 1.05x and 1.05x. 0 (the default) draws nothing: the bytes of every preset without it
   are those of the generator before.
6. Feedback. Taobao/Tmall behaviours are drawn in the public files' shares. Ratings depend
   on the user-item affinity and on the item: a choice from the user's main or drifting
   community (one the user likes) is rated from ``RATINGS_LIKED`` (4-5 mostly), a noise
   choice from ``RATINGS_NOISE`` (low), and a repeat keeps its source's affinity; so
   negative feedback (low ratings) points at items outside the user's interests and carries
   signal too. Every item has a quality ``q`` (standard normal, correlated
   ``QUALITY_POPULARITY`` with its log popularity weight: good items are also chosen more),
   which tilts its rating distribution: P(r) times ``exp(QUALITY_TILT * q * (r - 3))``,
   renormalised. Real logs have this link and a generator without it did not: on
   MovieLens-100K under the feedback labels (4-5 positive, 1 negative, 10-core, each user's
   last active day the test) positive test targets outrank negative ones by train
   popularity with AUC 0.73, and an item's positive share rises with its count (Spearman
   0.31); on ``sample-feedback`` without quality 0.49 and -0.11, with it 0.73 and 0.16.
7. Malformed lines. Each line (a row; a user's line for ``s3rec``) is broken with
   probability ``generate.malformed_rate``, into one of the format's kinds (names match
   ingest's quarantine reasons): ``wrong_field_count`` (truncated line, extra field, two
   records run together), ``non_numeric_id`` (empty, ``NULL``, prefixed or decimal id;
   S3-Rec: one item token), ``bad_timestamp`` (ISO date text, empty, ``\\N``; Tmall: month
   13, day 32, ISO date, empty; JSON: a date string, null, a bad date), ``unknown_behavior``
   (Taobao: ``click``, ``PV``, empty; Tmall: action 4, -1, empty), ``bad_rating`` (0, 6, -1,
   empty, ``five``; JSON: 0.0, 6.0, a string, null), ``bad_json`` (an object cut off or
   without its closing brace) and ``missing_field`` (a required field left out).

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
from contextlib import ExitStack
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow.fs as pafs

from conf.loading import section_hash
from conf.schema import PipelineConfig
from store.files import exists, filesystem, join, read_json, write_json
from spark_jobs.sample_formats import BASE64URL, DAY, FORMATS, TMALL, Chunk, FileFormat, \
    render, string_ids

GENERATOR_VERSION = 2  # raise when a change moves the bytes of an unchanged config (2: quality)
# Generative constants (see module docstring). Shares of real behaviours are facts of the public
# files; the others set how much learnable structure the sample carries.
USER_ACTIVITY_SIGMA = 1.0  # log-normal rows per user: a few heavy users, many light ones
DRIFT_PERIODS = (2, 3, 4)  # slices between changes of a user's second interest
POPULARITY_DRIFT = 1.0  # std of an item's log-weight trend over the window
REPEAT_LAG_P = 0.3  # geometric lag of a repeat: mostly the last few rows
TRANSITION_FANOUT = 10  # successors of each item that a transition picks from (point 5)
OUTSIDE_SHARE = 0.002  # rows with a timestamp outside the window (real logs have strays)
OUTSIDE_DAYS = 7  # how far outside the window stray rows fall
UNSLICED_PERIODS = 12  # an unsliced window drifts over this many equal periods
NOTIONAL_START, NOTIONAL_DAYS = dt.date(2000, 1, 1), 360  # s3rec: no dates, only an order
# Share of the day's activity per local hour 0..23: night trough, evening peak.
DIURNAL = np.array([3, 2, 1.2, 0.8, 0.6, 0.7, 1.2, 2.2, 3.2, 4, 4.5, 4.6,
                    4.6, 4.5, 4.5, 4.6, 4.6, 4.5, 4.6, 5, 5.6, 6, 5.5, 4.2])
RATINGS_LIKED = np.array([0.02, 0.04, 0.14, 0.40, 0.40])  # P(rating 1..5), liked community
RATINGS_NOISE = np.array([0.15, 0.25, 0.35, 0.17, 0.08])  # P(rating 1..5), noise pick
QUALITY_POPULARITY = 0.8  # correlation of an item's quality with its log popularity weight
QUALITY_TILT = 0.5  # P(rating r) times exp(QUALITY_TILT * quality * (r - 3)), renormalised
ITEMS_PER_SELLER = 220  # Tmall log: about 1.09M items over about 5,000 sellers
ITEMS_PER_BRAND = 130  # Tmall log: about 1.09M items over about 8,400 brands
BRAND_MISSING = 0.002  # Tmall: share of items whose brand_id is empty in the public file


# Independent per-row random streams (any distinct integers).
(S_SPACING, S_SPACING_END, S_OUTSIDE, S_OUTSIDE_DAY, S_OUTSIDE_TIME, S_COMMUNITY, S_DRIFT,
 S_ITEM, S_REPEAT, S_LAG, S_BEHAVIOR, S_RATING, S_BAD, S_BAD_KIND, S_BAD_VARIANT,
 S_REVIEW_ID, S_NEGATIVE, S_TRANSITION, S_SUCCESSOR) = range(19)
S_EXTRA = 32  # S_EXTRA + j, j < EXTRA: uniforms for review text, names and votes
EXTRA = 6
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
            (n,) float64 from the top 53 bits of :meth:`bits`.
        """
        return ((self.bits(stream, index) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53

    def bits(self, stream: int, index: np.ndarray) -> np.ndarray:
        """(n,) uint64: SplitMix64 of ``key(stream) + index * golden`` (uint64 arithmetic
        wraps, which is the point)."""
        key = np.uint64(_splitmix(_splitmix(self._seed) ^ (stream * 0x632BE59BD9B4E019)))
        x = index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x += key
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
        return x


@dataclass(frozen=True)
class World:
    """Global facts of the synthetic population, fixed by the seed (see module docstring).

    Sizes: U users, V items, C categories, K communities, T slices, D window days.
    """

    user_raw: np.ndarray  # (U,) raw user ids: int64, or bytes for string-id formats
    item_raw: np.ndarray  # (V,) raw item ids, likewise
    user_start: np.ndarray  # (U+1,) int64 first global row of each user; [-1] = rows
    user_main: np.ndarray  # (U,) int64 main community
    user_period: np.ndarray  # (U,) int64 slices between drift changes
    user_phase: np.ndarray  # (U,) int64 offset of the drift schedule
    item_community: np.ndarray  # (V,) int64 community of each item
    item_category: np.ndarray  # (V,) int64 raw category id
    item_seller: np.ndarray  # (V,) int64 raw seller id (Tmall; empty otherwise)
    item_brand: np.ndarray  # (V,) int64 raw brand id, -1 = empty field (Tmall; empty otherwise)
    item_quality: np.ndarray  # (V,) float64 standard-normal quality: tilts its ratings
    item_next: np.ndarray  # (V, TRANSITION_FANOUT) int64 successors (point 5); (0, F) unused
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


def _quality(rng: np.random.Generator, log_weight: np.ndarray) -> np.ndarray:
    """Each item's quality (point 6): standard normal, as good as it is popular in part.

    ``q = QUALITY_POPULARITY * zscore(log_weight) + sqrt(1 - QUALITY_POPULARITY**2) * N(0, 1)``.

    Args:
        rng: the world's generator (drawn last, so the other world facts do not move).
        log_weight: (V,) each item's log base weight ``-item_zipf * log1p(rank)``.

    Returns:
        (V,) float64 in ``log_weight``'s order.
    """
    spread = log_weight.std()
    z = (log_weight - log_weight.mean()) / spread if spread > 0 else np.zeros_like(log_weight)
    return (QUALITY_POPULARITY * z
            + math.sqrt(1.0 - QUALITY_POPULARITY**2) * rng.standard_normal(len(z)))


def _community_cdf(weight: np.ndarray, sorted_community: np.ndarray,
                   community_start: np.ndarray, offset: int = 0) -> np.ndarray:
    """Cumulative share of each item inside its community, offset by the community's index.

    Args:
        weight: (V,) item weights in ``items_by_community`` order.
        sorted_community: (V,) community of each position of that order (ascending).
        community_start: (K,) first position of each community.
        offset: added to the community's index (slice ``t``'s table: ``t * K``), before the
            share, so each value is rounded once.

    Returns:
        (V,) float64: community ``c``'s items hold ascending values in
        ``(offset + c, offset + c + 1]``, its last exactly ``offset + c + 1``, so
        ``searchsorted(cdf, offset + c + u, side="right")`` with ``u`` in (0, 1) draws one of
        them by weight.
    """
    cum = np.cumsum(weight)
    before = np.concatenate([[0.0], cum])[community_start]  # mass before each group
    total = np.concatenate([cum[community_start[1:] - 1], cum[-1:]]) - before
    within = (cum - before[sorted_community]) / total[sorted_community]
    within[np.concatenate([community_start[1:] - 1, [len(weight) - 1]])] = 1.0  # exact edge
    return (offset + sorted_community) + within


def _successors(rng: np.random.Generator, weight: np.ndarray, items_by_community: np.ndarray,
                sorted_community: np.ndarray, community_start: np.ndarray,
                item_community: np.ndarray) -> np.ndarray:
    """Each item's ``TRANSITION_FANOUT`` successors (point 5): items of its own community
    drawn by base weight, the item itself replaced by the next item of its community.

    Returns:
        (V, TRANSITION_FANOUT) int64 item indices.
    """
    n_items = len(weight)
    cdf = _community_cdf(weight, sorted_community, community_start)
    key = item_community[:, None] + rng.random((n_items, TRANSITION_FANOUT))
    slot = np.minimum(np.searchsorted(cdf, key, side="right"), n_items - 1)
    nxt = items_by_community[slot]
    own = nxt == np.arange(n_items)[:, None]
    start = community_start[sorted_community[slot]]
    size = np.diff(np.concatenate([community_start, [n_items]]))[sorted_community[slot]]
    moved = items_by_community[start + (slot - start + 1) % size]
    return np.where(own, moved, nxt)


def window_span(cfg: PipelineConfig) -> tuple[dt.date, int, int]:
    """(first day, D, T): the window's first local day, its days D and the periods T that
    drift (interests, popularity) runs over: the dataset's slices, or ``UNSLICED_PERIODS``
    equal periods of an unsliced window. Local day ``d`` of the window is in period
    ``d * T // D``. A format without timestamps (s3rec) and no window is drawn over a
    notional year (``NOTIONAL_START``), which only orders each user's items.

    Raises:
        ValueError: the window is unbounded (the generator must know when rows happen).
    """
    ds = cfg.dataset
    if ds.start is None and ds.end is None and FORMATS[ds.format].layout == "sequences":
        return NOTIONAL_START, NOTIONAL_DAYS, UNSLICED_PERIODS
    if ds.start is None or ds.end is None:
        raise ValueError(f"dataset {ds.name!r}: generate needs a bounded window: set "
                         "dataset.start and dataset.last_day (or slice_days and num_slices)")
    days = (ds.end - ds.start).days
    return ds.start, days, ds.num_slices if ds.sliced else min(UNSLICED_PERIODS, days)


def _local_days(cfg: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """UTC midnights and MMDD of the local days start-OUTSIDE_DAYS .. end+OUTSIDE_DAYS.

    Returns:
        (midnight, mmdd): (D + 2*OUTSIDE_DAYS + 1,) int64 each; entry ``i`` is local day
        ``start + i - OUTSIDE_DAYS``, the extra last day bounds the final day's length.
    """
    start, days, _ = window_span(cfg)
    zone = ZoneInfo(cfg.dataset.timezone)
    first = start - dt.timedelta(days=OUTSIDE_DAYS)
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
    g = cfg.generate
    if g.items < g.communities:
        raise ValueError(f"generate.items ({g.items}) must be >= generate.communities "
                         f"({g.communities}): every community needs an item")
    if g.transition_share > 0 and g.items < 2 * g.communities:
        raise ValueError(f"generate.transition_share > 0 needs generate.items ({g.items}) >= "
                         f"2 x generate.communities ({g.communities}): an item's successors "
                         "are other items of its community")
    rng = np.random.default_rng(g.seed)
    k, n_users, n_items = g.communities, g.users, g.items
    _, days, n_slices = window_span(cfg)

    if fmt.ids == "sparse":
        user_raw = np.sort(_id_sample(rng, fmt.id_space["user"], n_users))  # files go by user
        item_raw = _id_sample(rng, fmt.id_space["item"], n_items)
        category_raw = _id_sample(rng, fmt.id_space["category"], g.categories)
    elif fmt.ids == "dense":  # 1..n; item numbers carry no community (communities permuted)
        user_raw = np.arange(1, n_users + 1, dtype=np.int64)
        item_raw = np.arange(1, n_items + 1, dtype=np.int64)
        category_raw = np.arange(1, g.categories + 1, dtype=np.int64)  # not written
    else:
        user_raw = np.sort(string_ids(rng, fmt, "user", n_users))
        item_raw = string_ids(rng, fmt, "item", n_items)
        category_raw = np.arange(1, g.categories + 1, dtype=np.int64)  # not written

    activity = rng.lognormal(0.0, USER_ACTIVITY_SIGMA, n_users)
    least = fmt.min_user_rows
    if least > 1 and g.rows < least * n_users:
        raise ValueError(f"generate.rows ({g.rows}) must be >= {least} x generate.users "
                         f"({g.users}): every user of a {fmt.name} file has >= {least} rows")
    if g.rows >= n_users:
        rows_per_user = least + rng.multinomial(g.rows - least * n_users,
                                                activity / activity.sum())
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
    log_base = -g.item_zipf * np.log1p(rank)
    trend = rng.normal(0.0, POPULARITY_DRIFT, n_items)[items_by_community]
    z = np.linspace(-1.0, 1.0, n_slices) if n_slices > 1 else np.zeros(1)
    choice_cdf = np.concatenate([_community_cdf(np.exp(log_base + trend * z[t]),
                                                sorted_community, community_start, t * k)
                                 for t in range(n_slices)])
    item_quality = np.empty(n_items)
    item_quality[items_by_community] = _quality(rng, log_base)
    item_next = np.zeros((0, TRANSITION_FANOUT), dtype=np.int64)
    if g.transition_share > 0:  # drawn after the rest: the other world facts do not move
        item_next = _successors(rng, np.exp(log_base), items_by_community, sorted_community,
                                community_start, item_community)

    midnight, mmdd = _local_days(cfg)
    day_length = np.diff(midnight[OUTSIDE_DAYS:OUTSIDE_DAYS + days + 1]).astype(np.float64)
    hour_length = np.repeat(day_length / 24.0, 24)
    hour_start = (np.repeat(midnight[OUTSIDE_DAYS:OUTSIDE_DAYS + days], 24)
                  + np.floor(np.tile(np.arange(24), days) * hour_length).astype(np.int64))
    hour_weight = np.tile(DIURNAL, days)
    hour_cdf = np.cumsum(hour_weight) / hour_weight.sum()
    hour_cdf[-1] = 1.0
    return World(user_raw, item_raw, user_start, user_main, user_period, user_phase,
                 item_community, item_category, item_seller, item_brand, item_quality,
                 item_next, items_by_community, choice_cdf, hour_cdf, hour_start, hour_length,
                 midnight, mmdd)


@dataclass(frozen=True)
class Rows:
    """One chunk of generated rows (n rows, in file order) before rendering."""

    row: np.ndarray  # (n,) global row index (keys the per-row random streams)
    user: np.ndarray  # (n,) user index
    item: np.ndarray  # (n,) item index
    behavior: np.ndarray  # (n,) int8 index into the format's behaviours (empty for ratings)
    rating: np.ndarray  # (n,) int8 1..5 (rated formats; empty otherwise)
    ts: np.ndarray  # (n,) int64 UTC seconds
    day: np.ndarray  # (n,) int64 local day offset from dataset.start (may be outside)
    # Lines to break: rows, or users' lines for the sequences layout.
    bad: np.ndarray  # (b,) local indices of lines to break, ascending
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
    g = cfg.generate
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
    _, n_days, n_slices = window_span(cfg)
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
    if fmt.day_resolution:  # the UTC day's midnight, as Amazon's unixReviewTime
        ts -= ts % DAY
        day = np.maximum(np.searchsorted(world.day_midnight, ts, side="right") - 1,
                         0) - OUTSIDE_DAYS
    slice_ = np.clip(day * n_slices // n_days, 0, n_slices - 1)

    # Community of each fresh choice: main, drifting second interest, or noise.
    u = rand.uniform(S_COMMUNITY, row)
    period = world.user_period[user]
    epoch = (slice_ + world.user_phase[user]) // period
    drift = np.floor(rand.uniform(S_DRIFT, user * (n_slices + 8) + epoch) * k)
    p_main, p_drift = g.main_share, g.drift_share
    noise_share = max(1.0 - p_main - p_drift, 1e-12)  # no noise: never used below
    noise = np.floor((u - p_main - p_drift) / noise_share * k)
    community = np.where(u < p_main, world.user_main[user],
                         np.where(u < p_main + p_drift, drift, np.clip(noise, 0, k - 1)))
    liked = u < p_main + p_drift
    table = slice_ * k + community.astype(np.int64)
    key = table + rand.uniform(S_ITEM, row)
    # Searching keys grouped by table keeps each binary search inside one table's cache lines
    # (~8x faster on millions of items); 16-bit keys get numpy's radix sort.
    narrow = np.int16 if n_slices * k < 2**15 else np.int64
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
    if g.transition_share > 0:  # point 5: follow the previous row's item instead
        follow = ((rand.uniform(S_TRANSITION, row) < g.transition_share) & (local > first)
                  & ~repeat)
        pick = np.minimum(np.floor(rand.uniform(S_SUCCESSOR, row) * TRANSITION_FANOUT),
                          TRANSITION_FANOUT - 1).astype(np.int64)
        fresh, liked = _follow(fresh, liked, source, follow, pick, world.item_next)
    item = fresh[source]
    liked = liked[source]

    behavior = rating = np.zeros(0, dtype=np.int8)
    if fmt.behaviors:
        shares = np.cumsum(fmt.behavior_shares)
        behavior = np.minimum(np.searchsorted(shares / shares[-1], rand.uniform(S_BEHAVIOR, row)),
                              len(shares) - 1).astype(np.int8)
    if fmt.rating_text is not None:
        rating = _ratings(liked, world.item_quality[item], rand.uniform(S_RATING, row))

    line = users[counts > 0] if fmt.layout == "sequences" else row  # what a line is keyed by
    bad = np.flatnonzero(rand.uniform(S_BAD, line) < g.malformed_rate)
    kinds = len(fmt.malformed_kinds)
    bad_kind = np.minimum(np.floor(rand.uniform(S_BAD_KIND, line[bad]) * kinds),
                          kinds - 1).astype(np.int64)
    return Rows(row, user, item, behavior, rating, ts, day, bad, bad_kind,
                rand.uniform(S_BAD_VARIANT, line[bad]))


def _follow(fresh: np.ndarray, liked: np.ndarray, source: np.ndarray, follow: np.ndarray,
            pick: np.ndarray, item_next: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Items and affinities of a chunk's non-repeat rows once transitions are applied.

    A transition row takes successor ``pick`` of the item its previous row ends up with
    (that row's repeat source, ``source``), and that row's affinity. Each pass settles the
    transitions whose previous row is settled: as many passes as the longest chain of
    transitions, counted through the repeats between them.

    Args:
        fresh: (n,) point 4's choice of each row.
        liked: (n,) bool, that choice's affinity.
        source: (n,) each row's repeat source (a non-repeat row; itself when not a repeat).
        follow: (n,) bool, transition rows (never a user's first row, never a repeat).
        pick: (n,) which of the previous item's successors a transition takes.
        item_next: (V, F) the successor lists.

    Returns:
        (item, liked) of every non-repeat row: ``fresh`` and ``liked`` with transitions set.
    """
    item, liked = fresh.copy(), liked.copy()
    settled = ~follow
    pending = np.flatnonzero(follow)
    before = source[pending - 1]  # the row whose item a transition follows (earlier)
    while pending.size:
        ready = settled[before]
        rows, prev = pending[ready], before[ready]
        item[rows] = item_next[item[prev], pick[rows]]
        liked[rows] = liked[prev]
        settled[rows] = True
        pending, before = pending[~ready], before[~ready]
    return item, liked


def _ratings(liked: np.ndarray, quality: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Ratings 1..5 by affinity and item quality (point 6).

    Args:
        liked: (n,) bool: the choice came from a community the user likes.
        quality: (n,) the chosen items' quality.
        u: (n,) uniforms.

    Returns:
        (n,) int8: a draw from ``RATINGS_LIKED`` (liked) or ``RATINGS_NOISE``, each
        probability times ``exp(QUALITY_TILT * quality * (r - 3))`` and renormalised.
    """
    p = np.where(liked[:, None], RATINGS_LIKED, RATINGS_NOISE)  # (n, 5)
    p = p * np.exp(QUALITY_TILT * quality[:, None] * (np.arange(1, 6) - 3))
    cdf = np.cumsum(p, axis=1)
    below = (cdf < (u * cdf[:, -1])[:, None]).sum(axis=1)  # ratings whose cdf is under u
    return (1 + np.minimum(below, 4)).astype(np.int8)


def _review_ids(rand: RowRandom, row: np.ndarray) -> np.ndarray:
    """(n,) bytes: 22-character URL-safe base64 review ids, a hash of the global row."""
    chars = []
    for part in range(3):  # 3 x 10 characters of 6 bits from 3 independent 64-bit hashes
        bits = rand.bits(S_REVIEW_ID + 64 * part, row)
        chars += [(bits >> np.uint64(6 * j)) & np.uint64(63) for j in range(10)]
    codes = BASE64URL[np.stack(chars[:22], axis=1).astype(np.int64)]
    return np.ascontiguousarray(codes).view("S22").ravel()


def to_chunk(cfg: PipelineConfig, fmt: FileFormat, world: World, rand: RowRandom,
             rows: Rows) -> Chunk:
    """What the format's writer needs of ``rows`` (raw ids, per-item columns, text draws)."""
    n, row = len(rows.ts), rows.row
    per_item = {"category": world.item_category, "seller": world.item_seller,
                "brand": world.item_brand}
    columns = {role: per_item[role][rows.item] for role in fmt.fields if role in per_item}
    if "mmdd" in fmt.fields:
        columns["mmdd"] = world.day_mmdd[rows.day + OUTSIDE_DAYS]
    extra = (np.stack([rand.uniform(S_EXTRA + j, row) for j in range(EXTRA)], axis=1)
             if fmt.layout == "json" else np.zeros((n, 0)))
    review_id = _review_ids(rand, row) if fmt.ids == "yelp" else np.zeros(0, dtype="S22")
    return Chunk(world.user_raw[rows.user], world.item_raw[rows.item], rows.user, columns,
                 rows.behavior, rows.rating, rows.ts, extra, review_id, cfg.dataset.timezone)


def core(cfg: PipelineConfig, fmt: FileFormat, world: World, rand: RowRandom,
         chunks: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """The users and items of the iterative ``fmt.kcore``-core of all drawn rows (every
    user and item keeps >= k rows), as the public 5-core files are cut.

    Draws every chunk's rows once more than the write pass (users and items only stay).

    Returns:
        (user_keep, item_keep): (U,) and (V,) bool.
    """
    users, items = [], []
    for u0, u1 in chunks:  # only who and what is kept: 8 bytes a row
        rows = generate_rows(cfg, fmt, world, rand, u0, u1)
        users.append(rows.user.astype(np.int32))
        items.append(rows.item.astype(np.int32))
    user, item = np.concatenate(users), np.concatenate(items)
    alive = np.ones(len(user), dtype=bool)
    while True:  # drop rows of users or items under k until none is left
        users = np.bincount(user[alive], minlength=len(world.user_raw))
        items = np.bincount(item[alive], minlength=len(world.item_raw))
        drop = alive & ((users[user] < fmt.kcore) | (items[item] < fmt.kcore))
        if not drop.any():
            return users >= fmt.kcore, items >= fmt.kcore
        alive &= ~drop


def restrict(fmt: FileFormat, rows: Rows, user_keep: np.ndarray, item_keep: np.ndarray) -> Rows:
    """``rows`` less those of users or items outside the core; broken lines renumbered."""
    keep = user_keep[rows.user] & item_keep[rows.item]
    if fmt.layout == "sequences":  # lines are users: a line goes with its user's last row
        starts = np.flatnonzero(np.r_[True, rows.user[1:] != rows.user[:-1]])
        line_kept = user_keep[rows.user[starts]]
    else:
        line_kept = keep
    renumber = np.cumsum(line_kept) - 1
    bad = rows.bad[line_kept[rows.bad]]
    kept_bad = line_kept[rows.bad]
    return Rows(rows.row[keep], rows.user[keep], rows.item[keep],
                rows.behavior[keep] if rows.behavior.size else rows.behavior,
                rows.rating[keep] if rows.rating.size else rows.rating, rows.ts[keep],
                rows.day[keep], renumber[bad], rows.bad_kind[kept_bad],
                rows.bad_variant[kept_bad])


def _draw(cfg: PipelineConfig, fmt: FileFormat, world: World, rand: RowRandom, u0: int,
          u1: int, kept: tuple[np.ndarray, np.ndarray] | None) -> Rows:
    rows = generate_rows(cfg, fmt, world, rand, u0, u1)
    return rows if kept is None else restrict(fmt, rows, *kept)


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
    start, days, _ = window_span(cfg)  # bounded, or one clear error
    first = start - dt.timedelta(days=OUTSIDE_DAYS)
    last = start + dt.timedelta(days=days + OUTSIDE_DAYS)
    if fmt is TMALL and first.year != last.year:
        raise ValueError(f"dataset {cfg.dataset.name!r}: Tmall time_stamp (MMDD) has no year, "
                         f"so the window {start}..{cfg.dataset.end} (+-{OUTSIDE_DAYS} days) "
                         "must stay within one calendar year")


def file_names(cfg: PipelineConfig) -> tuple[str, str | None]:
    """(data file, negatives file or None) that :func:`generate` writes, relative to
    ``paths.raw_dir``: the first literal (glob-free) ``dataset.files`` entry other than
    ``dataset.negatives_file``, else the format's default name.

    Raises:
        ValueError: the name matches none of ``dataset.files`` (ingest would not read it).
    """
    ds = cfg.dataset
    literal = [f for f in ds.files if not set(f) & set("*?[") and f != ds.negatives_file]
    name = literal[0] if literal else FORMATS[ds.format].file_name
    if not any(fnmatch.fnmatch(name, pattern) for pattern in ds.files):
        raise ValueError(f"dataset {ds.name!r}: generated file {name!r} matches none "
                         f"of dataset.files {ds.files}, so ingest would not read it")
    return name, ds.negatives_file


def negative_lines(cfg: PipelineConfig, world: World, rand: RowRandom, rows: Rows,
                   candidates: np.ndarray) -> bytes:
    """The S3-Rec ``<Name>_sample.txt`` lines of the chunk's users: ``uid n1 .. nN``, N =
    ``dataset.negatives_count`` distinct items of ``candidates`` (the file's items) the
    user never touched, drawn uniformly (seeded by the user, so chunking does not matter),
    as FMLP-Rec saved them.

    Raises:
        ValueError: a user touched so many items that fewer than N are left.
    """
    count = cfg.dataset.negatives_count
    if rows.user.size == 0:
        return b""
    starts = np.flatnonzero(np.r_[True, rows.user[1:] != rows.user[:-1]])
    lines = []
    for a, b in zip(starts, np.r_[starts[1:], len(rows.user)]):
        user, seen = int(rows.user[a]), np.unique(rows.item[a:b])
        if len(candidates) - len(seen) < count:
            raise ValueError(f"the file's {len(candidates)} items leave fewer than "
                             f"dataset.negatives_count ({count}) unseen items for a user")
        picked, drawn = np.zeros(0, dtype=np.int64), 0
        while len(picked) < count:  # rejection: never a seen item, never twice
            index = (user << 20) + drawn + np.arange(2 * count, dtype=np.int64)
            drawn += 2 * count
            draw = candidates[np.floor(rand.uniform(S_NEGATIVE, index)
                                       * len(candidates)).astype(np.int64)]
            fresh = np.concatenate([picked, draw[~np.isin(draw, seen)]])
            picked = fresh[np.sort(np.unique(fresh, return_index=True)[1])][:count]
        ids = " ".join(map(str, world.item_raw[picked].tolist()))
        lines.append(f"{world.user_raw[user]} {ids}\n")
    return "".join(lines).encode()


STAMP = "_generated.json"  # in raw_dir: the config the file there was generated under


def _raw_dir(cfg: PipelineConfig) -> str:
    raw_dir = cfg.paths.raw_dir
    return raw_dir if "://" in raw_dir else os.path.abspath(raw_dir)


def generated_hash(cfg: PipelineConfig) -> str:
    """What shapes the generated bytes (stamped beside the file): ``GENERATOR_VERSION`` and
    the ``dataset`` and ``generate`` sections, less ``chunk_rows`` and ``auto`` (bytes do
    not depend on them)."""
    shaping = cfg.model_copy(update={"generate": cfg.generate.model_copy(
        update={"chunk_rows": 1, "auto": False})})
    return f"v{GENERATOR_VERSION}-{section_hash(shaping, 'dataset', 'generate')}"


def why_generate(cfg: PipelineConfig) -> str | None:
    """Why the sample's raw files must be (re)generated; None when ``paths.raw_dir`` holds
    the files :func:`generate` wrote under the same ``dataset`` and ``generate`` sections.

    So a changed ``generate.rows`` (or seed, or window), or a sample of an older generator,
    regenerates the sample instead of silently training on the old one; an unchanged config
    reuses it.
    """
    stamp = read_json(join(_raw_dir(cfg), STAMP))
    if stamp is None:
        return f"no generated sample in {cfg.paths.raw_dir}"
    names = [n for n in file_names(cfg) if n is not None]
    if not all(exists(join(_raw_dir(cfg), name)) for name in names):
        return f"generated file missing from {cfg.paths.raw_dir}"
    if stamp.get("config_hash") != generated_hash(cfg):
        return ("dataset or generate config changed, or the generator did "
                f"(GENERATOR_VERSION {GENERATOR_VERSION}), since the sample was generated")
    return None


def _open(fs: pafs.FileSystem, path: str, final: str):
    """Output stream to ``path``, gzip-compressed when the final name ends in ``.gz``."""
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    return fs.open_output_stream(path, compression="gzip" if final.endswith(".gz") else None)


def generate(cfg: PipelineConfig) -> dict:
    """Write ``generate.rows`` synthetic interactions in ``dataset.format`` to
    ``paths.raw_dir`` (see :func:`file_names`; with ``dataset.negatives_file`` also the
    S3-Rec negatives file).

    Files are streamed chunk by chunk (whole users, about ``generate.chunk_rows`` rows
    each) to ``<file>.tmp-<id>`` and renamed into place when complete; then
    ``<raw_dir>/_generated.json`` records the config hash they were written under (read by
    :func:`why_generate`).

    Args:
        cfg: composed pipeline config; reads ``dataset``, ``generate`` and ``paths.raw_dir``.

    Returns:
        ``{"files": [paths], "rows": interactions written (the 5-core formats: those of
        the drawn rows' 5-core, so fewer than generate.rows), "lines": lines written (header
        excluded; one per user for s3rec), "malformed": {kind: count of broken lines},
        "outside_window": well-formed rows with a timestamp outside the window (0 for
        s3rec, which has no timestamps), "seconds": wall time, "rows_per_s": rows /
        seconds}``.

    Raises:
        ValueError: fewer items than communities, too few rows for the format's least rows
            per user, an unbounded window, a generated file name that ``dataset.files``
            would not match, or a Tmall window spanning two years.
    """
    started = time.perf_counter()
    fmt = FORMATS[cfg.dataset.format]
    _check_window(cfg, fmt)
    names = [n for n in file_names(cfg) if n is not None]
    world = build_world(cfg, fmt)
    rand = RowRandom(cfg.generate.seed)
    fs, directory = filesystem(_raw_dir(cfg))
    finals = [join(directory, name) for name in names]
    tmps = [f"{final}.tmp-{uuid.uuid4().hex[:8]}" for final in finals]
    malformed = dict.fromkeys(fmt.malformed_kinds, 0)
    outside = lines = rows_total = 0
    _, n_days, _ = window_span(cfg)
    try:
        # One worker draws chunk i+1 while this thread renders and writes chunk i (numpy and
        # pyarrow release the GIL); at most two chunks are in memory.
        with ExitStack() as stack:
            outs = [stack.enter_context(_open(fs, tmp, final))
                    for tmp, final in zip(tmps, finals)]
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=1))
            if fmt.header is not None:
                outs[0].write(fmt.header.encode() + b"\n")
            chunks = user_chunks(world.user_start, cfg.generate.chunk_rows)
            kept = core(cfg, fmt, world, rand, chunks) if fmt.kcore else None
            candidates = np.flatnonzero(kept[1]) if kept else np.arange(len(world.item_raw))
            pending = pool.submit(_draw, cfg, fmt, world, rand, *chunks[0], kept)
            for following in [*chunks[1:], None]:
                rows = pending.result()
                if following is not None:
                    pending = pool.submit(_draw, cfg, fmt, world, rand, *following, kept)
                chunk = to_chunk(cfg, fmt, world, rand, rows)
                for piece in render(fmt, chunk, rows.bad, rows.bad_kind, rows.bad_variant):
                    outs[0].write(piece)
                if len(outs) > 1:
                    outs[1].write(negative_lines(cfg, world, rand, rows, candidates))
                rows_total += len(rows.user)
                for kind, count in zip(*np.unique(rows.bad_kind, return_counts=True)):
                    malformed[fmt.malformed_kinds[kind]] += int(count)
                if fmt.layout == "sequences":
                    lines += len(np.unique(rows.user))
                else:
                    lines += len(rows.user)
                    stray = (rows.day < 0) | (rows.day >= n_days)
                    stray[rows.bad] = False
                    outside += int(stray.sum())
        for tmp, final in zip(tmps, finals):
            fs.move(tmp, final)
    except BaseException:
        for tmp in tmps:
            if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                fs.delete_file(tmp)
        raise
    seconds = time.perf_counter() - started
    result = {"files": finals, "rows": rows_total, "lines": lines, "malformed": malformed,
              "outside_window": outside, "seconds": round(seconds, 3),
              "rows_per_s": round(rows_total / seconds) if seconds > 0 else None}
    write_json(join(_raw_dir(cfg), STAMP), result | {"config_hash": generated_hash(cfg)})
    return result
