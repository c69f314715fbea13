"""S3-Rec / FMLP-Rec preprocessed sequences (``<Name>.txt``) and their fixed negatives
(``<Name>_sample.txt``).

``<Name>.txt`` holds one line per user, ``uid i1 i2 ... iK``, space-separated, the items in
time order, without timestamps; ids are numeric (from 1). A line is read or quarantined as a
whole: ``wrong_field_count`` (no item after the uid, or 2^20 or more), ``non_numeric_id``
(any id that is not a canonical non-negative integer). Ingest turns a readable line into one
interaction per item; having no clock, an item's ``ts`` is its 0-based position in the line
(Unix seconds 0, 1, ..., so ts order is the sequence order, a repeated item stays a separate
interaction, and no window applies) and ``seq`` orders the items after their line.

``<Name>_sample.txt`` holds ``uid n1 ... nN`` aligned line by line with the sequences: line k
has line k's uid. See :func:`fixed_negatives` for its checks.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from conf.schema import DatasetConfig
from spark_jobs.readers.fields import Parsed, RawFormat, no_rating, numeric_id

SEPARATOR = r"\s+"
ITEM_BITS = 20  # seq = line position << ITEM_BITS | item position, so a line holds < 2^20 items
NEGATIVE_REASONS = ("wrong_field_count", "non_numeric_id", "duplicate_negative",
                    "unknown_user", "unknown_item", "negative_in_sequence")


def _tokens(line: Column) -> tuple[Column, Column]:
    """(first token, array of the others) of a whitespace-separated line."""
    tokens = F.split(F.trim(line), SEPARATOR)
    return F.get(tokens, 0), F.slice(tokens, 2, F.size(tokens) - 1)


def head(line: Column) -> Column:
    """The uid token of a line, as written (compared textually to align the sample)."""
    return _tokens(line)[0]


def _parse_s3rec(line: Column, dataset: DatasetConfig) -> Parsed:
    uid, rest = _tokens(line)
    user, items = numeric_id(uid), F.transform(rest, numeric_id)
    error = (
        F.when((F.size(rest) == 0) | (F.size(rest) >= 1 << ITEM_BITS), "wrong_field_count")
        .when(user.isNull() | F.exists(items, lambda i: i.isNull()), "non_numeric_id")
    )
    return Parsed(user, items, F.lit(None).cast("bigint"), F.lit("interaction"), no_rating(),
                  error)


S3REC = RawFormat(
    name="s3rec",
    header=None,
    layout="S3-Rec <Name>.txt: one line per user, 'uid i1 i2 ... iK' space-separated numeric "
    "ids, items in time order",
    behaviors=("interaction",),
    reasons=("wrong_field_count", "non_numeric_id"),
    string_ids=False,
    sequence=True,
    parse=_parse_s3rec,
)


def fixed_negatives(sample: DataFrame, count: int, users: DataFrame, items: DataFrame,
                    interactions: DataFrame) -> DataFrame:
    """Validate the aligned sample lines and map them to indices.

    A line is quarantined, in this order, as ``wrong_field_count`` (not exactly ``count``
    ids after the uid), ``non_numeric_id``, ``duplicate_negative`` (an id twice),
    ``unknown_user`` (its uid has no kept interaction, e.g. its sequence line was
    quarantined or k-core dropped it), ``unknown_item`` (an id that is no kept item: out of
    range) or ``negative_in_sequence`` (an id among the user's own interactions).

    Args:
        sample: DataFrame[line bigint, raw string], one row per sample line.
        count: ids each line must hold after its uid (dataset.negatives_count).
        users: DataFrame[user bigint, user_idx int] (the written id map).
        items: DataFrame[item bigint, item_idx int].
        interactions: DataFrame[user_idx int, item_idx int], the written interactions.

    Returns:
        DataFrame[line, raw, reason (NULL when kept), user (user_idx), negatives
        (list<int> of item_idx in the line's order; NULL when quarantined)].
    """
    uid, rest = _tokens(F.col("raw"))
    ids = F.transform(rest, numeric_id)
    parsed = sample.select(
        "line", "raw", numeric_id(uid).alias("uid"), ids.alias("ids"),
        F.when(F.size(rest) != count, "wrong_field_count")
        .when(numeric_id(uid).isNull() | F.exists(ids, lambda i: i.isNull()), "non_numeric_id")
        .when(F.size(F.array_distinct(ids)) != F.size(ids), "duplicate_negative")
        .alias("reason"),
    )
    users = users.withColumnRenamed("user", "uid")
    parsed = parsed.join(users, "uid", "left").withColumn(
        "reason", F.when(F.col("reason").isNull() & F.col("user_idx").isNull(), "unknown_user")
        .otherwise(F.col("reason")))
    candidates = parsed.filter(F.col("reason").isNull()).select(
        "line", "user_idx", F.posexplode("ids").alias("pos", "item"))
    seen = interactions.select("user_idx", "item_idx", F.lit(True).alias("seen")).distinct()
    checked = (candidates.join(items, "item", "left").join(seen, ["user_idx", "item_idx"], "left")
               .groupBy("line").agg(
                   F.count_if(F.col("item_idx").isNull()).alias("unknown"),
                   F.count_if(F.col("seen")).alias("in_sequence"),
                   F.sort_array(F.collect_list(F.struct("pos", "item_idx"))).alias("pairs")))
    reason = (F.when(F.col("reason").isNotNull(), F.col("reason"))
              .when(F.col("unknown") > 0, "unknown_item")
              .when(F.col("in_sequence") > 0, "negative_in_sequence"))
    return parsed.join(checked, "line", "left").select(
        "line", "raw", reason.alias("reason"), F.col("user_idx").alias("user"),
        F.when(reason.isNull(), F.transform("pairs", lambda p: p["item_idx"])).alias("negatives"),
    )
