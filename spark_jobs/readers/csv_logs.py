"""Delimited log files: Taobao, Tmall, ratings CSVs (ours, Amazon 2014 and 2018), MovieLens.

Only the fields the pipeline uses are checked: Taobao's category id and Tmall's cat, seller
and brand ids are not (Tmall's brand_id is often empty in the public file).
"""

from __future__ import annotations

from functools import partial

from pyspark.sql import Column
from pyspark.sql import functions as F

from conf.schema import DatasetConfig
from spark_jobs.readers.fields import (
    Parsed,
    RawFormat,
    epoch,
    field,
    ids_ok,
    no_rating,
    numeric_id,
    split_fields,
    string_id,
    text_rating,
)

# Tmall time_stamp is MMDD with the month unpadded (829, 1111); a padded month is accepted.
MMDD_PATTERN = r"^(1[0-2]|0?[1-9])([0-3][0-9])$"
TMALL_YEAR = 2015  # the public Tmall log (IJCAI-15) covers 2015 and gives no year
LOG_REASONS = ("wrong_field_count", "non_numeric_id", "bad_timestamp", "unknown_behavior")


def _parse_taobao(line: Column, dataset: DatasetConfig) -> Parsed:
    fields = split_fields(line, ",")
    user, item = numeric_id(field(fields, 0)), numeric_id(field(fields, 1))
    behavior = field(fields, 3)
    ts = epoch(field(fields, 4))
    error = (
        F.when(F.size(fields) != 5, "wrong_field_count")
        .when(~ids_ok(user, item), "non_numeric_id")
        .when(ts.isNull(), "bad_timestamp")
        .when(~behavior.isin(*TAOBAO.behaviors), "unknown_behavior")
    )
    return Parsed(user, item, ts, behavior, no_rating(), error)


TMALL_ACTIONS = {"0": "click", "1": "cart", "2": "purchase", "3": "favourite"}


def _parse_tmall(line: Column, dataset: DatasetConfig) -> Parsed:
    fields = split_fields(line, ",")
    user, item = numeric_id(field(fields, 0)), numeric_id(field(fields, 1))
    mmdd, action = field(fields, 5), field(fields, 6)
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
        .when(~ids_ok(user, item), "non_numeric_id")
        .when(ts.isNull(), "bad_timestamp")
        .when(behavior.isNull(), "unknown_behavior")
    )
    return Parsed(user, item, ts, behavior, no_rating(), error)


def _parse_rated(line: Column, dataset: DatasetConfig, *, separator: str, user_at: int,
                 item_at: int, string_ids: bool) -> Parsed:
    """Four fields (user and item at the given positions, then rating, then Unix seconds)."""
    fields = split_fields(line, separator)
    read_id = string_id if string_ids else numeric_id
    user, item = read_id(field(fields, user_at)), read_id(field(fields, item_at))
    rating = text_rating(field(fields, 2), dataset)  # off the scale -> NULL -> bad_rating
    ts = epoch(field(fields, 3))
    error = (
        F.when(F.size(fields) != 4, "wrong_field_count")
        .when(~ids_ok(user, item), "empty_id" if string_ids else "non_numeric_id")
        .when(ts.isNull(), "bad_timestamp")
        .when(rating.isNull(), "bad_rating")
    )
    return Parsed(user, item, ts, F.lit("rating"), rating, error)


def _rated(name: str, header: str | None, layout: str, separator: str, user_at: int,
           item_at: int, string_ids: bool) -> RawFormat:
    return RawFormat(
        name=name, header=header, layout=layout, behaviors=("rating",),
        reasons=("wrong_field_count", "empty_id" if string_ids else "non_numeric_id",
                 "bad_timestamp", "bad_rating"),
        string_ids=string_ids, sequence=False,
        parse=partial(_parse_rated, separator=separator, user_at=user_at, item_at=item_at,
                      string_ids=string_ids),
    )


TAOBAO = RawFormat(
    name="taobao",
    header=None,
    layout="Taobao UserBehavior.csv: no header; user_id,item_id,category_id,behavior_type,"
    "timestamp (behavior pv/buy/cart/fav, timestamp in Unix seconds)",
    behaviors=("pv", "buy", "cart", "fav"),
    reasons=LOG_REASONS, string_ids=False, sequence=False,
    parse=_parse_taobao,
)
TMALL = RawFormat(
    name="tmall",
    header="user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type",
    layout="Tmall user_log_format1.csv: header user_id,item_id,cat_id,seller_id,brand_id,"
    "time_stamp,action_type (time_stamp MMDD of 2015, action_type 0-3)",
    behaviors=tuple(TMALL_ACTIONS.values()),
    reasons=LOG_REASONS, string_ids=False, sequence=False,
    parse=_parse_tmall,
)
RATINGS = _rated(
    "ratings", "user,item,rating,timestamp",
    "ratings CSV: header user,item,rating,timestamp (numeric ids, timestamp in Unix seconds)",
    ",", 0, 1, string_ids=False,
)
AMAZON_RATINGS = _rated(
    "amazon_ratings", None,
    "Amazon 2014 ratings_<Category>.csv: no header; user,item,rating,timestamp (string ids, "
    "timestamp in Unix seconds)",
    ",", 0, 1, string_ids=True,
)
AMAZON_RATINGS_2018 = _rated(
    "amazon_ratings_2018", None,
    "Amazon 2018 <Category>.csv: no header; item,user,rating,timestamp (string ids, "
    "timestamp in Unix seconds)",
    ",", 1, 0, string_ids=True,
)
MOVIELENS_100K = _rated(
    "movielens_100k", None,
    "MovieLens 100K u.data: no header; user<TAB>item<TAB>rating<TAB>timestamp (Unix seconds)",
    "\t", 0, 1, string_ids=False,
)
MOVIELENS_1M = _rated(
    "movielens_1m", None,
    "MovieLens 1M ratings.dat: no header; user::item::rating::timestamp (Unix seconds)",
    "::", 0, 1, string_ids=False,
)
CSV_FORMATS = (TAOBAO, TMALL, RATINGS, AMAZON_RATINGS, AMAZON_RATINGS_2018, MOVIELENS_100K,
               MOVIELENS_1M)
