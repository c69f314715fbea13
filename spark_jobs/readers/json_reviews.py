"""JSON-lines reviews: Amazon 5-core (2014 and 2018) and Yelp.

Each line is parsed once into a VARIANT (``try_parse_json``, built into Spark 4), and each
field the pipeline needs is looked up in it; fields not listed here (reviewText, helpful,
style, ...) are never materialised. A line is quarantined, in this order, as:

- ``bad_json``: not a JSON document;
- ``missing_field``: a needed field is absent or JSON ``null`` (also: valid JSON that is
  not an object);
- ``wrong_type``: a needed field has another JSON type (an id that is not a string, a
  rating that is not a number, a Unix time that is not an integer, a date that is not a
  string) -- a number in quotes is a wrong type, not a number;
- ``empty_id``: an id is the empty string;
- ``bad_timestamp``: a Unix time beyond 12 digits, or a Yelp date that is not a real
  ``YYYY-MM-DD HH:MM:SS``;
- ``bad_rating``: off dataset.rating_scale.
"""

from __future__ import annotations

from functools import reduce

from pyspark.sql import Column
from pyspark.sql import functions as F

from conf.schema import DatasetConfig
from spark_jobs.readers.fields import MAX_EPOCH, Parsed, RawFormat, on_scale, string_id

JSON_REASONS = ("bad_json", "missing_field", "wrong_type", "empty_id", "bad_timestamp",
                "bad_rating")
# schema_of_variant names of the JSON kinds (JSON 5.0 is a DECIMAL, 5 a BIGINT or INT).
INTEGER = ("TINYINT", "SMALLINT", "INT", "BIGINT")
NUMBER = r"^(TINYINT|SMALLINT|INT|BIGINT|FLOAT|DOUBLE|DECIMAL\(.*\))$"
DATE_PATTERN = r"^([0-9]{4})-([0-9]{2})-([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2})$"


def _json_error(doc: Column, kinds: dict[str, tuple[str, ...] | str]) -> Column:
    """The structural reason of a JSON line (bad_json, missing_field, wrong_type) or NULL.

    Args:
        doc: the line as VARIANT, NULL when it does not parse.
        kinds: field -> allowed schema_of_variant names, or a regex over them.
    """
    values = {name: F.variant_get(doc, f"$.{name}", "variant") for name in kinds}
    missing = reduce(lambda a, b: a | b,
                     [v.isNull() | F.is_variant_null(v) for v in values.values()])
    wrong = []
    for name, kind in kinds.items():
        schema = F.schema_of_variant(values[name])
        wrong.append(schema.rlike(kind) if isinstance(kind, str) else schema.isin(*kind))
    wrong_type = ~reduce(lambda a, b: a & b, wrong)
    return (F.when(doc.isNull(), "bad_json").when(missing, "missing_field")
            .when(wrong_type, "wrong_type"))


def _text(doc: Column, name: str) -> Column:
    return F.try_variant_get(doc, f"$.{name}", "string")


def _parse_amazon(line: Column, dataset: DatasetConfig) -> Parsed:
    doc = F.try_parse_json(line)
    structure = _json_error(doc, {"reviewerID": ("STRING",), "asin": ("STRING",),
                                  "overall": NUMBER, "unixReviewTime": INTEGER})
    user, item = string_id(_text(doc, "reviewerID")), string_id(_text(doc, "asin"))
    seconds = F.try_variant_get(doc, "$.unixReviewTime", "bigint")
    ts = F.when(F.abs(seconds) < MAX_EPOCH, seconds)
    rating = on_scale(F.try_variant_get(doc, "$.overall", "double"), dataset)
    error = (structure.when(user.isNull() | item.isNull(), "empty_id")
             .when(ts.isNull(), "bad_timestamp").when(rating.isNull(), "bad_rating"))
    return Parsed(user, item, ts, F.lit("rating"), rating, error)


def _parse_yelp(line: Column, dataset: DatasetConfig) -> Parsed:
    doc = F.try_parse_json(line)
    structure = _json_error(doc, {"user_id": ("STRING",), "business_id": ("STRING",),
                                  "stars": NUMBER, "date": ("STRING",)})
    user, item = string_id(_text(doc, "user_id")), string_id(_text(doc, "business_id"))
    date = _text(doc, "date")
    parts = [F.regexp_extract(date, DATE_PATTERN, i).try_cast("int") for i in range(1, 7)]
    # Local time in the dataset's zone; try_ gives NULL for e.g. 2019-02-30 or 25:00:00.
    local = F.try_make_timestamp(*parts, F.lit(dataset.timezone))
    ts = F.when(date.rlike(DATE_PATTERN), F.unix_seconds(local))
    rating = on_scale(F.try_variant_get(doc, "$.stars", "double"), dataset)
    error = (structure.when(user.isNull() | item.isNull(), "empty_id")
             .when(ts.isNull(), "bad_timestamp").when(rating.isNull(), "bad_rating"))
    return Parsed(user, item, ts, F.lit("rating"), rating, error)


AMAZON_REVIEWS = RawFormat(
    name="amazon_reviews",
    header=None,
    layout="Amazon 5-core reviews_<Category>_5.json(.gz): one JSON object per line with "
    "reviewerID (string), asin (string), overall (number), unixReviewTime (Unix seconds)",
    behaviors=("rating",), reasons=JSON_REASONS, string_ids=True, sequence=False,
    parse=_parse_amazon,
)
YELP_REVIEWS = RawFormat(
    name="yelp_reviews",
    header=None,
    layout="Yelp yelp_academic_dataset_review.json: one JSON object per line with user_id "
    "(string), business_id (string), stars (number), date ('YYYY-MM-DD HH:MM:SS' local time)",
    behaviors=("rating",), reasons=JSON_REASONS, string_ids=True, sequence=False,
    parse=_parse_yelp,
)
JSON_FORMATS = (AMAZON_REVIEWS, YELP_REVIEWS)
