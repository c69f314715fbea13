"""The public file formats the generator writes, and how a chunk of rows becomes their bytes.

``spark_jobs/sample_data.py`` draws the rows (who, what, when, rating); this module only
writes them the way each public download is written, so ingest reads the sample and the real
file with the same reader. Three layouts:

- ``csv``: delimited fields, one interaction per line (Taobao, Tmall, ratings CSV, Amazon
  2014 / 2018 ratings, MovieLens ``u.data`` (tab) and ``ratings.dat`` (``::``), RecBole's
  atomic ``.inter`` (tab, typed header; the columns of RecBole's ML-100K file)).
- ``json``: one JSON object per line (Amazon 5-core reviews, Yelp reviews), field names,
  order and spacing as in the public files (Amazon: Python ``json.dumps`` spacing; Yelp:
  compact), ``\\uXXXX`` escapes and quotes inside text, an occasional missing
  ``reviewerName`` as in the Amazon file.
- ``sequences``: S3-Rec / FMLP-Rec ``<Name>.txt``, one line per user, ``uid i1 ... iK``
  space-separated in time order, ids from 1.

Malformed lines (``break_line``) are named by ingest's quarantine reasons.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

DAY = 86_400


@dataclass(frozen=True)
class FileFormat:
    """What the generator must reproduce of one public file format."""

    name: str
    file_name: str  # default name of the generated file; a literal dataset.files entry wins
    layout: str  # "csv", "json" or "sequences" (see the module docstring)
    header: str | None  # exact first line, or None
    # csv: field roles in file order (user, item, category, seller, brand, behavior,
    # rating, ts, mmdd); json: the required fields, for break_line.
    fields: tuple[str, ...]
    delimiter: bytes
    ids: str  # "sparse" (large numeric), "dense" (1..n), "amazon" (reviewer / ASIN), "yelp"
    id_space: dict[str, int]  # sparse ids: largest raw id per entity in the public file
    behaviors: tuple[str, ...]  # codes as written in the file (() when unrated or rated)
    behavior_shares: tuple[float, ...]
    rating_text: tuple[str, ...] | None  # how ratings 1..5 are written; None: no ratings
    day_resolution: bool  # timestamps are UTC midnights (Amazon's unixReviewTime)
    repeat_share: float  # share of rows that re-use an earlier item of the same user
    min_user_rows: int  # 5 for 5-core files, 20 for MovieLens (every user rated >= 20)
    # The public file is a k-core (5-core reviews, S3-Rec): only rows of the drawn rows'
    # iterative k-core are written, so ingest's k-core keeps them all; 0: no k-core.
    kcore: int
    malformed_kinds: tuple[str, ...]


NUMERIC_KINDS = ("wrong_field_count", "non_numeric_id", "bad_timestamp", "bad_rating")
STRING_ID_KINDS = ("wrong_field_count", "empty_id", "bad_timestamp", "bad_rating")
INT_RATINGS = ("1", "2", "3", "4", "5")
FLOAT_RATINGS = ("1.0", "2.0", "3.0", "4.0", "5.0")
TAOBAO = FileFormat(
    name="taobao", file_name="UserBehavior.csv", layout="csv", header=None,
    fields=("user", "item", "category", "behavior", "ts"), delimiter=b",", ids="sparse",
    id_space={"user": 1_018_011, "item": 5_163_070, "category": 5_162_429},
    behaviors=("pv", "cart", "fav", "buy"), behavior_shares=(0.89, 0.055, 0.03, 0.025),
    rating_text=None, day_resolution=False,
    repeat_share=0.35,  # page views of the same item recur a lot in the public log
    kcore=0, min_user_rows=1,
    malformed_kinds=("wrong_field_count", "non_numeric_id", "bad_timestamp",
                     "unknown_behavior"),
)
TMALL = FileFormat(
    name="tmall", file_name="user_log_format1.csv", layout="csv",
    header="user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type",
    fields=("user", "item", "category", "seller", "brand", "mmdd", "behavior"),
    delimiter=b",", ids="sparse",
    id_space={"user": 424_170, "item": 1_113_166, "category": 1_671, "seller": 4_995,
              "brand": 8_477},
    behaviors=("0", "1", "2", "3"),  # click, cart, purchase, favourite
    behavior_shares=(0.8839, 0.0014, 0.0599, 0.0548),  # 48.55M/0.08M/3.29M/3.01M rows
    rating_text=None, day_resolution=False, repeat_share=0.35, kcore=0, min_user_rows=1,
    malformed_kinds=("wrong_field_count", "non_numeric_id", "bad_timestamp",
                     "unknown_behavior"),
)
RATINGS = FileFormat(
    name="ratings", file_name="ratings.csv", layout="csv", header="user,item,rating,timestamp",
    fields=("user", "item", "rating", "ts"), delimiter=b",", ids="sparse",
    id_space={"user": 5_000_000, "item": 200_000, "category": 1_000},  # categories unwritten
    behaviors=(), behavior_shares=(), rating_text=INT_RATINGS, day_resolution=False,
    repeat_share=0.02,  # re-rating the same title is rare
    kcore=0, min_user_rows=1, malformed_kinds=NUMERIC_KINDS,
)
AMAZON_RATINGS = FileFormat(
    name="amazon_ratings", file_name="ratings_Sample.csv", layout="csv", header=None,
    fields=("user", "item", "rating", "ts"), delimiter=b",", ids="amazon", id_space={},
    behaviors=(), behavior_shares=(), rating_text=FLOAT_RATINGS, day_resolution=True,
    repeat_share=0.01, kcore=0, min_user_rows=1,
    malformed_kinds=STRING_ID_KINDS,
)
AMAZON_RATINGS_2018 = FileFormat(
    name="amazon_ratings_2018", file_name="Sample.csv", layout="csv", header=None,
    fields=("item", "user", "rating", "ts"), delimiter=b",", ids="amazon", id_space={},
    behaviors=(), behavior_shares=(), rating_text=FLOAT_RATINGS, day_resolution=True,
    repeat_share=0.01, kcore=0, min_user_rows=1,
    malformed_kinds=STRING_ID_KINDS,
)
JSON_KINDS = ("bad_json", "missing_field", "wrong_type", "empty_id", "bad_timestamp",
              "bad_rating")
AMAZON_REVIEWS = FileFormat(
    name="amazon_reviews", file_name="reviews_Sample_5.json.gz", layout="json", header=None,
    fields=("reviewerID", "asin", "overall", "unixReviewTime"), delimiter=b"", ids="amazon",
    id_space={}, behaviors=(), behavior_shares=(), rating_text=FLOAT_RATINGS,
    day_resolution=True, repeat_share=0.01, kcore=5, min_user_rows=5,
    malformed_kinds=JSON_KINDS,
)
YELP_REVIEWS = FileFormat(
    name="yelp_reviews", file_name="yelp_academic_dataset_review.json", layout="json",
    header=None, fields=("user_id", "business_id", "stars", "date"), delimiter=b"",
    ids="yelp", id_space={}, behaviors=(), behavior_shares=(), rating_text=FLOAT_RATINGS,
    day_resolution=False, repeat_share=0.03,  # some users review a place again
    kcore=0, min_user_rows=1, malformed_kinds=JSON_KINDS,
)
S3REC = FileFormat(
    name="s3rec", file_name="Sample.txt", layout="sequences", header=None, fields=(),
    delimiter=b" ", ids="dense", id_space={}, behaviors=(), behavior_shares=(),
    rating_text=None, day_resolution=False, repeat_share=0.01, kcore=5, min_user_rows=5,
    malformed_kinds=("wrong_field_count", "non_numeric_id"),
)
MOVIELENS_100K = FileFormat(
    name="movielens_100k", file_name="u.data", layout="csv", header=None,
    fields=("user", "item", "rating", "ts"), delimiter=b"\t", ids="dense", id_space={},
    behaviors=(), behavior_shares=(), rating_text=INT_RATINGS, day_resolution=False,
    repeat_share=0.0,  # a MovieLens user rates a film once
    kcore=0, min_user_rows=20, malformed_kinds=NUMERIC_KINDS,
)
MOVIELENS_1M = FileFormat(
    name="movielens_1m", file_name="ratings.dat", layout="csv", header=None,
    fields=("user", "item", "rating", "ts"), delimiter=b"::", ids="dense", id_space={},
    behaviors=(), behavior_shares=(), rating_text=INT_RATINGS, day_resolution=False,
    repeat_share=0.0, kcore=0, min_user_rows=20, malformed_kinds=NUMERIC_KINDS,
)
# RecBole's ML-100K atomic file (recbole/dataset_example/ml-100k/ml-100k.inter in its wheel):
# u.data's rows under a typed header; its tokens are text to the reader, hence empty_id.
RECBOLE_INTER = FileFormat(
    name="recbole_inter", file_name="sample.inter", layout="csv",
    header="user_id:token\titem_id:token\trating:float\ttimestamp:float",
    fields=("user", "item", "rating", "ts"), delimiter=b"\t", ids="dense", id_space={},
    behaviors=(), behavior_shares=(), rating_text=INT_RATINGS, day_resolution=False,
    repeat_share=0.0, kcore=0, min_user_rows=20, malformed_kinds=STRING_ID_KINDS,
)
FORMATS = {f.name: f for f in (TAOBAO, TMALL, RATINGS, AMAZON_RATINGS, AMAZON_RATINGS_2018,
                               AMAZON_REVIEWS, YELP_REVIEWS, S3REC, MOVIELENS_100K,
                               MOVIELENS_1M, RECBOLE_INTER)}

# Review text, already JSON-escaped (quotes and non-ASCII as the public files write them),
# chosen by the rating: index 0 for ratings 1-2, 1 for 3, 2 for 4-5.
TEXTS = (
    ("Broke after a week. Would not buy again.", "Not as described, the \\\"new\\\" one "
     "was used.", "Disappointed."),
    ("It is okay for the price.", "Does the job, nothing special.", "Average."),
    ("Love it, works exactly as described!", "Caf\\u00e9-quality at home. Five stars.",
     "Great value, arrived quickly."),
)
SUMMARIES = (("Disappointed", "Poor quality"), ("Okay", "Three stars"),
             ("Five Stars", "Great product"))
# Reviewer names (JSON-escaped), chosen by the user; a few reviews carry none.
NAMES = ("J. McDonald", "Amazon Customer", "Kindle Fan \\\"Reader\\\"", "Zo\\u00eb",
         "M. Smith", "Busy Mom")
NAME_MISSING = 0.01  # share of Amazon reviews without a reviewerName field
ALNUM = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", dtype=np.uint8)
BASE64URL = np.frombuffer(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", dtype=np.uint8)


def _codes(rng: np.random.Generator, n: int, prefix: bytes, length: int,
           alphabet: np.ndarray) -> np.ndarray:
    """``n`` distinct ids ``prefix + length`` random characters, as a (n,) bytes array."""
    out = np.empty(0, dtype=f"S{len(prefix) + length}")
    while len(out) < n:
        chars = alphabet[rng.integers(0, len(alphabet), (n - len(out), length))]
        fresh = np.char.add(prefix, chars.view(f"S{length}").ravel())
        out = np.unique(np.concatenate([out, fresh]))  # a collision is redrawn, never kept
    return rng.permutation(out)


def string_ids(rng: np.random.Generator, fmt: FileFormat, entity: str, n: int) -> np.ndarray:
    """Raw string ids as the public files write them.

    Amazon: reviewer ids ``A`` + 13 upper-case letters and digits (``A2SUAM1J3GNN3B``),
    items 10-character ASINs (``B00`` + 7, or an ISBN-10 of digits for books). Yelp: 22
    URL-safe base64 characters for users and businesses.
    """
    if fmt.ids == "yelp":
        return _codes(rng, n, b"", 22, BASE64URL)
    if entity == "user":
        return _codes(rng, n, b"A", 13, ALNUM)
    books = n // 5
    return rng.permutation(np.concatenate([
        _codes(rng, n - books, b"B00", 7, ALNUM),
        _codes(rng, books, b"", 10, ALNUM[26:])]))


def _text(values) -> pa.Array:
    array = pa.array(values)
    return array.cast(pa.string()) if not pa.types.is_string(array.type) else array


def _choice(options: tuple[str, ...], index: np.ndarray) -> pa.Array:
    return pa.DictionaryArray.from_arrays(index.astype(np.int32), list(options)).cast(pa.string())


def _pick_in(groups: tuple[tuple[str, ...], ...], group: np.ndarray, u: np.ndarray) -> pa.Array:
    """One option per row from ``groups[group]``, chosen by the uniform ``u``."""
    flat = [o for g in groups for o in g]
    start = np.cumsum([0] + [len(g) for g in groups])
    size = np.diff(start)[group]
    return _choice(tuple(flat), start[group] + np.minimum((u * size).astype(np.int64), size - 1))


def _sentiment(rating: np.ndarray) -> np.ndarray:
    """0 for ratings 1-2, 1 for 3, 2 for 4-5 (index into TEXTS and SUMMARIES)."""
    return np.where(rating <= 2, 0, np.where(rating == 3, 1, 2))


@dataclass(frozen=True)
class Chunk:
    """What rendering needs of one chunk (n rows, in file order; see sample_data.Rows)."""

    user_raw: np.ndarray  # (n,) raw user id of each row (int64 or bytes)
    item_raw: np.ndarray  # (n,) raw item id
    user: np.ndarray  # (n,) user index
    columns: dict[str, np.ndarray]  # category, seller, brand, mmdd per row (csv formats)
    behavior: np.ndarray  # (n,) int8 index into fmt.behaviors (empty when none)
    rating: np.ndarray  # (n,) int8 1..5 (empty when unrated)
    ts: np.ndarray  # (n,) int64 UTC seconds
    extra: np.ndarray  # (n, 6) uniforms for review text, names, votes (json formats)
    review_id: np.ndarray  # (n,) bytes Yelp review ids (empty otherwise)
    timezone: str  # Yelp dates are local wall-clock times in this zone


def csv_table(fmt: FileFormat, chunk: Chunk) -> pa.Table:
    """The chunk as an Arrow table with the format's fields, in file order."""
    columns = []
    for role in fmt.fields:
        if role == "user":
            columns.append(_text(chunk.user_raw) if chunk.user_raw.dtype.kind == "S"
                           else chunk.user_raw)
        elif role == "item":
            columns.append(_text(chunk.item_raw) if chunk.item_raw.dtype.kind == "S"
                           else chunk.item_raw)
        elif role == "behavior":
            columns.append(pa.DictionaryArray.from_arrays(chunk.behavior, list(fmt.behaviors)))
        elif role == "rating":
            columns.append(_choice(fmt.rating_text, chunk.rating - 1))
        elif role == "ts":
            columns.append(chunk.ts)
        elif role == "brand":
            brand = chunk.columns["brand"]
            columns.append(pa.array(brand, mask=brand < 0))
        else:
            columns.append(chunk.columns[role])
    return pa.table(columns, names=[f"f{i}" for i in range(len(columns))])


