"""The canonical fields a reader yields for one raw line, and the column builders readers share.

Every reader turns the Spark column holding one raw line into Spark SQL expressions (built-in
functions only, no Python UDFs, so 100M lines parse at JVM speed): the ``user`` and ``item``
ids, ``ts`` (UTC epoch seconds), ``behavior``, ``rating`` and ``error``, the quarantine reason
of a line that cannot be read (NULL for a readable line). The first failing check names the
reason, in the order of the format's ``reasons``.

Ids come in two kinds:

- numeric formats (Taobao, Tmall, ratings CSV, MovieLens, S3-Rec) read an id as a bigint, so
  ingest dedupes, sorts and joins longs rather than strings. A valid id is a non-negative
  integer that fits a bigint, written canonically: digits without a leading zero (``0``
  itself is fine). Anything else (``u1``, ``1.0``, ``-3``, ``007``) is ``non_numeric_id``,
  so the text and the number map one to one, the id map's ``raw`` text round-trips, and
  numeric order is exactly "by length, then text" of the raw id.
- string formats (Amazon, Yelp) keep the id's text as it is (reviewer ids and ASINs are
  alphanumeric and ASINs keep their leading zeros); only an empty id is quarantined
  (``empty_id``). Their ids sort by text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import Column
from pyspark.sql import functions as F

from conf.schema import DatasetConfig

EPOCH_PATTERN = r"^-?[0-9]{1,12}$"  # 12 digits reach year 33658; longer is not seconds
MAX_EPOCH = 10**12  # the same bound for epochs read as JSON numbers
RATING_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$"  # plain decimals: no NaN, no inf


@dataclass(frozen=True)
class Parsed:
    """Canonical fields of one raw line as Spark columns (NULL where the line is broken)."""

    user: Column  # bigint (numeric formats) or string: user id, NULL when not a valid id
    item: Column  # like user; array of item ids for a sequence format (one line, many items)
    ts: Column  # bigint: UTC epoch seconds (NULL for a sequence format: ingest uses positions)
    behavior: Column  # string: canonical behaviour name
    rating: Column  # float or NULL
    error: Column  # string: quarantine reason, NULL for a readable line


@dataclass(frozen=True)
class RawFormat:
    """A public file format: its header, layout, parser and quarantine reasons."""

    name: str
    header: str | None  # exact first line of each file; None when the format has none
    layout: str  # human description for error messages
    behaviors: tuple[str, ...]  # canonical behaviour names the parser can produce
    reasons: tuple[str, ...]  # quarantine reasons the parser can give, in check order
    string_ids: bool  # ids are kept as text (sorted by text), else canonical bigints
    sequence: bool  # one line holds a user's whole item sequence (S3-Rec)
    parse: Callable[[Column, DatasetConfig], Parsed]
    # A format whose header names its columns (RecBole atomic files): (first line, dataset,
    # file uri) -> this format bound to that header (exact ``header``, ``parse`` reading its
    # columns); raises ValueError for a header it cannot read. None: fixed columns.
    from_header: Callable[[str, DatasetConfig, str], RawFormat] | None = None


def split_fields(line: Column, separator: str) -> Column:
    """Fields split on the regex ``separator``; ``-1`` keeps trailing empty fields so counts
    are exact."""
    return F.split(line, separator, -1)


def field(fields: Column, index: int) -> Column:
    """Field ``index`` (0-based), trimmed, or NULL when the line is shorter (safe under ANSI
    mode too). Only the fields read are trimmed: no per-field lambda over the whole array,
    which Spark evaluates without code generation."""
    return F.trim(F.get(fields, index))


def epoch(text: Column) -> Column:
    """Unix seconds written as an integer, NULL otherwise."""
    return F.when(text.rlike(EPOCH_PATTERN), text.try_cast("bigint"))


def numeric_id(text: Column) -> Column:
    """The id as bigint, NULL when ``text`` is not a valid id (see the module docstring).

    Valid means the number prints back as the same text: cheaper than a regex, and it
    rejects leading zeros, signs, decimals and overflow in one comparison.
    """
    number = text.try_cast("bigint")
    return F.when((number >= 0) & (number.cast("string") == text), number)


def string_id(text: Column) -> Column:
    """The id's text, NULL when empty or missing."""
    return F.when(text != "", text)


def on_scale(rating: Column, dataset: DatasetConfig) -> Column:
    """``rating`` as float when within dataset.rating_scale, else NULL (``bad_rating``)."""
    low, high = dataset.rating_scale  # validated present for rated formats by the schema
    value = rating.cast("float")
    return F.when(value.between(low, high), value)


def text_rating(text: Column, dataset: DatasetConfig) -> Column:
    """A rating written as a plain decimal (no NaN, no inf), on the scale; else NULL."""
    return on_scale(F.when(text.rlike(RATING_PATTERN), text.try_cast("float")), dataset)


def ids_ok(user: Column, item: Column) -> Column:
    return user.isNotNull() & item.isNotNull()


def no_rating() -> Column:
    return F.lit(None).cast("float")
