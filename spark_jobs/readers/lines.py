"""Raw text lines with their exact position in the input, from one scan.

``spark.read.text`` gives lines without numbers. Each line is tagged in the scan with its
task-local row number (``monotonically_increasing_id``: partition << 33 | row) and the byte
offset where its split starts (``input_file_block_start``); a line's position is then the
lines of all earlier splits (files in sorted order, splits by offset) plus its row. The split
sizes come from one small aggregate (one row per split reaches the driver) over whatever the
tagged lines were written to -- zipWithIndex in SQL, without a second scan of the raw text.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

ROW_BITS = 33  # monotonically_increasing_id keeps the row number in its low 33 bits
FILE_KEY = 1 << 31  # split key = file_id * FILE_KEY + partition (partitions < 2^31)


def tagged_text(spark, uri: str, file_id: int) -> DataFrame:
    """One file's lines with what :func:`positions` needs.

    Returns:
        DataFrame[file_id int, part int, block bigint, row bigint, value string].
    """
    mono = F.monotonically_increasing_id()
    return spark.read.text(uri).select(
        F.lit(file_id).alias("file_id"), F.shiftright(mono, ROW_BITS).cast("int").alias("part"),
        F.input_file_block_start().alias("block"),
        mono.bitwiseAND((1 << ROW_BITS) - 1).alias("row"), "value",
    )


def positions(lines: DataFrame) -> Column:
    """The 0-based position of each line in the whole input, as a column over ``lines``.

    Args:
        lines: one row per raw line with file_id, part, block and row from
            :func:`tagged_text` (read back from storage, so this is one cheap aggregate).

    Returns:
        bigint column: lines of earlier files (by file_id), earlier splits of the same file
        (by byte offset) and earlier rows of the same split.
    """
    splits = sorted(tuple(r) for r in lines.groupBy("file_id", "block", "part").count().collect())
    offsets, total = [], 0
    for file_id, _, part, n in splits:
        offsets += [F.lit(file_id * FILE_KEY + part), F.lit(total)]
        total += n
    key = F.col("file_id").cast("bigint") * FILE_KEY + F.col("part")
    return F.element_at(F.create_map(*offsets), key) + F.col("row")
