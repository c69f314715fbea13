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
