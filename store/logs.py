"""Where full logs go: ``<work>/logs/<what>-<UTC time>.log``, so a failure costs the user one
line that names the file (issue 25). A work folder on ``hdfs://`` or ``s3a://`` keeps its
logs on this machine, under the system's temporary folder, ``seqrec-logs/``.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path


def log_file(work_dir: str, what: str) -> Path:
    """A new log file's path (its folder created) for ``what`` (a stage, ``spark``)."""
    if "://" in work_dir and not work_dir.startswith("file://"):
        folder = Path(tempfile.gettempdir()) / "seqrec-logs"
    else:
        folder = Path(work_dir.removeprefix("file://")) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    return folder / f"{what}-{stamp}.log"
