"""The package layers (docs/architecture.md): flows -> trainers | spark_jobs -> store -> conf,
checked by import-linter with the contracts in pyproject.toml, and the protocol names
spelled only where protocols are defined."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("conf", "store", "spark_jobs", "trainers", "flows", "benchmarks")
PROTOCOL_NAMES = {"slices", "leave_one_out", "feedback"}


def test_import_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def _defines_protocols(path: Path) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return rel in ("trainers/protocols.py", "conf/schema.py") or (
        rel.startswith("spark_jobs/index") and rel.endswith(".py"))


def test_protocol_names_are_spelled_only_where_protocols_are_defined():
    """A fourth protocol is one class in trainers/protocols.py and one Spark builder; no
    other module branches on a protocol's name."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if _defines_protocols(path):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and node.value in PROTOCOL_NAMES:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert found == []