def _amazon_lines(fmt: FileFormat, chunk: Chunk) -> pa.Array:
    """Amazon 2014 5-core review objects, fields in the public file's order."""
    u = chunk.extra
    mood = _sentiment(chunk.rating)
    name = _choice(NAMES, (chunk.user * 2654435761 % len(NAMES)))
    named = pc.binary_join_element_wise('"reviewerName": "', name, '", ', "")
    name_piece = pc.if_else(pa.array(u[:, 0] < NAME_MISSING), "", named)
    total = np.floor(-np.log(u[:, 1]) * 1.5).astype(np.int64)  # votes: mostly 0-2
    helpful = np.floor(u[:, 2] * (total + 1)).astype(np.int64)
    when = pa.array(chunk.ts, pa.timestamp("s", tz="UTC"))
    day = pc.utf8_ltrim(pc.strftime(when, format="%d"), "0")  # "09 3, 2014": day unpadded
    review_time = pc.binary_join_element_wise(
        pc.strftime(when, format="%m"), " ", day, ", ", pc.strftime(when, format="%Y"), "")
    return pc.binary_join_element_wise(
        '{"reviewerID": "', _text(chunk.user_raw), '", "asin": "', _text(chunk.item_raw),
        '", ', name_piece, '"helpful": [', _text(helpful), ", ", _text(total),
        '], "reviewText": "', _pick_in(TEXTS, mood, u[:, 3]), '", "overall": ',
        _choice(fmt.rating_text, chunk.rating - 1), ', "summary": "',
        _pick_in(SUMMARIES, mood, u[:, 4]), '", "unixReviewTime": ', _text(chunk.ts),
        ', "reviewTime": "', review_time, '"}', "")


