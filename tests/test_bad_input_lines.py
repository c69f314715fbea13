"""Bad input costs the user at most three lines on stderr and a non-zero exit; the full trace
goes to ``<work>/logs/<stage>-<time>.log``, which the last line names, and Spark's JVM logs
to ``<work>/logs/spark-<time>.log`` (issue 25). Each case runs the real ``seqrec`` command
in its own process, as a user would."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from pathlib import Path

import pytest

import small_spark
import tiny_index
from conf.loading import load_config

SEQREC = Path(sys.executable).with_name("seqrec")
HEADER = "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type"  # Tmall's
REVIEW = ('{"reviewerID": "A%d", "asin": "B%d", "overall": 5.0, '
          '"unixReviewTime": 1400000000}\n')


def _reviews(n: int) -> bytes:
    return "".join(REVIEW % (i, i % 40) for i in range(n)).encode()


BAD_FILES = {  # what the file holds -> (bytes, words the one line must hold)
    "binary": (bytes(range(256)) * 64, "Not a gzipped file"),
    "empty": (b"", "has no data lines"),
    "truncated gzip": (gzip.compress(_reviews(20000))[:30000], "truncated or corrupt gzip"),
    "no line parses": (gzip.compress(b"not json at all\n" * 50), "no line"),
}


def _seqrec(args: list[str], work: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(SEQREC), *args, "--set", f"paths.work_dir={work}",
                           "--set", small_spark.JVM],
                          capture_output=True, text=True, timeout=300)


def _one_clear_failure(result: subprocess.CompletedProcess, work: Path, words: str,
                       stage: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) <= 3, result.stderr
    assert "Traceback" not in result.stderr and "\tat " not in result.stderr
    assert words in lines[-1], lines[-1]
    trace = Path(re.search(r"\(full trace: (.+)\)$", lines[-1]).group(1))
    assert trace.parent == work / "logs" and trace.name.startswith(f"{stage}-")
    assert "Traceback" in trace.read_text()


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_raw_file_is_one_line_naming_the_full_trace(tmp_path, case):
    raw, work = tmp_path / "raw", tmp_path / "work"
    raw.mkdir()
    data, words = BAD_FILES[case]
    (raw / "reviews_Beauty_5.json.gz").write_bytes(data)
    result = _seqrec(["ingest", "--dataset", "beauty", "--set", f"paths.raw_dir={raw}"], work)
    _one_clear_failure(result, work, words, "ingest")
    assert not (work / "ingest").exists()  # nothing half-written


def test_a_wrong_header_is_one_line(tmp_path):
    raw, work = tmp_path / "raw", tmp_path / "work"
    raw.mkdir()
    (raw / "user_log_format1.csv").write_text("who,what,when\n1,2,3\n")
    result = _seqrec(["ingest", "--dataset", "tmall", "--set", f"paths.raw_dir={raw}"], work)
    _one_clear_failure(result, work, "is not a tmall file: expected Tmall", "ingest")
    assert "first bad line: 'who,what,when'" in result.stderr


@pytest.mark.parametrize("text", ["", "\n", HEADER, HEADER + "\n"])
def test_a_file_without_data_lines_fails_before_spark_starts(tmp_path, text):
    """An empty file, or one holding only its header, is named at once: no JVM is started
    for it (``raw_format`` reads the first lines with pyarrow)."""
    from spark_jobs.ingest import raw_format
    from spark_jobs.readers import FORMATS

    path = tmp_path / "user_log_format1.csv"
    path.write_text(text)
    fmt = FORMATS["tmall"]
    words = "has no data lines" if text != "\n" else "is not a tmall file"
    with pytest.raises(ValueError, match=words):
        raw_format(fmt, load_config("tmall").dataset, [str(path)])
    path.write_text(HEADER + "\n1,2,3,4,5,0511,0\n")
    assert raw_format(fmt, load_config("tmall").dataset, [str(path)])[0] is fmt


def test_a_corrupt_parquet_file_in_the_index_is_one_line(tmp_path):
    work = tmp_path / "work"
    tiny_index.write_sequence_index(work, "leave_one_out")
    part = next((work / "index" / "sequences").glob("*.parquet"))
    part.write_bytes(part.read_bytes()[: len(part.read_bytes()) // 2])
    result = _seqrec(["train", "--dataset", "sample-loo", "--model", "sasrec",
                      "--set", "train.epochs=1"], work)
    _one_clear_failure(result, work, "is not a readable Parquet output", "train")
    assert "seqrec index" in result.stderr
