"""Ingest stage: raw public files -> canonical interactions, id maps, quarantine, manifest.

Every raw line is read as text (``spark.read.text``) and parsed with Spark SQL expressions
(spark_jobs/formats.py), so each line ends in exactly one place:

- a header line (counted, not data),
- ``quarantine/`` (file, raw, reason): the line cannot be read — wrong field count,
  non-numeric id, unparsable timestamp, unknown behaviour code, bad rating;
- filtered (counted per reason, not stored): a readable line the config leaves out —
  ``behavior_not_kept`` (not in dataset.behaviors), ``out_of_window`` (outside
  dataset.start..dataset.end in dataset.timezone), ``neutral_rating`` (between
  negative_max_rating and positive_min_rating), ``duplicate`` (exact duplicate of another
  canonical row when dataset.drop_duplicates), ``kcore`` (dropped by iterative k-core);
- kept, in ``interactions/``.

Quarantine holds only what is broken, so it stays small and worth reading; filtered rows are
valid data the config chose not to use, and rerunning with another config brings them back.
``input_lines == kept + sum(filtered) + sum(quarantined)`` is checked on every run.

Ids: ``user_idx`` / ``item_idx`` are 1..n (0 is padding) in numeric order of the raw id
(ordered by length, then text, which is numeric order for digit strings), assigned without
collecting ids to the driver: a global sort, ``monotonically_increasing_id`` per partition,
and per-partition offsets (one small row per partition reaches the driver) — zipWithIndex in
SQL. The maps are written first and the interactions are joined against the written maps.

manifest.json facts: inputs (path, size, mtime, lines per file), counts (lines_read,
header_lines, input_lines, kept, filtered{reason}, quarantined{reason}, duplicates, users,
items), time_range (UTC seconds and ISO), window, id_order, output_files, spark_version,
timings, plus the common stage, schema_version, input_hash and config_hash.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import math
from functools import reduce
from zoneinfo import ZoneInfo

import pyarrow.fs as pafs
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from conf.loading import section_hash
from conf.schema import DatasetConfig, PipelineConfig
from spark_jobs.formats import FORMATS, QUARANTINE_REASONS, RawFormat
from spark_jobs.manifest import (
    MANIFEST,
    SCHEMA_VERSION,
    StageResult,
    StageTimer,
    file_fingerprint,
    filesystem,
    join,
    read_manifest,
    staged_output,
    up_to_date,
    write_json,
)
from spark_jobs.session import spark_session

STAGE = "ingest"
FILTER_REASONS = ("behavior_not_kept", "out_of_window", "neutral_rating", "duplicate", "kcore")
ROWS_PER_FILE = 4_000_000  # ~30-60 MB Parquet files; 100M rows -> 25 files
MAX_FILES = 32
ID_ORDER = "numeric order of the raw id (length, then text); 1-based, 0 reserved for padding"
BOM = "\ufeff"


def run_ingest(cfg: PipelineConfig) -> StageResult:
    """Build ``<work_dir>/ingest`` from the raw files, or skip when inputs and config are unchanged.

    Args:
        cfg: the composed config; reads ``paths``, ``dataset`` and ``spark``.

    Returns:
        StageResult with the output uri, its manifest, ``skipped`` and ``reason``.

    Raises:
        FileNotFoundError: ``paths.raw_dir`` is missing or a ``dataset.files`` pattern matches
            nothing there.
        ValueError: a file is not in the dataset's format (header mismatch, no data line, no
            line parses), ``dataset.behaviors`` names a behaviour the format cannot produce,
            or no row survives the filters.
        RuntimeError: the line accounting does not add up (a bug, never bad input).
    """
    fmt = FORMATS[cfg.dataset.format]
    _check_behaviors(cfg.dataset, fmt)
    files = resolve_files(cfg)
    out = join(cfg.paths.work_dir, STAGE)
    input_hash, inputs = file_fingerprint([uri for _, uri in files])
    config_hash = section_hash(cfg, "dataset")
    if up_to_date(out, input_hash, config_hash):
        return StageResult.of(out, read_manifest(out), True,
                              "raw files and dataset config unchanged")
    reason = "no previous output" if read_manifest(out) is None else "raw files or config changed"
    firsts = {uri: _first_lines(uri, 2) for _, uri in files}
    _check_headers(fmt, firsts)

    spark = spark_session(cfg.spark)
    timer = StageTimer()
    with staged_output(out) as tmp:
        facts = _build(spark, cfg, fmt, files, firsts, tmp, timer)
        lines, by_path = facts.pop("lines"), {e["path"]: e for e in inputs}
        for rel, uri in files:
            by_path[uri]["lines"] = lines[rel]
        manifest = {
            "stage": STAGE,
            "schema_version": SCHEMA_VERSION,
            "input_hash": input_hash,
            "config_hash": config_hash,
            "format": fmt.name,
            "inputs": inputs,
            "id_order": ID_ORDER,
            "spark_version": spark.version,
            "timings": timer.timings,
            "built_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            **facts,
        }
        write_json(join(tmp, MANIFEST), manifest)
    return StageResult.of(out, manifest, False, reason)


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
    with fs.open_input_stream(path) as f:  # compression detected from the extension
        head = f.read(1 << 16)
    return [line.lstrip(BOM) for line in head.decode("utf-8", "replace").splitlines()[:n]]


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


def _window(dataset: DatasetConfig) -> tuple[int, int]:
    """[start, end) of the dataset's slices as UTC seconds: local midnights in its zone."""
    zone = ZoneInfo(dataset.timezone)
    return tuple(
        int(dt.datetime.combine(day, dt.time(0), tzinfo=zone).timestamp())
        for day in (dataset.start, dataset.end)
    )