def _yelp_lines(fmt: FileFormat, chunk: Chunk) -> pa.Array:
    """Yelp academic dataset review objects (compact JSON, local ``date``)."""
    u = chunk.extra
    votes = [_text(np.floor(-np.log(u[:, i]) * scale).astype(np.int64))
             for i, scale in ((1, 1.0), (2, 0.4), (5, 0.5))]  # useful, funny, cool
    date = pc.strftime(pa.array(chunk.ts, pa.timestamp("s", tz=chunk.timezone)),
                       format="%Y-%m-%d %H:%M:%S")
    return pc.binary_join_element_wise(
        '{"review_id":"', _text(chunk.review_id), '","user_id":"', _text(chunk.user_raw),
        '","business_id":"', _text(chunk.item_raw), '","stars":',
        _choice(fmt.rating_text, chunk.rating - 1), ',"useful":', votes[0], ',"funny":',
        votes[1], ',"cool":', votes[2], ',"text":"',
        _pick_in(TEXTS, _sentiment(chunk.rating), u[:, 3]), '","date":"', date, '"}', "")


def _sequence_lines(chunk: Chunk) -> pa.Array:
    """One ``uid i1 ... iK`` line per user of the chunk, items in row (time) order."""
    if chunk.user.size == 0:
        return pa.array([], pa.string())
    starts = np.flatnonzero(np.r_[True, chunk.user[1:] != chunk.user[:-1]])
    n, users = len(chunk.user), len(starts)
    tokens = np.empty(n + users, dtype=np.int64)
    uid_at = starts + np.arange(users)  # each user's line starts with its uid
    is_uid = np.zeros(n + users, dtype=bool)
    is_uid[uid_at] = True
    tokens[uid_at] = chunk.user_raw[starts]
    tokens[~is_uid] = chunk.item_raw
    offsets = np.r_[uid_at, n + users].astype(np.int32)
    return pc.binary_join(pa.ListArray.from_arrays(offsets, _text(tokens)), " ")


