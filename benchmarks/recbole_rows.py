"""RecBole 1.2.1's SASRec as rows of our comparison tables (issue 23: every table beside
RecBole's SASRec with CE and with BPR), run by benchmarks/recbole_runner.py in RecBole's own
venv (``.venv-recbole``; the runner's docstring has the install line).

Used by benchmarks/movielens_recbole.py (RecBole's ML-100K atomic file as it is) and
benchmarks/generated_margins.py (the generated log's leave-one-out sequences as our index
holds them, written as an S3-Rec ``<Name>.txt`` so RecBole's last two items are ours).
RecBole gets our SASRec preset's sizes for the table (d, blocks, heads, dropout, L, lr,
batch) and evaluates ``uni99`` (1 target + 99 uniform unseen items, our candidate count:
its rows fill our ``test_*`` columns) or ``full`` (every item, the user's history excluded,
as our evaluation's full ranking: ``full_*`` columns). RecBole's ``uni99`` costs ~50 ms a
user per evaluation on 2 cores (its per-user batches): 30 s on ML-100K's 943 users, ~10
minutes on the generated log's 11,583, where ``full`` takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECBOLE_PYTHON = ROOT / ".venv-recbole" / "bin" / "python"
LOSSES = ("CE", "BPR")
# our metric name -> RecBole's, per mode (uni99: mrr@100 over its 100 candidates = our
# untruncated MRR; full: RecBole's MRR stops at 100, ours does not, so none)
METRICS = {"uni99": ("test", {"hr@1": "hit@1", "hr@5": "hit@5", "hr@10": "hit@10",
                              "ndcg@5": "ndcg@5", "ndcg@10": "ndcg@10", "mrr": "mrr@100"}),
           "full": ("full", {"hr@1": "hit@1", "hr@5": "hit@5", "hr@10": "hit@10",
                             "ndcg@5": "ndcg@5", "ndcg@10": "ndcg@10"})}


def missing_venv() -> str | None:
    """Why RecBole cannot run here, or None."""
    if RECBOLE_PYTHON.exists():
        return None
    return (f"RecBole's venv is missing: see benchmarks/recbole_runner.py for the install "
            f"line ({RECBOLE_PYTHON}), or pass --no-recbole")


def sasrec_args(cfg) -> list[str]:
    """Our SASRec preset's sizes under ``cfg``'s table, as recbole_runner.py arguments."""
    from trainers.compare import model_config

    sasrec = model_config(cfg, "sasrec")
    p = sasrec.model.params
    return ["--embed-dim", str(p["embed_dim"]), "--blocks", str(p["num_blocks"]),
            "--heads", str(p["num_heads"]), "--dropout", str(p["dropout"]),
            "--max-len", str(sasrec.index.sequence_max_len), "--lr", str(sasrec.train.lr),
            "--batch-size", str(sasrec.train.batch_size)]


def write_sequences(index_uri: str, path: Path) -> int:
    """Every user's items of our leave-one-out index in time order, as S3-Rec's
    ``uid i1 … iK`` lines (dense ids), published atomically; returns the users written."""
    from store.index import load_sequences

    sequences = load_sequences(index_uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    users = 0
    with tmp.open("w") as out:
        for user in range(1, len(sequences.offsets) - 1):
            start, end = sequences.offsets[user], sequences.offsets[user + 1]
            if end > start:
                items = sequences.items[start:end]
                out.write(f"{user} {' '.join(map(str, items.astype(np.int64)))}\n")
                users += 1
    tmp.replace(path)
    return users


def recbole_row(source: list[str], out: Path, loss: str, sasrec: list[str], epochs: int,
                patience: int, threads: int, timings: dict, mode: str = "uni99") -> dict:
    """RecBole's SASRec with ``loss`` on ``source`` (``--inter F [--kcore K]`` or
    ``--sequences F``), evaluated by ``mode`` (a key of METRICS), results in ``out`` (JSON),
    as a table row. A run that finished under the same arguments is read back, one that
    stopped part-way resumes after its last epoch (the runner's ``resume.pt``)."""
    prefix, metrics = METRICS[mode]
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    subprocess.run([str(RECBOLE_PYTHON), str(ROOT / "benchmarks" / "recbole_runner.py"),
                    *source, "--loss", loss, "--mode", mode, "--epochs", str(epochs),
                    "--patience", str(patience), "--threads", str(threads), "--out", str(out),
                    *sasrec],
                   check=True, env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
                   cwd=out.parent)
    timings[f"recbole sasrec {loss}"] = time.perf_counter() - start
    result = json.loads(out.read_text())
    best = result["epochs"][result["best_epoch"] - 1]
    return {"model": f"RecBole SASRec {loss} ({mode})", "best_epoch": result["best_epoch"],
            "valid_mrr": best["mrr@100"] if mode == "uni99" else None,
            **{f"{prefix}_{ours}": result["test"][name] for ours, name in metrics.items()},
            "train_min": sum(e["train_seconds"] for e in result["epochs"]) / 60}
