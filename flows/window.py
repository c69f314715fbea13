"""Sliding window for scheduled retraining (``dataset.window: latest``).

In ``latest`` mode the flow moves ``dataset.start`` so that the T = ``dataset.num_slices``
slices end with the newest complete slice of the raw data, then ingests, indexes, trains and
evaluates on that window. The new start is applied as an ordinary config override
(``dataset.start=YYYY-MM-DD``), so every stage sees it exactly as if the user had typed it
and the stage manifests record it.

Slice boundaries stay on the grid of the configured start (multiples of ΔT =
``dataset.slice_days`` days from it), so retraining never shifts the meaning of a day. A slice
counts as complete when the raw data reaches its last local day. Timestamps later than the
current time are ignored: they are clock errors (the public Taobao file has a few), not data.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from zoneinfo import ZoneInfo

from conf.schema import DatasetConfig, PipelineConfig
from store.files import join, read_json, write_json
from store.logs import log_file
from store.manifest import file_fingerprint

STATE_FILE = "window.json"

log = logging.getLogger(__name__)


def latest_start(last_day: dt.date, dataset: DatasetConfig) -> dt.date:
    """First day of the window of the newest ``num_slices`` complete slices.

    Args:
        last_day: the latest local calendar day that has data.
        dataset: supplies the grid anchor ``start``, ΔT ``slice_days`` and T ``num_slices``.

    Returns:
        ``start + (k - T) * ΔT`` where k is the number of complete slices from ``start`` up
        to and including ``last_day``; may lie before ``start`` when the data ends earlier.
    """
    complete = ((last_day - dataset.start).days + 1) // dataset.slice_days
    return dataset.start + dt.timedelta(days=(complete - dataset.num_slices) * dataset.slice_days)


def raw_last_day(cfg: PipelineConfig) -> tuple[dt.date, str]:
    """The latest local day with a readable, kept interaction in the raw files.

    Reads every raw file once with Spark, through the same per-format parser as ingest, so
    malformed lines and behaviours not in ``dataset.behaviors`` never move the window. The
    answer is cached beside the flow state under the raw files' fingerprint (path, size,
    mtime), so an unchanged input costs no Spark pass.

    Returns:
        (last day in ``dataset.timezone``, raw files' fingerprint hash).

    Raises:
        FileNotFoundError: no raw file matches ``dataset.files`` (from ingest's resolver).
        ValueError: no line of the raw files parses to a kept interaction.
    """
    from spark_jobs.ingest import resolve_files

    uris = [uri for _, uri in resolve_files(cfg)]
    fingerprint, _ = file_fingerprint(uris)
    state = join(cfg.paths.work_dir, "flow", STATE_FILE)
    cached = read_json(state)
    if cached and cached["fingerprint"] == fingerprint and cached["format"] == cfg.dataset.format:
        return dt.date.fromisoformat(cached["last_day"]), fingerprint

    from pyspark.sql import functions as F

    from spark_jobs.ingest import raw_format
    from spark_jobs.readers import FORMATS
    from spark_jobs.session import spark_session

    fmt, _ = raw_format(FORMATS[cfg.dataset.format], cfg.dataset, uris)  # RecBole: by header
    spark = spark_session(cfg.spark, log_file(cfg.paths.work_dir, "spark"))
    parsed = fmt.parse(F.col("value"), cfg.dataset)
    now = int(time.time())
    max_ts = (
        spark.read.text(uris)
        .select(parsed.ts.alias("ts"), parsed.error.alias("error"),
                parsed.behavior.alias("behavior"))
        .where(F.col("error").isNull() & F.col("behavior").isin(*cfg.dataset.behaviors)
               & (F.col("ts") <= now))
        .agg(F.max("ts"))
        .first()[0]
    )
    if max_ts is None:
        raise ValueError(
            f"no readable {cfg.dataset.format} line with behaviours {cfg.dataset.behaviors} in "
            f"{uris}; dataset.window=latest cannot place the window"
        )
    last_day = dt.datetime.fromtimestamp(max_ts, ZoneInfo(cfg.dataset.timezone)).date()
    write_json(state, {"fingerprint": fingerprint, "last_day": last_day.isoformat(),
                              "format": cfg.dataset.format, "max_ts": max_ts})
    return last_day, fingerprint


def window_overrides(cfg: PipelineConfig) -> list[str]:
    """Config overrides that place the window: none for ``fixed``, ``dataset.start`` for
    ``latest``.

    Returns:
        ``[]`` or ``["dataset.start=YYYY-MM-DD"]``.
    """
    if cfg.dataset.window == "fixed":
        return []
    last_day, _ = raw_last_day(cfg)
    start = latest_start(last_day, cfg.dataset)
    log.info("dataset.window=latest: raw data ends %s, window %s + %d x %d days (was %s)",
             last_day, start, cfg.dataset.num_slices, cfg.dataset.slice_days, cfg.dataset.start)
    return [f"dataset.start={start.isoformat()}"]