def lines_text(fmt: FileFormat, chunk: Chunk) -> memoryview:
    """The chunk's lines (no header), each ending in a newline, as one buffer."""
    if fmt.layout == "csv":
        sink = pa.BufferOutputStream()
        single = b"\t" if fmt.delimiter == b"::" else fmt.delimiter  # Arrow: 1-char only
        pacsv.write_csv(csv_table(fmt, chunk), sink, pacsv.WriteOptions(
            include_header=False, quoting_style="none", batch_size=1 << 16,
            delimiter=single.decode()))
        text = sink.getvalue()
        if single != fmt.delimiter:  # numeric fields hold no tab
            return memoryview(text.to_pybytes().replace(single, fmt.delimiter))
        return memoryview(text)
    if fmt.layout == "json":
        lines = (_amazon_lines if fmt.ids == "amazon" else _yelp_lines)(fmt, chunk)
    else:
        lines = _sequence_lines(chunk)
    joined = pc.binary_join_element_wise(lines, "\n", "")
    if len(joined) == 0:
        return memoryview(b"")
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)[
        joined.offset:joined.offset + len(joined) + 1]
    return memoryview(joined.buffers()[2])[offsets[0]:offsets[-1]]


def _pick(options: tuple, u: float):
    return options[min(int(u * len(options)), len(options) - 1)]


