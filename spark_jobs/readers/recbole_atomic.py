"""RecBole atomic interaction files (``<name>.inter``), read by their header.

An atomic file (RecBole 1.2.1, ``recbole/data/dataset/dataset.py`` ``_load_feat``) is
tab-separated text whose first line names and types every column as ``name:type``, the type
one of RecBole's ``token`` (an id, kept as text), ``token_seq`` (space-separated tokens),
``float`` or ``float_seq``. Columns come in any order and number; e.g. the ML-100K file in
RecBole's wheel (``recbole/dataset_example/ml-100k/ml-100k.inter``) starts (tabs as ``<TAB>``)::

    user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float
    196<TAB>242<TAB>3<TAB>881250949

So the format has no fixed header: ingest binds it to the first file's header
(``RawFormat.from_header``), and every file of the dataset must carry that same header
(RecBole's split files ``<name>.train.inter`` ... do). ``dataset.atomic_fields`` names the
columns read, RecBole's ``USER_ID_FIELD``, ``ITEM_ID_FIELD``, ``TIME_FIELD`` and
``RATING_FIELD`` (defaults ``user_id``, ``item_id``, ``timestamp``, ``rating``):

- user, item: ``token`` columns, required. Ids stay text (a token is a string to RecBole:
  ``007`` and ``7`` are two users), so this is a string-id format: text order in the id
  maps, and an empty id is ``empty_id``. ML-100K's numeric tokens thus get idx in text order
  ("10" before "2"), which changes no model's input, only the numbering.
- time: a ``float`` column, required (a sequence needs an order): Unix seconds written as a
  decimal as RecBole's float reads it (``881250949``, ``881250949.0``, ``8.8125e8``); the
  fraction is dropped (ties then fall to the line order, ``seq``). Anything else, NaN/inf, or
  12 digits and more is ``bad_timestamp``.
- rating: a ``float`` column, optional, as RecBole reads a file without one. Absent (or
  ``atomic_fields.rating: null``), every line is one positive interaction; present, it must
  be a decimal on ``dataset.rating_scale`` (``bad_rating``), and the dataset must set
  ``positive_min_rating`` and ``rating_scale`` to label it.
- every other column is not read; it only counts in the line's field count: a line without
  exactly the header's number of tab-separated fields is ``wrong_field_count``.

Every readable line has behaviour ``interaction`` (an atomic file has no behaviour column).
A header this reader cannot use (a column not ``name:type``, a type RecBole does not know, a
name twice, a required column missing or of another type) is one ValueError naming the file
and the fix, raised before Spark starts.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from pyspark.sql import Column
from pyspark.sql import functions as F

from conf.schema import DatasetConfig
from spark_jobs.readers.fields import (
    MAX_EPOCH,
    Parsed,
    RawFormat,
    field,
    ids_ok,
    no_rating,
    on_scale,
    split_fields,
    string_id,
)

SEPARATOR = "\t"  # RecBole's field_separator
TYPES = ("token", "token_seq", "float", "float_seq")  # RecBole's FeatureType values
ROLE_TYPES = {"user": "token", "item": "token", "time": "float", "rating": "float"}
REASONS = ("wrong_field_count", "empty_id", "bad_timestamp", "bad_rating")
# A float as RecBole's loader (pandas) writes and reads one; no NaN, no inf.
FLOAT_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"


def header_columns(header: str) -> dict[str, str]:
    """The columns of an atomic header, ``name -> type``, in file order.

    Raises:
        ValueError: a column is not ``name:type`` (RecBole splits it on its one colon), its
            type is not one of RecBole's, or a name appears twice.
    """
    columns: dict[str, str] = {}
    for column in header.split(SEPARATOR):
        parts = column.split(":")
        if len(parts) != 2 or not parts[0]:
            raise ValueError(f"column {column!r} is not name:type (e.g. user_id:token)")
        name, kind = parts
        if kind not in TYPES:
            raise ValueError(f"column {column!r} has type {kind!r}; RecBole's types are "
                             f"{', '.join(TYPES)}")
        if name in columns:
            raise ValueError(f"column {name!r} appears twice")
        columns[name] = kind
    return columns


def _number(text: Column) -> Column:
    """A RecBole float as double, NULL when it is not one."""
    return F.when(text.rlike(FLOAT_PATTERN), text.try_cast("double"))


def _parse(line: Column, dataset: DatasetConfig, *, count: int, user_at: int, item_at: int,
           time_at: int, rating_at: int | None) -> Parsed:
    """One line of a bound header: ``count`` fields, the roles at the given positions."""
    fields = split_fields(line, SEPARATOR)
    user, item = string_id(field(fields, user_at)), string_id(field(fields, item_at))
    seconds = _number(field(fields, time_at))  # bounded before the cast: no overflow
    ts = F.when(F.abs(seconds) < MAX_EPOCH, F.floor(seconds).cast("bigint"))
    rating = (no_rating() if rating_at is None
              else on_scale(_number(field(fields, rating_at)), dataset))
    error = (
        F.when(F.size(fields) != count, "wrong_field_count")
        .when(~ids_ok(user, item), "empty_id")
        .when(ts.isNull(), "bad_timestamp")
    )
    if rating_at is not None:
        error = error.when(rating.isNull(), "bad_rating")
    return Parsed(user, item, ts, F.lit("interaction"), rating, error)


def bind(header: str, dataset: DatasetConfig, uri: str) -> RawFormat:
    """``RECBOLE_INTER`` bound to ``header``, the first line of ``uri``.

    Raises:
        ValueError: naming ``uri``: the header is not an atomic header, a column of
            ``dataset.atomic_fields`` is missing or has the wrong type, or the header has a
            rating column but the dataset sets no positive_min_rating / rating_scale.
    """
    where = f"{uri} is not a RecBole atomic .inter file the recbole_inter reader can use"
    try:
        columns = header_columns(header)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}; header: {header!r}") from None
    names = dataset.atomic_fields
    listed = ", ".join(f"{n}:{t}" for n, t in columns.items())
    at: dict[str, int | None] = {}
    for role, name in (("user", names.user), ("item", names.item), ("time", names.time),
                       ("rating", names.rating)):
        if name is None or (role == "rating" and name not in columns):
            at[role] = None  # no rating column: implicit feedback
            continue
        if name not in columns:
            raise ValueError(f"{where}: no column {name!r} (dataset.atomic_fields.{role}); "
                             f"its columns: {listed}. Set dataset.atomic_fields.{role} to "
                             "the column that holds it")
        if columns[name] != ROLE_TYPES[role]:
            raise ValueError(f"{where}: column {name!r} (dataset.atomic_fields.{role}) is "
                             f"{columns[name]}, not {ROLE_TYPES[role]}")
        at[role] = list(columns).index(name)
    if at["rating"] is not None and (dataset.positive_min_rating is None
                                     or dataset.rating_scale is None):
        raise ValueError(
            f"{uri} has a rating column ({names.rating}:float): set dataset."
            "positive_min_rating and dataset.rating_scale to label it, or "
            "dataset.atomic_fields.rating=null to read every line as an interaction")
    return replace(
        RECBOLE_INTER, header=header, from_header=None,
        layout=f"RecBole atomic .inter, tab-separated, header {header!r} (the first "
        "file's; every file of the dataset carries it)",
        parse=partial(_parse, count=len(columns), user_at=at["user"], item_at=at["item"],
                      time_at=at["time"], rating_at=at["rating"]),
    )


def _unbound(line: Column, dataset: DatasetConfig) -> Parsed:
    raise ValueError("the recbole_inter format reads its columns from a header: bind it to "
                     "a file's first line first (spark_jobs.ingest.raw_format)")


RECBOLE_INTER = RawFormat(
    name="recbole_inter",
    header=None,  # each dataset's own: see bind
    layout="RecBole atomic .inter: tab-separated, header of name:type columns with a user "
    "and an item token column and a float timestamp (dataset.atomic_fields)",
    behaviors=("interaction",),
    reasons=REASONS,
    string_ids=True,
    sequence=False,
    parse=_unbound,
    from_header=bind,
)
