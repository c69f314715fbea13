#!/usr/bin/env bash
# Install everything into ./.venv: Java for Spark (if missing), CPU torch first, then the
# project with its test extras. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"' || {
  echo "setup: Python 3.11+ is required (found: $("$PY" --version 2>&1))" >&2; exit 1; }

java_ok() {
  local j=${JAVA_HOME:+$JAVA_HOME/bin/}java
  command -v "$j" >/dev/null 2>&1 || return 1
  "$j" -version 2>&1 | grep -Eq 'version "(17|21)[".]'
}
if ! java_ok; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: no Java 17/21 found; installing Debian's openjdk-17-jre-headless for Spark"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  fi
  java_ok || { echo "setup: PySpark needs Java 17 or 21. Install one (Debian/Ubuntu: apt-get install openjdk-17-jre-headless; macOS: brew install openjdk@17) and set JAVA_HOME if it is not on PATH." >&2; exit 1; }
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# CPU torch first: an unpinned torch pulls gigabytes of CUDA wheels.
.venv/bin/python -m pip install -q "torch==2.13.0"
PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q -e ".[test]"  # quiet build backend
echo "setup: done (.venv ready; run .venv/bin/seqrec --help)"