def _classify(spark, fmt: RawFormat, dataset: DatasetConfig,
              files: list[tuple[str, str]]) -> DataFrame:
    """Every raw line with its parsed fields and ``outcome`` (a reason, or NULL when kept).

    Returns:
        DataFrame[file, raw (only on quarantined lines), user, item, ts, behavior, rating,
        label, outcome].
    """
    lines = reduce(
        DataFrame.unionByName,
        [spark.read.text(uri).select(F.lit(rel).alias("file"), F.col("value").alias("raw"))
         for rel, uri in files],
    )
    line = F.regexp_replace("raw", "^" + BOM, "")
    parsed = fmt.parse(line, dataset)
    is_header = F.trim(line) == fmt.header if fmt.header is not None else F.lit(False)
    label = F.when(parsed.rating.isNull(), F.lit(1))  # implicit feedback: every event is positive
    if dataset.positive_min_rating is not None:
        label = label.when(parsed.rating >= dataset.positive_min_rating, 1)
    if dataset.negative_max_rating is not None:
        label = label.when(parsed.rating <= dataset.negative_max_rating, 0)
    # Parse once in one projection, decide the outcome in the next (no duplicated parsing).
    fields = lines.select(
        "file", "raw", is_header.alias("is_header"), parsed.error.alias("error"),
        parsed.user.alias("user"), parsed.item.alias("item"), parsed.ts.alias("ts"),
        parsed.behavior.alias("behavior"), parsed.rating.alias("rating"),
        label.cast("tinyint").alias("label"),
    )
    start, end = _window(dataset)
    outcome = (
        F.when(F.col("is_header"), F.lit("header"))
        .when(F.col("error").isNotNull(), F.col("error"))
        .when(~F.col("behavior").isin(*dataset.behaviors), "behavior_not_kept")
        .when((F.col("ts") < start) | (F.col("ts") >= end), "out_of_window")
        .when(F.col("label").isNull(), "neutral_rating")
    )
    quarantined = F.col("outcome").isin(*QUARANTINE_REASONS)
    return (
        fields.withColumn("outcome", outcome)
        .withColumn("raw", F.when(quarantined, F.col("raw")))  # keep raw text only where needed
        .drop("is_header", "error")
    )


def _build(spark, cfg: PipelineConfig, fmt: RawFormat, files, firsts, tmp: str,
           timer: StageTimer) -> dict:
    """Run the Spark job into ``tmp``; return the manifest facts (plus ``lines`` per file)."""
    dataset = cfg.dataset
    classified = _classify(spark, fmt, dataset, files).persist()
    persisted = [classified]
    try:
        with timer.step("parse_and_count"):
            per_file = classified.groupBy("file", "outcome").count().collect()
        lines, counts = _tally(per_file, fmt, files, firsts)
        with timer.step("quarantine"):
            (classified.filter(F.col("outcome").isin(*QUARANTINE_REASONS))
             .select("file", "raw", F.col("outcome").alias("reason"))
             .repartition(1)  # a shuffle of the few bad lines only, not a 1-task scan
             .write.parquet(join(tmp, "quarantine")))
        with timer.step("filter"):
            kept = classified.filter(F.col("outcome").isNull()).drop("file", "raw", "outcome")
            if dataset.drop_duplicates:
                kept = kept.dropDuplicates()
            kept = kept.persist()
            persisted.append(kept)
            n_kept = kept.count()
            classified.unpersist()
            counts["filtered"]["duplicate"] = counts.pop("kept_before_dedupe") - n_kept
            if dataset.kcore > 0:
                before = n_kept
                kept, n_kept = _kcore(kept, n_kept, dataset.kcore, persisted)
                counts["filtered"]["kcore"] = before - n_kept
        counts["kept"] = n_kept
        counts["duplicates"] = counts["filtered"]["duplicate"]
        _check_accounting(counts)
        if n_kept == 0:
            raise ValueError(
                f"no interaction survives the filters of dataset {dataset.name!r} "
                f"(filtered: {counts['filtered']}, quarantined: {counts['quarantined']}); "
                "check dataset.behaviors, dataset.start/slice_days/num_slices and kcore"
            )
        with timer.step("id_maps"):
            counts["users"] = _write_id_map(kept.select(F.col("user").alias("raw")),
                                            join(tmp, "id_maps", "users"))
            counts["items"] = _write_id_map(kept.select(F.col("item").alias("raw")),
                                            join(tmp, "id_maps", "items"))
            low, high = kept.agg(F.min("ts"), F.max("ts")).first()
        with timer.step("interactions"):
            n_files = min(MAX_FILES, max(1, math.ceil(n_kept / ROWS_PER_FILE)))
            _write_interactions(spark, kept, tmp, n_files)
    finally:
        for frame in persisted:
            frame.unpersist()
    start, end = _window(dataset)
    return {
        "lines": lines,
        "counts": counts,
        "time_range": {"min_ts": low, "max_ts": high, "min_utc": _iso(low), "max_utc": _iso(high)},
        "window": {"start_ts": start, "end_ts": end, "start_utc": _iso(start),
                   "end_utc": _iso(end), "timezone": dataset.timezone},
        "output_files": n_files,
    }


