"""Ray workers' log noise (trainers/ray_logging.py): the cleaner's once-a-second warning is
dropped, the autoscaling client's timeout keeps its line without its traceback."""

from __future__ import annotations

import io
import logging

from trainers.ray_logging import ONE_LINE_LOGGERS, QUIET_LOGGERS, DropTraceback, quiet_loggers


def _emit(name: str, level: int = logging.WARNING) -> str:
    """What one record with a traceback on logger ``name`` prints through a plain handler."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        try:
            raise TimeoutError("Get timed out: some object(s) not ready.")
        except TimeoutError:
            logger.log(level, "Failed to send resource request; safe to ignore if transient",
                       exc_info=True)
    finally:
        logger.removeHandler(handler)
    return out.getvalue()


def test_cleaner_warnings_dropped_and_timeouts_on_one_line():
    quiet_loggers()
    quiet_loggers()  # the hook may run again in a process: still one filter
    (cleaner,) = QUIET_LOGGERS
    assert _emit(cleaner) == ""
    assert "Failed to send" in _emit(cleaner, logging.ERROR)
    (client,) = ONE_LINE_LOGGERS
    assert sum(isinstance(f, DropTraceback) for f in logging.getLogger(client).filters) == 1
    printed = _emit(client)
    assert printed == "WARNING Failed to send resource request; safe to ignore if transient\n"


def test_other_loggers_keep_their_tracebacks():
    """The check above can fail: the same record elsewhere prints its traceback."""
    quiet_loggers()
    printed = _emit("seqrec.test.elsewhere")
    assert "Traceback" in printed and "TimeoutError" in printed
