"""One reader per public raw format: a raw text line -> canonical fields or a quarantine reason.

Each reader turns the Spark column holding one raw line into Spark SQL expressions (built-in
functions only, no Python UDFs, so 100M lines parse at JVM speed): the ``user`` and
``item`` ids (bigint), ``ts`` (UTC epoch seconds), ``behavior``, ``rating`` and ``error``,
the quarantine reason of a line that cannot be read (NULL for a readable line). The first
failing check names the reason, in the order of :data:`QUARANTINE_REASONS`.

An id is read as a number, so ingest dedupes, sorts and joins longs rather than strings. A
valid id is a non-negative integer that fits a bigint, written canonically: digits without a
leading zero (``0`` itself is fine). Anything else (``u1``, ``1.0``, ``-3``, ``007``) is
``non_numeric_id``, so the text in the file and the number map one to one, the id map's
``raw`` text round-trips, and numeric order is exactly "by length, then text" of the raw id.

Only the fields the pipeline uses are checked: Taobao's category id and Tmall's cat, seller
and brand ids are not (Tmall's brand_id is often empty in the public file).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import Column
from pyspark.sql import functions as F

from conf.schema import DatasetConfig

# Order matters: a line gets the first reason that applies.
QUARANTINE_REASONS = (
    "wrong_field_count",
    "non_numeric_id",
    "bad_timestamp",
    "unknown_behavior",
    "bad_rating",
)

EPOCH_PATTERN = r"^-?[0-9]{1,12}$"  # 12 digits reach year 33658; longer is not seconds
RATING_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$"  # plain decimals: no NaN, no inf
# Tmall time_stamp is MMDD with the month unpadded (829, 1111); a padded month is accepted.
MMDD_PATTERN = r"^(1[0-2]|0?[1-9])([0-3][0-9])$"
TMALL_YEAR = 2015  # the public Tmall log (IJCAI-15) covers 2015 and gives no year


@dataclass(frozen=True)
class Parsed:
    """Canonical fields of one raw line as Spark columns (NULL where the line is broken)."""

    user: Column  # bigint: user id (NULL when not a valid id)
    item: Column  # bigint: item id (NULL when not a valid id)
    ts: Column  # bigint: UTC epoch seconds
    behavior: Column  # string: canonical behaviour name
    rating: Column  # float or NULL
    error: Column  # string: quarantine reason, NULL for a readable line


@dataclass(frozen=True)
class RawFormat:
    """A public file format: its header, layout and parser."""

    name: str
    header: str | None  # exact first line of each file; None when the format has none
    layout: str  # human description for error messages
    behaviors: tuple[str, ...]  # canonical behaviour names the parser can produce
    parse: Callable[[Column, DatasetConfig], Parsed]


def _fields(line: Column) -> Column:
    """Comma-separated fields; ``-1`` keeps trailing empty fields so counts are exact."""
    return F.split(line, ",", -1)


def _field(fields: Column, index: int) -> Column:
    """Field ``index`` (0-based), trimmed, or NULL when the line is shorter (safe under ANSI
    mode too). Only the fields read are trimmed: no per-field lambda over the whole array,
    which Spark evaluates without code generation."""
    return F.trim(F.get(fields, index))


def _epoch(text: Column) -> Column:
    return F.when(text.rlike(EPOCH_PATTERN), text.try_cast("bigint"))


def _id(text: Column) -> Column:
    """The id as bigint, NULL when ``text`` is not a valid id (see the module docstring).

    Valid means the number prints back as the same text: cheaper than a regex, and it
    rejects leading zeros, signs, decimals and overflow in one comparison.
    """
    number = text.try_cast("bigint")
    return F.when((number >= 0) & (number.cast("string") == text), number)


def _ids_ok(user: Column, item: Column) -> Column:
    return user.isNotNull() & item.isNotNull()


def _parse_taobao(line: Column, dataset: DatasetConfig) -> Parsed:
    fields = _fields(line)
    user, item, behavior = _id(_field(fields, 0)), _id(_field(fields, 1)), _field(fields, 3)
    ts = _epoch(_field(fields, 4))
    error = (
        F.when(F.size(fields) != 5, "wrong_field_count")
        .when(~_ids_ok(user, item), "non_numeric_id")
        .when(ts.isNull(), "bad_timestamp")
        .when(~behavior.isin(*TAOBAO.behaviors), "unknown_behavior")
    )
    return Parsed(user, item, ts, behavior, F.lit(None).cast("float"), error)


TMALL_ACTIONS = {"0": "click", "1": "cart", "2": "purchase", "3": "favourite"}


def _parse_tmall(line: Column, dataset: DatasetConfig) -> Parsed:
    fields = _fields(line)
    user, item = _id(_field(fields, 0)), _id(_field(fields, 1))
    mmdd, action = _field(fields, 5), _field(fields, 6)
    month = F.regexp_extract(mmdd, MMDD_PATTERN, 1).try_cast("int")
    day = F.regexp_extract(mmdd, MMDD_PATTERN, 2).try_cast("int")
    # Local midnight of that day in the dataset's zone; try_ gives NULL for e.g. 231 (Feb 31).
    midnight = F.try_make_timestamp(
        F.lit(TMALL_YEAR), month, day, F.lit(0), F.lit(0), F.lit(0), F.lit(dataset.timezone)
    )
    ts = F.when(mmdd.rlike(MMDD_PATTERN), F.unix_seconds(midnight))
    codes = F.create_map(*[F.lit(x) for pair in TMALL_ACTIONS.items() for x in pair])
    behavior = F.when(action.isNotNull(), F.element_at(codes, action))
    error = (
        F.when(F.size(fields) != 7, "wrong_field_count")
        .when(~_ids_ok(user, item), "non_numeric_id")
        .when(ts.isNull(), "bad_timestamp")
        .when(behavior.isNull(), "unknown_behavior")
    )
    return Parsed(user, item, ts, behavior, F.lit(None).cast("float"), error)


def _parse_ratings(line: Column, dataset: DatasetConfig) -> Parsed:
    fields = _fields(line)
    user, item = _id(_field(fields, 0)), _id(_field(fields, 1))
    rating_text = _field(fields, 2)
    ts = _epoch(_field(fields, 3))
    parsed = F.when(rating_text.rlike(RATING_PATTERN), rating_text.try_cast("float"))
    low, high = dataset.rating_scale  # validated present for this format by the schema
    rating = F.when(parsed.between(low, high), parsed)  # off the scale -> NULL -> bad_rating
    error = (
        F.when(F.size(fields) != 4, "wrong_field_count")
        .when(~_ids_ok(user, item), "non_numeric_id")
        .when(ts.isNull(), "bad_timestamp")
        .when(rating.isNull(), "bad_rating")
    )
    return Parsed(user, item, ts, F.lit("rating"), rating, error)


TAOBAO = RawFormat(
    name="taobao",
    header=None,
    layout="Taobao UserBehavior.csv: no header; user_id,item_id,category_id,behavior_type,"
    "timestamp (behavior pv/buy/cart/fav, timestamp in Unix seconds)",
    behaviors=("pv", "buy", "cart", "fav"),
    parse=_parse_taobao,
)
TMALL = RawFormat(
    name="tmall",
    header="user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type",
    layout="Tmall user_log_format1.csv: header user_id,item_id,cat_id,seller_id,brand_id,"
    "time_stamp,action_type (time_stamp MMDD of 2015, action_type 0-3)",
    behaviors=tuple(TMALL_ACTIONS.values()),
    parse=_parse_tmall,
)
RATINGS = RawFormat(
    name="ratings",
    header="user,item,rating,timestamp",
    layout="ratings CSV: header user,item,rating,timestamp (timestamp in Unix seconds)",
    behaviors=("rating",),
    parse=_parse_ratings,
)
FORMATS = {f.name: f for f in (TAOBAO, TMALL, RATINGS)}