def _tally(per_file, fmt: RawFormat, files, firsts) -> tuple[dict[str, int], dict]:
    """Counts per reason from (file, outcome, count) rows; reject files where nothing parses.

    Returns:
        (lines read per file, counts with ``kept_before_dedupe`` still to be resolved).
    """
    readable = set(FILTER_REASONS) | {None}
    lines = {rel: 0 for rel, _ in files}
    data, parsed = dict(lines), dict(lines)
    counts = {"lines_read": 0, "header_lines": 0,
              "filtered": {r: 0 for r in FILTER_REASONS},
              "quarantined": {r: 0 for r in QUARANTINE_REASONS}, "kept_before_dedupe": 0}
    for row in per_file:
        outcome, n = row["outcome"], row["count"]
        lines[row["file"]] += n
        counts["lines_read"] += n
        if outcome == "header":
            counts["header_lines"] += n
            continue
        data[row["file"]] += n
        if outcome in readable:
            parsed[row["file"]] += n
        if outcome is None:
            counts["kept_before_dedupe"] += n
        elif outcome in QUARANTINE_REASONS:
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
    counts["input_lines"] = counts["lines_read"] - counts["header_lines"]
    return lines, counts


def _check_accounting(counts: dict) -> None:
    accounted = (counts["kept"] + sum(counts["filtered"].values())
                 + sum(counts["quarantined"].values()))
    if accounted != counts["input_lines"]:
        raise RuntimeError(
            f"ingest lost track of lines: {counts['input_lines']} read but "
            f"{accounted} accounted for (kept + filtered + quarantined): {counts}"
        )


def _kcore(kept: DataFrame, n_kept: int, k: int,
           persisted: list[DataFrame]) -> tuple[DataFrame, int]:
    """Iteratively drop users and items with fewer than ``k`` interactions until stable.

    Returns:
        (frame, rows) of the k-core; each round's frame is persisted and the previous one
        released, so lineage and memory stay bounded.
    """
    current, rows = kept, n_kept
    while True:
        users = current.groupBy("user").count().filter(F.col("count") >= k).select("user")
        items = current.groupBy("item").count().filter(F.col("count") >= k).select("item")
        core = (current.join(users, "user", "left_semi")
                .join(items, "item", "left_semi").persist())
        persisted.append(core)
        remaining = core.count()
        current.unpersist()
        current, done, rows = core, remaining == rows, remaining
        if done:
            return current, rows


def _write_id_map(values: DataFrame, uri: str) -> int:
    """Write raw id -> contiguous 1-based idx for the distinct ``raw`` values.

    Args:
        values: DataFrame[raw string], duplicates allowed.
        uri: where the map (raw string, idx int32) is written.

    Returns:
        Number of distinct ids.
    """
    tagged = (values.distinct().orderBy(F.length("raw"), "raw")
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
        tagged.select("raw", idx.cast("int").alias("idx")).write.parquet(uri)
    finally:
        tagged.unpersist()
    return total


def _write_interactions(spark, kept: DataFrame, tmp: str, n_files: int) -> None:
    """Join the kept rows to the written id maps and write the contract's interactions."""
    users = spark.read.parquet(join(tmp, "id_maps", "users"))
    items = spark.read.parquet(join(tmp, "id_maps", "items"))
    (kept.join(users.select(F.col("raw").alias("user"), F.col("idx").alias("user_idx")), "user")
     .join(items.select(F.col("raw").alias("item"), F.col("idx").alias("item_idx")), "item")
     .select("user_idx", "item_idx", F.col("ts").cast("bigint"), "behavior",
             F.col("rating").cast("float"), F.col("label").cast("tinyint"))
     .repartition(n_files, "user_idx")
     .sortWithinPartitions("user_idx", "ts")  # user histories contiguous: index reads fast
     .write.parquet(join(tmp, "interactions")))


def _iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat()

