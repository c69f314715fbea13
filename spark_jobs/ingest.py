"""Ingest stage: raw public files -> canonical interactions, id maps, quarantine, manifest.

Every raw line is read as text (``spark.read.text``, gzip decompressed by extension) and
parsed with Spark SQL expressions (spark_jobs/readers/), so each line's records end in
exactly one place. A record is one interaction a line describes: the line itself, except in
a sequence format (S3-Rec), where a readable line holds one record per item.

- a header line (counted, not data),
- ``quarantine/`` (file, raw, reason): the line cannot be read, with the format's reason
  (wrong field count, bad id, unparsable timestamp, unknown behaviour code, bad rating; for
  JSON lines also bad_json, missing_field, wrong_type); a quarantined line is one record;
- filtered (counted per reason, not stored): a readable record the config leaves out —
  ``behavior_not_kept`` (not in dataset.behaviors), ``out_of_window`` (outside
  dataset.start..dataset.end in dataset.timezone), ``neutral_rating`` (between
  negative_max_rating and positive_min_rating), ``duplicate`` (exact duplicate of another
  canonical row when dataset.drop_duplicates; the first in the input is kept), ``kcore``
  (dropped by the k-core, dataset.kcore_mode);
- kept, in ``interactions/``.

Quarantine holds only what is broken, so it stays small and worth reading; filtered rows are
valid data the config chose not to use, and rerunning with another config brings them back.
``input_records == kept + sum(filtered) + sum(quarantined)`` is checked on every run.

Data flow: the raw text is scanned once, and the kept rows are shuffled once.

1. ``parse``: every line is classified in one pass that writes its records, as Parquet, to
   ``_lines/`` in the staged folder (deleted before publishing): kept and quarantined ones
   with their fields, filtered ones as their position tags only; an Observation per file
   counts lines and records per outcome during that same write. Nothing of 100M rows is
   cached and no pass exists only to count.
2. ``seq``: each line's exact position in the input (files in sorted order, lines in file
   order) comes from one small aggregate over the tags in ``_lines`` (readers/lines.py);
   ``seq`` is that position (a sequence format: position << 20 | the item's position in
   its line), the stable tie-break of equal ``ts``.
3. ``quarantine``: the quarantined rows of ``_lines`` become ``quarantine/``.
4. ``id_maps``: from the ids of the kept rows (see Ids).
5. ``interactions``: the kept rows are shuffled by user into the output files; that one
   shuffle serves the dedupe (a single-phase aggregation right behind it, keeping the
   smallest seq), the joins to the id maps, broadcast when each holds at most
   ``spark.broadcast_max_ids`` ids, and the file layout (each user's rows in one file,
   sorted by user_idx, ts, seq). The written rows and their time range are observed during
   the write; duplicates = kept records - written rows. With ``dataset.kcore`` the dedupe
   and the k-core rounds (persisted, counted) run first.
6. ``fixed_negatives`` (s3rec with dataset.negatives_file): the sample file is checked to be
   aligned with the sequence lines (one clear error otherwise), its lines validated (a bad
   one is quarantined with its reason) and mapped to indices.

Ids: numeric formats parse ids to bigint (valid ids are canonical digit strings, see
readers/fields.py), so dedupe, distinct, sort and joins work on longs; string formats (Amazon,
Yelp) keep the text. ``user_idx`` / ``item_idx`` are 1..n (0 is padding) in numeric order of
the raw id (which for canonical digit strings is order by length, then text) or text order
of a string id, assigned without collecting ids to the driver: a global sort,
``monotonically_increasing_id`` per partition, and per-partition offsets (one small row per
partition reaches the driver) — zipWithIndex in SQL. The maps (raw id as text, idx) are
written first and the interactions are joined against the written maps.

manifest.json facts: format, inputs (path, size, mtime, lines per file), counts (lines_read,
header_lines, input_lines, input_records, kept, filtered{reason}, quarantined{reason},
duplicates, users, items, and negatives{lines, kept, quarantined{reason}} with a sample
file), sizes (ours beside dataset.published), shape (events a user and sparsity, ours
beside the published sizes'), time_range (UTC seconds and ISO), window
(null bounds when open), id_order, output_files, spark_version, timings, plus the common
stage, schema_version, input_hash and config_hash.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import gzip
import logging
import math
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import reduce

import pyarrow.fs as pafs
from pyspark.sql import DataFrame, Observation
from pyspark.sql import functions as F

from conf.loading import section_hash
from conf.schema import DatasetConfig, PipelineConfig, SparkConfig
from spark_jobs.progress import progress
from spark_jobs.readers import FORMATS, QUARANTINE_REASONS, RawFormat
from spark_jobs.readers.lines import positions, tagged_text
from spark_jobs.readers.sequences_txt import ITEM_BITS, NEGATIVE_REASONS, fixed_negatives, head
from spark_jobs.session import spark_session
from store.files import filesystem, join, staged_output, write_json
from store.logs import log_file
from store.manifest import (MANIFEST, SCHEMA_VERSION, StageResult, StageTimer, file_fingerprint,
                            read_manifest, up_to_date)

STAGE = "ingest"
FILTER_REASONS = ("behavior_not_kept", "out_of_window", "neutral_rating", "duplicate", "kcore")
ROWS_PER_FILE = 4_000_000  # ~30-60 MB Parquet files; 100M rows -> 25 files
MAX_FILES = 32
ID_ORDERS = {False: "numeric order of the raw id (length, then text); 1-based, 0 reserved "
                    "for padding",
             True: "text order of the raw id; 1-based, 0 reserved for padding"}
SINGLE_PHASE_AGGREGATION = "spark.sql.execution.bypassPartialAggregation"
LINES = "_lines"  # scratch in the staged folder: every record of the parse, deleted at the end
# What a record can get from _classify, besides the format's reasons; duplicate and kcore
# are decided later, on kept rows.
LINE_FILTERS = ("behavior_not_kept", "out_of_window", "neutral_rating")
CANONICAL = ("user", "item", "ts", "behavior", "rating", "label")  # a row, seq aside
BOM = "\ufeff"
log = logging.getLogger(__name__)


def run_ingest(cfg: PipelineConfig) -> StageResult:
    """Build ``<work_dir>/ingest`` from the raw files, or skip when inputs and config are unchanged.

    Args:
        cfg: the composed config; reads ``paths``, ``dataset`` and ``spark``.

    Returns:
        StageResult with the output uri, its manifest, ``skipped`` and ``reason``.

    Raises:
        FileNotFoundError: ``paths.raw_dir`` is missing, a ``dataset.files`` pattern matches
            nothing there, or ``dataset.negatives_file`` is not there.
        ValueError: a file is not in the dataset's format (header mismatch or, for a format
            read by its header, a header it cannot use; no data line, no line parses), a gzip
            file is truncated, ``dataset.behaviors`` names a behaviour
            the format cannot produce, no row survives the filters, or the negatives file is
            not aligned with the sequences.
        RuntimeError: the line accounting does not add up (a bug, never bad input).
    """
    fmt = FORMATS[cfg.dataset.format]
    _check_behaviors(cfg.dataset, fmt)
    files = resolve_files(cfg)
    negatives = _negatives_file(cfg, files)
    out = join(cfg.paths.work_dir, STAGE)
    input_hash, inputs = file_fingerprint([uri for _, uri in files]
                                          + ([negatives[1]] if negatives else []))
    config_hash = section_hash(cfg, "dataset")
    if up_to_date(out, input_hash, config_hash):
        return StageResult.of(out, read_manifest(out), True,
                              "raw files and dataset config unchanged")
    reason = "no previous output" if read_manifest(out) is None else "raw files or config changed"
    fmt, firsts = raw_format(fmt, cfg.dataset, [uri for _, uri in files])

    spark = spark_session(cfg.spark, log_file(cfg.paths.work_dir, "spark"))
    timer = StageTimer()
    with staged_output(out) as tmp, progress(spark, STAGE):
        facts = _build(spark, cfg, fmt, files, negatives, firsts, tmp, timer)
        lines, by_path = facts.pop("lines"), {e["path"]: e for e in inputs}
        for uri, n in lines.items():
            by_path[uri]["lines"] = n
        manifest = {
            "stage": STAGE,
            "schema_version": SCHEMA_VERSION,
            "input_hash": input_hash,
            "config_hash": config_hash,
            "format": fmt.name,
            "inputs": inputs,
            "id_order": ID_ORDERS[fmt.string_ids],
            "string_ids": fmt.string_ids,  # original ids are text (recommendations keep them)
            "spark_version": spark.version,
            "timings": timer.timings,
            "built_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            **facts,
        }
        write_json(join(tmp, MANIFEST), manifest)
    _log_sizes(cfg.dataset, manifest["sizes"], manifest["shape"])
    return StageResult.of(out, manifest, False, reason)


def shape(users: int, items: int, interactions: int) -> dict[str, float]:
    """What makes a log hard beyond its size: interactions per user (the mean sequence length)
    and sparsity, 1 - interactions / (users x items)."""
    return {"events_per_user": round(interactions / max(users, 1), 3),
            "sparsity": round(1.0 - interactions / max(users * items, 1), 6)}


def _log_sizes(dataset: DatasetConfig, sizes: dict, shapes: dict) -> None:
    """One line: our interactions, users and items, beside the paper's when the preset has
    them, then the shape (events a user, sparsity) of both."""
    ours, our_shape = sizes["ours"], shapes["ours"]
    line = (f"ingest {dataset.name}: {ours['interactions']:,} interactions, "
            f"{ours['users']:,} users, {ours['items']:,} items")
    if sizes["published"] is not None:
        paper = sizes["published"]
        line += (f" (published: {paper['interactions']:,} interactions, {paper['users']:,} "
                 f"users, {paper['items']:,} items)")
    line += (f"; {our_shape['events_per_user']:.2f} events a user, sparsity "
             f"{100 * our_shape['sparsity']:.3f} %")
    if shapes["published"] is not None:
        paper = shapes["published"]
        line += (f" (published: {paper['events_per_user']:.2f}, "
                 f"{100 * paper['sparsity']:.3f} %)")
    log.info(line)


def resolve_files(cfg: PipelineConfig) -> list[tuple[str, str]]:
    """The raw files matching ``dataset.files`` in ``paths.raw_dir``.

    Returns:
        [(path relative to raw_dir, full uri)] in pattern order, each file once.

    Raises:
        FileNotFoundError: naming paths.raw_dir and dataset.files.
    """
    raw_dir, patterns = cfg.paths.raw_dir, cfg.dataset.files
    where = f"paths.raw_dir={raw_dir!r}, dataset.files={patterns}"
    fs, root = filesystem(raw_dir)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(
            f"raw data folder not found ({where}); run `seqrec generate` for a synthetic "
            "sample or put the public files there"
        )
    root = root.rstrip("/")
    listing = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    names = sorted(
        info.path[len(root) + 1:] for info in listing if info.type == pafs.FileType.File
    )
    found: list[str] = []
    for pattern in patterns:
        matches = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not matches:
            raise FileNotFoundError(f"no raw file matches {pattern!r} ({where})")
        found += [m for m in matches if m not in found]
    return [(name, join(raw_dir, name)) for name in found]


def _negatives_file(cfg: PipelineConfig, files: list[tuple[str, str]]) -> tuple[str, str] | None:
    """(relative path, uri) of dataset.negatives_file, or None when not configured.

    Raises:
        FileNotFoundError: the file is not in paths.raw_dir.
        ValueError: dataset.files matches it too (it would be read as sequences).
    """
    rel = cfg.dataset.negatives_file
    if rel is None:
        return None
    uri = join(cfg.paths.raw_dir, rel)
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(f"dataset.negatives_file={rel!r} not found in "
                                f"paths.raw_dir={cfg.paths.raw_dir!r}")
    if rel in {r for r, _ in files}:
        raise ValueError(f"dataset.files={cfg.dataset.files} matches the negatives file {rel!r}; "
                         "name the sequence files only")
    return rel, uri


def _check_behaviors(dataset: DatasetConfig, fmt: RawFormat) -> None:
    unknown = sorted(set(dataset.behaviors) - set(fmt.behaviors))
    if unknown:
        raise ValueError(
            f"dataset.behaviors has {unknown}, which the {fmt.name} format never produces; "
            f"choose from {list(fmt.behaviors)}"
        )


def _first_lines(uri: str, n: int) -> list[str]:
    """The first ``n`` lines of a file (fewer if it is shorter), read without Spark."""
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:  # compression detected from the extension
            start = f.read(1 << 16)
    except OSError:
        _raise_if_corrupt_gzip([uri])
        raise
    return [line.lstrip(BOM) for line in start.decode("utf-8", "replace").splitlines()[:n]]


def _raise_if_corrupt_gzip(uris: list[str]) -> None:
    """Raise one clear error for the first ``.gz`` among ``uris`` that does not decompress to
    its end (truncated download, corrupt member); return when all do.

    Only called after a read failed, so a healthy run never decompresses a file twice.

    Raises:
        ValueError: naming the file.
    """
    for uri in uris:
        if not uri.endswith(".gz"):
            continue
        fs, path = filesystem(uri)
        try:
            with fs.open_input_stream(path, compression=None) as raw, \
                    gzip.GzipFile(fileobj=raw) as f:
                while f.read(1 << 24):
                    pass
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise ValueError(f"{uri} is a truncated or corrupt gzip file ({exc}); download it "
                             "again") from None


def raw_format(fmt: RawFormat, dataset: DatasetConfig,
               uris: list[str]) -> tuple[RawFormat, dict[str, list[str]]]:
    """The reader for ``uris`` and each file's first two lines, read without Spark.

    A format whose header names its columns (``fmt.from_header``: RecBole atomic files) is
    bound to the first file's header; then, as for a fixed header, every file must start
    with exactly that header.

    Returns:
        (the reader, {uri: first lines}).

    Raises:
        ValueError: a header the format cannot use, a file whose first line is not the
            format's (or the first file's) header, or a file with no line after its header
            (an empty file fails here, before Spark starts).
    """
    firsts = {uri: _first_lines(uri, 2) for uri in uris}
    _check_has_data(fmt, {uri: lines for uri, lines in firsts.items() if not lines})
    if fmt.from_header is not None and uris:
        fmt = fmt.from_header(firsts[uris[0]][0].strip(), dataset, uris[0])
    _check_headers(fmt, firsts)
    _check_has_data(fmt, {uri: lines[1 if fmt.header is not None else 0:]
                          for uri, lines in firsts.items()})
    return fmt, firsts


def _check_has_data(fmt: RawFormat, data_lines: dict[str, list[str]]) -> None:
    for uri, lines in data_lines.items():
        if not lines:
            raise ValueError(f"{uri} has no data lines; expected {fmt.layout}")


def _check_headers(fmt: RawFormat, firsts: dict[str, list[str]]) -> None:
    if fmt.header is None:
        return
    for uri, lines in firsts.items():
        first = lines[0].strip() if lines else ""
        if first != fmt.header:
            raise ValueError(
                f"{uri} is not a {fmt.name} file: expected {fmt.layout}; "
                f"first bad line: {first!r}"
            )


def _classify(spark, fmt: RawFormat, dataset: DatasetConfig, rel: str, file_id: int,
              uri: str) -> DataFrame:
    """Every record of one raw file with its parsed fields and ``outcome`` (a reason, or NULL
    when kept).

    Returns:
        DataFrame[file, file_id, part, block, row, pos, head, raw (only on quarantined
        lines), user, item, ts, behavior, rating, label (NULL unless kept), outcome]: one row
        per line, or per item of a readable sequence line (``pos`` its position in the line,
        0 otherwise); file_id..row are the position tags of readers/lines.py.
    """
    lines = tagged_text(spark, uri, file_id).withColumnRenamed("value", "raw")
    line = F.ltrim("raw", F.lit(BOM))  # only a file's first line can start with one
    parsed = fmt.parse(line, dataset)
    is_header = F.trim(line) == fmt.header if fmt.header is not None else F.lit(False)
    label = F.when(parsed.rating.isNull(), F.lit(1))  # implicit feedback: every event is positive
    if dataset.positive_min_rating is not None:
        label = label.when(parsed.rating >= dataset.positive_min_rating, 1)
    if dataset.negative_max_rating is not None:
        label = label.when(parsed.rating <= dataset.negative_max_rating, 0)
    # Parse once in one projection, decide the outcome in the next (no duplicated parsing).
    fields = lines.select(
        F.lit(rel).alias("file"), "file_id", "part", "block", "row", "raw",
        (head(line) if dataset.negatives_file is not None else F.lit(None).cast("string"))
        .alias("head"),
        is_header.alias("is_header"), parsed.error.alias("error"),
        parsed.user.alias("user"), parsed.item.alias("item"), parsed.ts.alias("ts"),
        parsed.behavior.alias("behavior"), parsed.rating.alias("rating"),
        label.cast("tinyint").alias("label"),
    )
    if fmt.sequence:  # one record per item of a readable line; a broken line stays one
        items = F.when(F.col("error").isNull(), F.col("item")).otherwise(
            F.array(F.lit(None).cast("bigint")))
        fields = (fields.select(*[c for c in fields.columns if c not in ("item", "ts")],
                                F.posexplode(items).alias("pos", "item"))
                  .withColumn("ts", F.col("pos").cast("bigint")))  # ts = position in the line
    else:
        fields = fields.withColumn("pos", F.lit(0))
    start, end = dataset.window_bounds()
    outside = F.lit(False)
    if start is not None:
        outside = outside | (F.col("ts") < start)
    if end is not None:
        outside = outside | (F.col("ts") >= end)
    outcome = (
        F.when(F.col("is_header"), F.lit("header"))
        .when(F.col("error").isNotNull(), F.col("error"))
        .when(~F.col("behavior").isin(*dataset.behaviors), "behavior_not_kept")
        .when(outside, "out_of_window")
        .when(F.col("label").isNull(), "neutral_rating")
    )
    quarantined = F.col("outcome").isin(*QUARANTINE_REASONS)
    kept = F.col("outcome").isNull()
    return (
        fields.withColumn("outcome", outcome)
        .withColumn("raw", F.when(quarantined, F.col("raw")))  # keep raw text only where needed
        .select("file", "file_id", "part", "block", "row", "pos", "head", "raw",
                *[F.when(kept, F.col(c)).alias(c) for c in CANONICAL], "outcome")
    )


def _split_lines(spark, fmt: RawFormat, dataset: DatasetConfig, files,
                 uri: str) -> tuple[dict[str, int], list[tuple[str, str | None, int]]]:
    """Parse every raw line once: write its records to ``uri``, count all.

    One scan of the raw text does the whole first half of the stage: an Observation per file
    counts its lines and its records per outcome while the write runs, so the 100M parsed
    lines are neither cached nor scanned a second time. Records the config filters out here
    are stored as their position tags only (they count in every line's position).

    Returns:
        ({file: lines}, [(file, outcome, records)] for every file and every outcome: header,
        the format's reasons, LINE_FILTERS, None (kept)); the Parquet at ``uri`` holds the
        columns of :func:`_classify`, with ``reason`` for ``outcome``.

    Raises:
        ValueError: a gzip input is truncated or corrupt.
    """
    file_ids = {rel: j for j, rel in enumerate(sorted(rel for rel, _ in files))}
    outcomes = ("header", *fmt.reasons, *LINE_FILTERS, None)
    frames, observations = [], []
    for rel, file_uri in files:
        observation = Observation()
        frames.append(_classify(spark, fmt, dataset, rel, file_ids[rel], file_uri).observe(
            observation,
            *[F.count_if(F.col("outcome").eqNullSafe(F.lit(outcome))).alias(str(j))
              for j, outcome in enumerate(outcomes)],
            F.count(F.lit(1)).alias("all"),
            F.count_if(F.col("pos") == 0).alias("lines"),
        ))
        observations.append(observation)
    try:
        (reduce(DataFrame.unionByName, frames)
         .withColumnRenamed("outcome", "reason").write.parquet(uri))
    except Exception:  # Spark's read error of a bad gzip is a stack trace; name the file
        _raise_if_corrupt_gzip([file_uri for _, file_uri in files])
        raise
    for (rel, _), observation in zip(files, observations):
        seen = observation.get
        if sum(seen[str(j)] for j in range(len(outcomes))) != seen["all"]:
            raise RuntimeError(f"ingest lost track of records in {rel}: {seen['all']} read but "
                               f"outcomes {seen} cover fewer (an outcome outside the "
                               f"{fmt.name} reasons and filters: a bug, never bad input)")
    lines = {rel: observation.get["lines"] for (rel, _), observation in zip(files, observations)}
    return lines, [(rel, outcome, observation.get[str(j)])
                   for (rel, _), observation in zip(files, observations)
                   for j, outcome in enumerate(outcomes)]


def _build(spark, cfg: PipelineConfig, fmt: RawFormat, files, negatives, firsts, tmp: str,
           timer: StageTimer) -> dict:
    """Run the Spark job into ``tmp``; return the manifest facts (plus ``lines`` per input uri)."""
    dataset = cfg.dataset
    lines_uri = join(tmp, LINES)
    persisted: list[DataFrame] = []
    try:
        with timer.step("parse"):
            lines_per_file, per_file = _split_lines(spark, fmt, dataset, files, lines_uri)
        counts = _tally(per_file, fmt, files, firsts)
        lines = {uri: lines_per_file[rel] for rel, uri in files}
        counts["lines_read"] = sum(lines.values())
        counts["input_lines"] = counts["lines_read"] - counts["header_lines"]
        stored = spark.read.parquet(lines_uri)
        with timer.step("seq"):
            line_at = positions(stored.filter(F.col("pos") == 0))
        seq = (line_at * (1 << ITEM_BITS) + F.col("pos")) if fmt.sequence else line_at
        with timer.step("quarantine"):
            (stored.filter(F.col("reason").isin(*QUARANTINE_REASONS))
             .select("file", "raw", "reason")
             .repartition(1)  # a shuffle of the few bad lines only, not a 1-task scan
             .write.parquet(join(tmp, "quarantine")))
        kept = stored.filter(F.col("reason").isNull()).select(*CANONICAL, seq.alias("seq"))
        rows = counts.pop("kept_before_dedupe")
        dedupe_at_write = dataset.drop_duplicates and dataset.kcore == 0
        if dataset.kcore > 0:
            with timer.step("kcore"):
                kept, rows = _dedupe_and_kcore(kept, rows, dataset, counts, persisted)
        _require_rows(rows, dataset, counts)
        with timer.step("id_maps"):
            counts["users"] = _write_id_map(kept.select(F.col("user").alias("raw")),
                                            join(tmp, "id_maps", "users"))
            counts["items"] = _write_id_map(kept.select(F.col("item").alias("raw")),
                                            join(tmp, "id_maps", "items"))
        with timer.step("interactions"):
            n_files = _n_files(spark, rows)
            with _single_phase_aggregation(spark):
                written = _write_interactions(spark, cfg.spark, fmt, kept, counts, tmp, n_files,
                                              dedupe_at_write)
        if negatives is not None:
            with timer.step("fixed_negatives"):
                counts["negatives"] = _write_fixed_negatives(
                    spark, dataset, fmt, stored.filter(F.col("pos") == 0)
                    .select(line_at.alias("line"), "head"), negatives, files, tmp)
            lines[negatives[1]] = counts["negatives"]["lines"]
    finally:
        for frame in persisted:
            frame.unpersist()
        _delete(lines_uri)
    if dedupe_at_write:
        counts["filtered"]["duplicate"] = rows - written["rows"]
    counts["kept"] = written["rows"]
    counts["duplicates"] = counts["filtered"]["duplicate"]
    _check_accounting(counts)
    start, end = dataset.window_bounds()
    low, high = written["min_ts"], written["max_ts"]
    published = dataset.published
    return {
        "lines": lines,
        "counts": counts,
        "sizes": {"ours": {"users": counts["users"], "items": counts["items"],
                           "interactions": counts["kept"]},
                  "published": None if published is None else published.model_dump()},
        "shape": {"ours": shape(counts["users"], counts["items"], counts["kept"]),
                  "published": None if published is None else shape(
                      published.users, published.items, published.interactions)},
        "time_range": {"min_ts": low, "max_ts": high, "min_utc": _iso(low), "max_utc": _iso(high)},
        "window": {"start_ts": start, "end_ts": end, "start_utc": _iso(start),
                   "end_utc": _iso(end), "timezone": dataset.timezone},
        "output_files": n_files,
    }


def _tally(per_file, fmt: RawFormat, files, firsts) -> dict:
    """Counts per reason from (file, outcome, records) tuples; reject files where nothing
    parses.

    Returns:
        counts (header_lines, input_records, filtered, quarantined per fmt.reasons) with
        ``kept_before_dedupe`` still to be resolved.
    """
    readable = set(FILTER_REASONS) | {None}
    data = {rel: 0 for rel, _ in files}
    parsed = dict(data)
    counts = {"header_lines": 0, "input_records": 0,
              "filtered": {r: 0 for r in FILTER_REASONS},
              "quarantined": {r: 0 for r in fmt.reasons}, "kept_before_dedupe": 0}
    for file, outcome, n in per_file:
        if outcome == "header":
            counts["header_lines"] += n
            continue
        data[file] += n
        counts["input_records"] += n
        if outcome in readable:
            parsed[file] += n
        if outcome is None:
            counts["kept_before_dedupe"] += n
        elif outcome in fmt.reasons:
            counts["quarantined"][outcome] += n
        else:
            counts["filtered"][outcome] += n
    for rel, uri in files:
        first_data = firsts[uri][1 if fmt.header is not None else 0:][:1]
        if data[rel] == 0:
            raise ValueError(f"{uri} has no data lines; expected {fmt.layout}")
        if parsed[rel] == 0:
            raise ValueError(
                f"{uri} is not a {fmt.name} file: no line parses as {fmt.layout}; "
                f"first bad line: {first_data[0]!r}"
            )
    return counts


def _check_accounting(counts: dict) -> None:
    accounted = (counts["kept"] + sum(counts["filtered"].values())
                 + sum(counts["quarantined"].values()))
    if accounted != counts["input_records"]:
        raise RuntimeError(
            f"ingest lost track of records: {counts['input_records']} read but "
            f"{accounted} accounted for (kept + filtered + quarantined): {counts}"
        )
    negatives = counts.get("negatives")
    if negatives and (negatives["kept"] + sum(negatives["quarantined"].values())
                      != negatives["lines"]):
        raise RuntimeError(f"ingest lost track of negatives lines: {negatives}")


def _require_rows(rows: int, dataset: DatasetConfig, counts: dict) -> None:
    if rows == 0:
        raise ValueError(
            f"no interaction survives the filters of dataset {dataset.name!r} "
            f"(filtered: {counts['filtered']}, quarantined: {counts['quarantined']}); "
            "check dataset.behaviors, the window (dataset.start, slice_days, num_slices, "
            "last_day) and kcore"
        )


def _dedupe_and_kcore(kept: DataFrame, rows: int, dataset: DatasetConfig, counts: dict,
                      persisted: list[DataFrame]) -> tuple[DataFrame, int]:
    """Drop duplicates (when configured), then the k-core, counting both in ``counts``.

    k-core counts must see each interaction once, so here the dedupe cannot wait for the
    interactions write as it does without k-core.

    Returns:
        (frame, rows) of the k-core, persisted.
    """
    if dataset.drop_duplicates:
        kept = _dedupe(kept).persist()
        persisted.append(kept)
        unique = kept.count()
        counts["filtered"]["duplicate"] = rows - unique
        rows = unique
    if dataset.kcore_mode == "iterative":
        core, remaining = _kcore(kept, rows, dataset.kcore, persisted)
    else:
        core, remaining = _kcore_items_then_users(kept, dataset.kcore, persisted)
    counts["filtered"]["kcore"] = rows - remaining
    return core, remaining


def _dedupe(rows: DataFrame) -> DataFrame:
    """One row per distinct canonical row (all columns but seq), keeping the first in the
    input (smallest seq), so the result does not depend on partitioning."""
    others = [c for c in rows.columns if c != "seq"]
    return rows.groupBy(*others).agg(F.min("seq").alias("seq"))


def _kcore_items_then_users(kept: DataFrame, k: int,
                            persisted: list[DataFrame]) -> tuple[DataFrame, int]:
    """One pass as the DFAR code: drop items with fewer than ``k`` interactions, then users
    with fewer than ``k`` of what is left. Users and items may end below ``k`` again.

    Returns:
        (frame, rows), persisted.
    """
    items = kept.groupBy("item").count().filter(F.col("count") >= k).select("item")
    by_items = kept.join(items, "item", "left_semi")
    users = by_items.groupBy("user").count().filter(F.col("count") >= k).select("user")
    core = by_items.join(users, "user", "left_semi").persist()
    persisted.append(core)
    return core, core.count()


def _kcore(kept: DataFrame, n_kept: int, k: int,
           persisted: list[DataFrame]) -> tuple[DataFrame, int]:
    """Iteratively drop users and items with fewer than ``k`` interactions until stable
    (S3-Rec's 5-core: every kept user and item has at least ``k``).

    Returns:
        (frame, rows) of the k-core; each round's frame is checkpointed (its plan cut to the
        saved rows) and the previous one released, so lineage and memory stay bounded. A
        round reads the previous frame three times, so without the cut the plan Spark
        analyses grows threefold a round: a sparse log needing 10+ rounds (a generated Toys
        shape: a few filtered rows unravel the core) stalled ingest for many minutes.
    """
    current, rows = kept, n_kept
    while True:
        users = current.groupBy("user").count().filter(F.col("count") >= k).select("user")
        items = current.groupBy("item").count().filter(F.col("count") >= k).select("item")
        core = (current.join(users, "user", "left_semi")
                .join(items, "item", "left_semi").localCheckpoint(eager=True))
        persisted.append(core)
        remaining = core.count()
        current.unpersist()
        current, done, rows = core, remaining == rows, remaining
        if done:
            return current, rows


def _write_id_map(values: DataFrame, uri: str) -> int:
    """Write raw id -> contiguous 1-based idx for the distinct ``raw`` values.

    Args:
        values: DataFrame[raw bigint or string], duplicates allowed; idx follows its order
            (numeric, or text for string ids).
        uri: where the map (raw string: the id's digits or text, idx int32) is written.

    Returns:
        Number of distinct ids.
    """
    tagged = (values.distinct().orderBy("raw")
              .withColumn("mono", F.monotonically_increasing_id()).persist())
    try:
        # monotonically_increasing_id = partition index << 33 | row number in the partition.
        part = F.shiftright("mono", 33)
        sizes = sorted(tuple(r) for r in tagged.groupBy(part.alias("p")).count().collect())
        offsets, total = [], 0
        for p, n in sizes:
            offsets += [F.lit(p), F.lit(total)]
            total += n
        if total >= 2**31:
            raise ValueError(f"{total} distinct ids do not fit int32 idx ({uri})")
        local = F.col("mono").bitwiseAND((1 << 33) - 1)
        idx = F.element_at(F.create_map(*offsets), part) + local + 1
        tagged.select(F.col("raw").cast("string"), idx.cast("int").alias("idx")).write.parquet(uri)
    finally:
        tagged.unpersist()
    return total


def _write_interactions(spark, conf: SparkConfig, fmt: RawFormat, kept: DataFrame,
                        counts: dict, tmp: str, n_files: int, dedupe: bool) -> dict:
    """Join the kept rows to the written id maps and write the contract's interactions.

    When both maps fit ``spark.broadcast_max_ids`` they are broadcast, and one shuffle (by
    raw user into the output files) serves the dedupe, the joins and the file layout; larger
    maps take shuffle joins and a final repartition by user_idx. Either way each user's
    rows land in one file, sorted by (user_idx, ts, seq).

    Returns:
        {"rows", "min_ts", "max_ts"} of the written interactions, observed during the write.
    """
    users = _id_map(spark, tmp, "users", "user", fmt.string_ids,
                    counts["users"] <= conf.broadcast_max_ids)
    items = _id_map(spark, tmp, "items", "item", fmt.string_ids,
                    counts["items"] <= conf.broadcast_max_ids)
    local = counts["users"] <= conf.broadcast_max_ids and counts["items"] <= conf.broadcast_max_ids
    rows = kept.repartition(n_files, "user") if local else kept
    if dedupe:
        rows = _dedupe(rows)
    rows = (rows.join(users, "user").join(items, "item")
            .select("user_idx", "item_idx", F.col("ts").cast("bigint"), "behavior",
                    F.col("rating").cast("float"), F.col("label").cast("tinyint"),
                    F.col("seq").cast("bigint")))
    if not local:
        rows = rows.repartition(n_files, "user_idx")
    observation = Observation()
    (rows.observe(observation, F.count(F.lit(1)).alias("rows"), F.min("ts").alias("min_ts"),
                  F.max("ts").alias("max_ts"))
     .sortWithinPartitions("user_idx", "ts", "seq")  # user histories contiguous, in order
     .write.parquet(join(tmp, "interactions")))
    return observation.get


def _n_files(spark, rows: int) -> int:
    """Interaction files for ``rows``: about ROWS_PER_FILE each, rounded up to a multiple of
    the cores (the last stage runs one task a file, so e.g. 3 files on 2 cores would leave
    one idle for a third of it), at most MAX_FILES."""
    cores = spark.sparkContext.defaultParallelism
    return min(MAX_FILES, math.ceil(max(1, math.ceil(rows / ROWS_PER_FILE)) / cores) * cores)


@contextmanager
def _single_phase_aggregation(spark) -> Iterator[None]:
    """Within the block, aggregations skip Spark's partial (pre-shuffle) phase.

    The dedupe runs right after the shuffle by user, where a partial phase hashes every row a
    second time for nothing (almost no row is a duplicate): a quarter of the interactions
    write at 10M rows. Spark 4.3+ knows the setting; earlier versions ignore it.
    """
    before = spark.conf.get(SINGLE_PHASE_AGGREGATION, None)
    spark.conf.set(SINGLE_PHASE_AGGREGATION, "true")
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(SINGLE_PHASE_AGGREGATION)
        else:
            spark.conf.set(SINGLE_PHASE_AGGREGATION, before)


def _id_map(spark, tmp: str, name: str, column: str, string_ids: bool,
            broadcast: bool) -> DataFrame:
    """The written id map ``name`` as DataFrame[<column> bigint (string for string ids),
    <column>_idx int]."""
    raw = F.col("raw") if string_ids else F.col("raw").cast("bigint")
    ids = spark.read.parquet(join(tmp, "id_maps", name)).select(
        raw.alias(column), F.col("idx").alias(f"{column}_idx"))
    return F.broadcast(ids) if broadcast else ids


def _write_fixed_negatives(spark, dataset: DatasetConfig, fmt: RawFormat, heads: DataFrame,
                           negatives: tuple[str, str], files, tmp: str) -> dict:
    """Read the S3-Rec sample file into ``fixed_negatives/`` (user int32 = user_idx,
    negatives list<int32> = item_idx, in the line's order); its bad lines join quarantine/.

    Args:
        heads: DataFrame[line bigint, head string]: every sequence line's position and uid
            token as written.
        negatives: (path relative to raw_dir, uri) of dataset.negatives_file.

    Returns:
        {"lines", "kept", "quarantined": {reason: lines}}.

    Raises:
        ValueError: the file is not aligned with the sequences (line count or a line's uid
            differs), naming the first line that differs.
    """
    rel, uri = negatives
    tagged = tagged_text(spark, uri, 0)
    sample = tagged.select(positions(tagged).alias("line"), F.col("value").alias("raw"))
    where = f"{uri} is not aligned line by line with {[r for r, _ in files]}"
    n_sample, n_lines = sample.count(), heads.count()
    if n_sample != n_lines:
        raise ValueError(f"{where}: {n_sample} lines for {n_lines} sequence lines")
    differ = (sample.select("line", head(F.col("raw")).alias("uid")).join(heads, "line")
              .filter(~F.col("uid").eqNullSafe(F.col("head"))).orderBy("line").first())
    if differ is not None:
        raise ValueError(f"{where}: line {differ['line'] + 1} has uid {differ['uid']!r}, the "
                         f"sequence line has {differ['head']!r}")
    interactions = spark.read.parquet(join(tmp, "interactions")).select("user_idx", "item_idx")
    checked = fixed_negatives(
        sample, dataset.negatives_count,
        _id_map(spark, tmp, "users", "user", fmt.string_ids, broadcast=False),
        _id_map(spark, tmp, "items", "item", fmt.string_ids, broadcast=False),
        interactions,
    ).persist()
    try:
        (checked.filter(F.col("reason").isNull())
         .select(F.col("user").cast("int"), F.col("negatives").cast("array<int>"))
         .repartition(1).sortWithinPartitions("user")
         .write.parquet(join(tmp, "fixed_negatives")))
        (checked.filter(F.col("reason").isNotNull())
         .select(F.lit(rel).alias("file"), "raw", "reason")
         .repartition(1).write.mode("append").parquet(join(tmp, "quarantine")))
        by_reason = dict(checked.groupBy("reason").count().collect())
    finally:
        checked.unpersist()
    return {"lines": n_sample, "kept": by_reason.pop(None, 0),
            "quarantined": {r: by_reason.get(r, 0) for r in NEGATIVE_REASONS}}


def _delete(uri: str) -> None:
    """Remove a scratch folder if it exists."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def _iso(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat()

