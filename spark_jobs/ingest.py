"""Ingest stage: raw public files -> canonical interactions, id maps, quarantine, manifest.

Every raw line is read as text (``spark.read.text``) and parsed with Spark SQL expressions
(spark_jobs/formats.py), so each line ends in exactly one place:

- a header line (counted, not data),
- ``quarantine/`` (file, raw, reason): the line cannot be read — wrong field count,
  non-numeric id (anything but a canonical non-negative bigint), unparsable timestamp,
  unknown behaviour code, bad rating;
- filtered (counted per reason, not stored): a readable line the config leaves out —
  ``behavior_not_kept`` (not in dataset.behaviors), ``out_of_window`` (outside
  dataset.start..dataset.end in dataset.timezone), ``neutral_rating`` (between
  negative_max_rating and positive_min_rating), ``duplicate`` (exact duplicate of another
  canonical row when dataset.drop_duplicates), ``kcore`` (dropped by iterative k-core);
- kept, in ``interactions/``.

Quarantine holds only what is broken, so it stays small and worth reading; filtered rows are
valid data the config chose not to use, and rerunning with another config brings them back.
``input_lines == kept + sum(filtered) + sum(quarantined)`` is checked on every run.

Data flow: the raw text is scanned once, and the kept rows are shuffled once.

1. ``parse``: every line is classified in one pass that writes only the kept and quarantined
   lines, as Parquet, to ``_lines/`` in the staged folder (deleted before publishing); an
   Observation per file counts its lines per outcome during that same write. Nothing of
   100M rows is cached and no pass exists only to count.
2. ``quarantine``: the quarantined rows of ``_lines`` become ``quarantine/``.
3. ``id_maps``: from the ids of the kept rows (see Ids).
4. ``interactions``: the kept rows are shuffled by user into the output files; that one
   shuffle serves the dedupe (a single-phase aggregation right behind it), the joins to the
   id maps, broadcast when each holds at most ``spark.broadcast_max_ids`` ids, and the file
   layout (each user's rows in one file, sorted by user_idx then ts). The written rows and
   their time range are observed during the write; duplicates = kept lines - written rows.
   With ``dataset.kcore`` the dedupe and the k-core rounds (persisted, counted) run first.

Ids: raw ids are parsed to bigint (valid ids are canonical digit strings, see
spark_jobs/formats.py), so dedupe, distinct, sort and joins work on longs. ``user_idx`` /
``item_idx`` are 1..n (0 is padding) in numeric order of the raw id (which for canonical
digit strings is order by length, then text), assigned without collecting ids to the driver:
a global sort, ``monotonically_increasing_id`` per partition, and per-partition offsets (one
small row per partition reaches the driver) — zipWithIndex in SQL. The maps (raw id as its
digit string, idx) are written first and the interactions are joined against the written
maps.

manifest.json facts: inputs (path, size, mtime, lines per file), counts (lines_read,
header_lines, input_lines, kept, filtered{reason}, quarantined{reason}, duplicates, users,
items), time_range (UTC seconds and ISO), window, id_order, output_files, spark_version,
timings, plus the common stage, schema_version, input_hash and config_hash.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import reduce

import pyarrow.fs as pafs
from pyspark.sql import DataFrame, Observation
from pyspark.sql import functions as F

from conf.loading import section_hash
from conf.schema import DatasetConfig, PipelineConfig, SparkConfig
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
SINGLE_PHASE_AGGREGATION = "spark.sql.execution.bypassPartialAggregation"
LINES = "_lines"  # scratch in the staged folder: kept and quarantined lines, deleted at the end
# What each line gets from _classify; duplicate and kcore are decided later, on kept rows.
LINE_OUTCOMES = ("header", *QUARANTINE_REASONS, "behavior_not_kept", "out_of_window",
                 "neutral_rating", None)
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
    bounds = dataset.slice_bounds()
    return bounds[0], bounds[-1]


def _classify(spark, fmt: RawFormat, dataset: DatasetConfig, rel: str, uri: str) -> DataFrame:
    """Every line of one raw file with its parsed fields and ``outcome`` (a reason, or NULL
    when kept).

    Returns:
        DataFrame[file, raw (only on quarantined lines), user, item, ts, behavior, rating,
        label, outcome].
    """
    lines = spark.read.text(uri).select(F.lit(rel).alias("file"), F.col("value").alias("raw"))
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


def _split_lines(spark, fmt: RawFormat, dataset: DatasetConfig, files,
                 uri: str) -> list[tuple[str, str | None, int]]:
    """Parse every raw line once: write the kept and quarantined lines to ``uri``, count all.

    One scan of the raw text does the whole first half of the stage: an Observation per file
    counts its lines per outcome while the write runs, so the 100M parsed lines are neither
    cached nor scanned a second time. Lines the config filters out here are only counted.

    Returns:
        [(file, outcome, lines)] for every file and every outcome of LINE_OUTCOMES; the
        Parquet at ``uri`` holds file, raw, reason (NULL on kept lines) and the canonical
        columns.
    """
    frames, observations = [], []
    for rel, file_uri in files:
        observation = Observation()
        frames.append(_classify(spark, fmt, dataset, rel, file_uri).observe(
            observation,
            *[F.count_if(F.col("outcome").eqNullSafe(F.lit(outcome))).alias(str(j))
              for j, outcome in enumerate(LINE_OUTCOMES)],
            F.count(F.lit(1)).alias("all"),
        ))
        observations.append(observation)
    stored = F.col("outcome").isNull() | F.col("outcome").isin(*QUARANTINE_REASONS)
    (reduce(DataFrame.unionByName, frames).filter(stored)
     .withColumnRenamed("outcome", "reason").write.parquet(uri))
    for (rel, _), observation in zip(files, observations):
        seen = observation.get
        if sum(seen[str(j)] for j in range(len(LINE_OUTCOMES))) != seen["all"]:
            raise RuntimeError(f"ingest lost track of lines in {rel}: {seen['all']} read but "
                               f"outcomes {seen} cover fewer (an outcome outside "
                               f"LINE_OUTCOMES: a bug, never bad input)")
    return [(rel, outcome, observation.get[str(j)])
            for (rel, _), observation in zip(files, observations)
            for j, outcome in enumerate(LINE_OUTCOMES)]


def _build(spark, cfg: PipelineConfig, fmt: RawFormat, files, firsts, tmp: str,
           timer: StageTimer) -> dict:
    """Run the Spark job into ``tmp``; return the manifest facts (plus ``lines`` per file)."""
    dataset = cfg.dataset
    lines_uri = join(tmp, LINES)
    persisted: list[DataFrame] = []
    try:
        with timer.step("parse"):
            per_file = _split_lines(spark, fmt, dataset, files, lines_uri)
        lines, counts = _tally(per_file, fmt, files, firsts)
        stored = spark.read.parquet(lines_uri)
        with timer.step("quarantine"):
            (stored.filter(F.col("reason").isNotNull()).select("file", "raw", "reason")
             .repartition(1)  # a shuffle of the few bad lines only, not a 1-task scan
             .write.parquet(join(tmp, "quarantine")))
        kept = stored.filter(F.col("reason").isNull()).drop("file", "raw", "reason")
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
                written = _write_interactions(spark, cfg.spark, kept, counts, tmp, n_files,
                                              dedupe_at_write)
    finally:
        for frame in persisted:
            frame.unpersist()
        _delete(lines_uri)
    if dedupe_at_write:
        counts["filtered"]["duplicate"] = rows - written["rows"]
    counts["kept"] = written["rows"]
    counts["duplicates"] = counts["filtered"]["duplicate"]
    _check_accounting(counts)
    start, end = _window(dataset)
    low, high = written["min_ts"], written["max_ts"]
    return {
        "lines": lines,
        "counts": counts,
        "time_range": {"min_ts": low, "max_ts": high, "min_utc": _iso(low), "max_utc": _iso(high)},
        "window": {"start_ts": start, "end_ts": end, "start_utc": _iso(start),
                   "end_utc": _iso(end), "timezone": dataset.timezone},
        "output_files": n_files,
    }


def _tally(per_file, fmt: RawFormat, files, firsts) -> tuple[dict[str, int], dict]:
    """Counts per reason from (file, outcome, lines) tuples; reject files where nothing parses.

    Returns:
        (lines read per file, counts with ``kept_before_dedupe`` still to be resolved).
    """
    readable = set(FILTER_REASONS) | {None}
    lines = {rel: 0 for rel, _ in files}
    data, parsed = dict(lines), dict(lines)
    counts = {"lines_read": 0, "header_lines": 0,
              "filtered": {r: 0 for r in FILTER_REASONS},
              "quarantined": {r: 0 for r in QUARANTINE_REASONS}, "kept_before_dedupe": 0}
    for file, outcome, n in per_file:
        lines[file] += n
        counts["lines_read"] += n
        if outcome == "header":
            counts["header_lines"] += n
            continue
        data[file] += n
        if outcome in readable:
            parsed[file] += n
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


def _require_rows(rows: int, dataset: DatasetConfig, counts: dict) -> None:
    if rows == 0:
        raise ValueError(
            f"no interaction survives the filters of dataset {dataset.name!r} "
            f"(filtered: {counts['filtered']}, quarantined: {counts['quarantined']}); "
            "check dataset.behaviors, dataset.start/slice_days/num_slices and kcore"
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
        kept = kept.dropDuplicates().persist()
        persisted.append(kept)
        unique = kept.count()
        counts["filtered"]["duplicate"] = rows - unique
        rows = unique
    core, remaining = _kcore(kept, rows, dataset.kcore, persisted)
    counts["filtered"]["kcore"] = rows - remaining
    return core, remaining


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
        values: DataFrame[raw bigint], duplicates allowed.
        uri: where the map (raw string: the id's digits, idx int32) is written.

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


def _write_interactions(spark, conf: SparkConfig, kept: DataFrame, counts: dict, tmp: str,
                        n_files: int, dedupe: bool) -> dict:
    """Join the kept rows to the written id maps and write the contract's interactions.

    When both maps fit ``spark.broadcast_max_ids`` they are broadcast, and one shuffle (by
    raw user into the output files) serves the dedupe, the joins and the file layout; larger
    maps take shuffle joins and a final repartition by user_idx. Either way each user's
    rows land in one file, sorted by (user_idx, ts).

    Returns:
        {"rows", "min_ts", "max_ts"} of the written interactions, observed during the write.
    """
    users = _id_map(spark, tmp, "users", "user", counts["users"] <= conf.broadcast_max_ids)
    items = _id_map(spark, tmp, "items", "item", counts["items"] <= conf.broadcast_max_ids)
    local = counts["users"] <= conf.broadcast_max_ids and counts["items"] <= conf.broadcast_max_ids
    rows = kept.repartition(n_files, "user") if local else kept
    if dedupe:
        rows = rows.dropDuplicates()
    rows = (rows.join(users, "user").join(items, "item")
            .select("user_idx", "item_idx", F.col("ts").cast("bigint"), "behavior",
                    F.col("rating").cast("float"), F.col("label").cast("tinyint")))
    if not local:
        rows = rows.repartition(n_files, "user_idx")
    observation = Observation()
    (rows.observe(observation, F.count(F.lit(1)).alias("rows"), F.min("ts").alias("min_ts"),
                  F.max("ts").alias("max_ts"))
     .sortWithinPartitions("user_idx", "ts")  # user histories contiguous: index reads fast
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


def _id_map(spark, tmp: str, name: str, column: str, broadcast: bool) -> DataFrame:
    """The written id map ``name`` as DataFrame[<column> bigint, <column>_idx int]."""
    ids = spark.read.parquet(join(tmp, "id_maps", name)).select(
        F.col("raw").cast("bigint").alias(column), F.col("idx").alias(f"{column}_idx"))
    return F.broadcast(ids) if broadcast else ids


def _delete(uri: str) -> None:
    """Remove a scratch folder if it exists."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def _iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat()