def _json_value(line: bytes, key: str, value) -> bytes:
    """``line`` with the value of ``"key"`` replaced by ``value(old JSON text)``."""
    pattern = rb'("%s": ?)("[^"]*"|[^,}]*)' % re.escape(key.encode())
    return re.sub(pattern, lambda m: m.group(1) + value(m.group(2)), line, count=1)


def _break_json(fmt: FileFormat, kind: str, line: bytes, u: float) -> bytes:
    """One defect of the reader's kinds (spark_jobs/readers/json_reviews.py): the line stops
    parsing, a required field is absent, has another JSON type, an id is empty, a time is
    impossible, or a rating is off the 1-5 scale."""
    user_key, item_key, rating_key, ts_key = fmt.fields
    v = 3 * u % 1.0  # second pick, independent enough of the first
    if kind == "bad_json":
        return _pick((line[: len(line) // 2],  # cut off mid-object
                      line[:-1]), u)  # the closing brace lost
    if kind == "missing_field":
        key = re.escape(_pick(fmt.fields, u).encode())
        value = rb'": ?(?:"[^"]*"|[^,}]*)'
        dropped = re.sub(rb'"' + key + value + rb', ?', b"", line, count=1)
        if dropped == line:  # the object's last field: drop it with the comma before it
            dropped = re.sub(rb', ?"' + key + value, b"", line, count=1)
        return dropped
    if kind == "wrong_type":
        key = _pick(fmt.fields, u)
        if key == rating_key or key == ts_key != "date":  # a number written in quotes
            return _json_value(line, key, lambda old: b'"' + old + b'"')
        if key == ts_key:  # Yelp's date as a number
            return _json_value(line, key, lambda old: old[1:11].replace(b"-", b""))
        return _json_value(line, key, lambda old: _pick((b"12345", b"true", b"[]"), v))
    if kind == "empty_id":
        return _json_value(line, user_key if u < 0.5 else item_key, lambda old: b'""')
    if kind == "bad_timestamp":
        if ts_key == "date":
            return _json_value(line, ts_key, lambda old: _pick((
                b'"2019-13-01 10:00:00"', b'"2019-02-30 12:00:00"', b'"yesterday"', b'""'), u))
        return _json_value(line, ts_key, lambda old: old + b"000")  # milliseconds
    if kind == "bad_rating":
        return _json_value(line, rating_key, lambda old: _pick((b"0.0", b"6.0", b"-1.0"), u))
    raise ValueError(f"unknown malformed kind {kind!r} for format {fmt.name}")


def _break_sequence(kind: str, line: bytes, u: float) -> bytes:
    tokens = line.split(b" ")
    if kind == "wrong_field_count":  # the items lost: only the uid is left
        return tokens[0]
    if kind == "non_numeric_id":
        at = 1 + min(int(u * (len(tokens) - 1)), len(tokens) - 2)  # an item, never the uid
        tokens[at] = _pick((b"x" + tokens[at], tokens[at] + b".0", b"NULL"), 2 * u % 1.0)
        return b" ".join(tokens)
    raise ValueError(f"unknown malformed kind {kind!r} for format s3rec")


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
    if fmt.layout == "json":
        return _break_json(fmt, kind, line, u)
    if fmt.layout == "sequences":
        return _break_sequence(kind, line, u)
    sep = fmt.delimiter
    fields = line.split(sep)
    if kind == "wrong_field_count":
        return _pick((
            sep.join(fields[:-1]),  # truncated: the last field lost
            line + sep,  # a trailing empty field
            line + line,  # a lost newline runs two records together
        ), u)
    if kind == "non_numeric_id":
        column = fmt.fields.index("user" if u < 0.5 else "item")
        fields[column] = _pick((b"", b"NULL", b"u" + fields[column], fields[column] + b".0"),
                               2 * u % 1.0)
    elif kind == "empty_id":
        fields[fmt.fields.index("user" if u < 0.5 else "item")] = b""
    elif kind == "bad_timestamp":
        if "mmdd" in fmt.fields:
            at = fmt.fields.index("mmdd")
            month, day = divmod(int(fields[at]), 100)
            fields[at] = _pick((b"13%02d" % day, b"%d32" % month,
                                b"2015-%02d-%02d" % (month, day), b""), u)
        else:
            at = fmt.fields.index("ts")
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(fields[at])))
            fields[at] = _pick((stamp.encode(), b"", b"\\N"), u)
    elif kind == "unknown_behavior":
        options = (b"4", b"-1", b"") if fmt is TMALL else (b"click", b"PV", b"")
        fields[fmt.fields.index("behavior")] = _pick(options, u)
    elif kind == "bad_rating":
        zero, six, minus = ((b"0.0", b"6.0", b"-1.0") if fmt.rating_text == FLOAT_RATINGS
                            else (b"0", b"6", b"-1"))
        fields[fmt.fields.index("rating")] = _pick((zero, six, minus, b"", b"five"), u)
    else:
        raise ValueError(f"unknown malformed kind {kind!r} for format {fmt.name}")
    return sep.join(fields)


def render(fmt: FileFormat, chunk: Chunk, bad: np.ndarray, bad_kind: np.ndarray,
           bad_variant: np.ndarray) -> list[bytes | memoryview]:
    """The chunk's bytes (no header), malformed lines spliced in place of good ones.

    Args:
        fmt: the file format.
        chunk: the rows to write.
        bad: (b,) ascending local line numbers to break (lines = rows, or users for
            ``sequences``).
        bad_kind: (b,) index into ``fmt.malformed_kinds``.
        bad_variant: (b,) uniforms that pick how each line is broken.

    Returns:
        Pieces to write in order; together one line per row (per user for ``sequences``).
    """
    text = lines_text(fmt, chunk)
    if bad.size == 0:
        return [text]
    ends = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == ord("\n"))
    pieces: list[bytes | memoryview] = []
    previous = 0
    for local, kind, u in zip(bad.tolist(), bad_kind.tolist(), bad_variant.tolist()):
        start = int(ends[local - 1]) + 1 if local else 0
        end = int(ends[local])
        pieces.append(text[previous:start])
        pieces.append(break_line(fmt, fmt.malformed_kinds[kind], bytes(text[start:end]), u))
        previous = end  # keep the newline of the replaced line
    pieces.append(text[previous:])
    return pieces
