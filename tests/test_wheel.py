"""The package as users install it from a wheel, not the editable checkout (issue 25): a
hand-kept package list once left ``spark_jobs.readers`` out, so a wheel could ingest
nothing while the editable install of setup.sh hid it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("conf", "store", "spark_jobs", "trainers", "flows")


def source_modules() -> list[str]:
    """Every module of the product's packages in the tree, dotted."""
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def test_a_wheel_of_the_tree_carries_and_imports_every_module_and_preset(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("seqrec-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    files = {str(p.relative_to(ROOT)) for package in PACKAGES
             for p in (ROOT / package).rglob("*") if p.suffix in (".py", ".yaml")}
    assert files <= names, sorted(files - names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    modules = source_modules()
    script = (
        "import importlib, sys\n"
        f"mods = {modules!r}\n"
        "for m in mods: importlib.import_module(m)\n"
        "import conf\n"
        f"assert conf.__file__.startswith({str(site)!r}), conf.__file__\n"
        "from conf.loading import available, load_config\n"
        "for dataset in available('datasets'):\n"
        "    load_config(dataset, 'score' if dataset in ('sample', 'taobao') else 'sasrec',"
        " 'local', [])\n"
        "print(len(mods))\n"
    )
    # The unpacked wheel first on the path, the checkout nowhere on it.
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) == len(modules) > 50
