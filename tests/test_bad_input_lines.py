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

import tiny_index

SEQREC = Path(sys.executable).with_name("seqrec")
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
    return subprocess.run([str(SEQREC), *args, "--set", f"paths.work_dir={work}"],
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
    (raw / "ratings_Sample.csv").write_text("who,what,when\n1,2,3\n")
    result = _seqrec(["ingest", "--dataset", "sample-feedback", "--set",
                      f"paths.raw_dir={raw}", "--set", "generate.auto=false"], work)
    _one_clear_failure(result, work, "header", "ingest")


def test_a_corrupt_parquet_file_in_the_index_is_one_line(tmp_path):
    work = tmp_path / "work"
    tiny_index.write_sequence_index(work, "leave_one_out")
    part = next((work / "index" / "sequences").glob("*.parquet"))
    part.write_bytes(part.read_bytes()[: len(part.read_bytes()) // 2])
    result = _seqrec(["train", "--dataset", "sample-loo", "--model", "sasrec",
                      "--set", "train.epochs=1"], work)
    _one_clear_failure(result, work, "is not a readable Parquet output", "train")
    assert "seqrec index" in result.stderr
