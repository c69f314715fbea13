"""The JVM that ``spark_jobs.session.spark_session`` starts: ``spark.driver_java_options``
beside seqrec's own log4j flags. A process of its own: the tests' shared JVM may already
run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import json, sys
from conf.loading import load_config
from spark_jobs.session import spark_session
cfg = load_config(overrides=["spark.master=local[1]", "spark.driver_memory=1g",
                             "spark.driver_java_options=-XX:TieredStopAtLevel=1 -Xss4m"])
spark = spark_session(cfg.spark, sys.argv[1])
bean = spark._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
print(json.dumps(list(bean.getInputArguments())))
spark.stop()
"""


@pytest.mark.slow  # starts a JVM (~5 s)
def test_the_driver_jvm_gets_the_configured_flags_and_the_log_file(tmp_path):
    log = tmp_path / "logs" / "spark.log"
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(log)], capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    flags = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"-XX:TieredStopAtLevel=1", "-Xss4m", f"-Dseqrec.spark.log={log}"} <= set(flags)
    assert any(f.startswith("-Dlog4j2.configurationFile=") for f in flags)


RELEASE = """
import json, os, signal, time
from conf.loading import load_config
from spark_jobs.session import driver_released, driver_running, spark_session, stop_driver
cfg = load_config(overrides=["spark.master=local[1]", "spark.driver_memory=1g"])

def jvm(spark):
    return spark._jvm.java.lang.ProcessHandle.current().pid()

def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

with driver_released():
    first = spark_session(cfg.spark)
    started, rows = jvm(first), first.range(3).count()
out = {"rows": rows, "running_after": driver_running(), "first_alive": alive(started)}
second = spark_session(cfg.spark)  # a fresh JVM once the first is gone
out["second_new"] = jvm(second) != started and second.range(2).count() == 2
with driver_released():  # already running: the block leaves it so
    out["inner_rows"] = spark_session(cfg.spark).range(4).count()
out["second_kept"] = driver_running() and second.range(5).count() == 5
stop_driver()
try:  # a JVM killed inside the block: its error comes out, and the driver is still released
    with driver_released():
        third = spark_session(cfg.spark)
        os.kill(jvm(third), signal.SIGKILL)
        time.sleep(2)
        third.range(2).count()
except Exception as exc:
    out["killed_error"] = "Py4J" in type(exc).__name__ or isinstance(exc, ConnectionError)
out["killed_released"] = not driver_running()
out["after_kill"] = spark_session(cfg.spark).range(6).count()
print(json.dumps(out))
"""


@pytest.mark.slow  # starts four JVMs (~20 s)
def test_the_data_stages_driver_jvm_ends_with_them_unless_it_ran_before():
    """``driver_released`` (the flow's window, ingest and index) stops the JVM it started,
    so its heap is not held through training, and a later session starts a new one; a
    session that was running before the block keeps running; a JVM killed inside the block
    leaves the block's own error, and the next session starts."""
    out = subprocess.run([sys.executable, "-c", RELEASE], capture_output=True, text=True,
                         timeout=600, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "rows": 3, "running_after": False, "first_alive": False, "second_new": True,
        "inner_rows": 4, "second_kept": True, "killed_error": True, "killed_released": True,
        "after_kill": 6}
