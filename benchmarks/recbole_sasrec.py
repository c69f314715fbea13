"""Our SASRec against RecBole 1.2.1's SASRec on the same Beauty-sized leave-one-out data.

One run, one table (issue 13's benchmark; PROTOCOLS.md §5 says how to compare them):

1. ``seqrec generate`` writes a Beauty-sized S3-Rec ``Bench.txt`` (22k users, 12k items,
   ~200k interactions after its 5-core cut, no malformed lines), then our Spark ingest and
   the ``leave_one_out`` index run on it exactly as ``seqrec pipeline`` would.
2. Ours: SASRec trained in this process through the real loop code
   (``trainers.split_data.load_split_data``, ``trainers.train.train_epoch``, ``validate``:
   batch gathering, forward, loss, backward, row-sparse Adam), one training row per user
   (the index's cut n-3) with every history position as a target, valid HR@10 / MRR on the
   fixed 99 negatives after each epoch.
3. RecBole: benchmarks/recbole_runner.py in RecBole's own venv (``.venv-recbole``; the
   runner's docstring has the install line) on the same ``Bench.txt``: one training sample
   per prefix, BPR with one uniform negative, uni99 validation resampled each epoch.

Both use d = 64, 2 blocks, 1 head, dropout 0.5, L = 50, lr 1e-3, batch 256 and the same torch
thread count. Per-epoch seconds are a side figure (the two define an epoch differently); the
headline is the wall time each needs to reach the same valid HR@10 (the lower of the two
best values), and the HR@10 each has after the same number of epochs.

Run: .venv/bin/python benchmarks/recbole_sasrec.py [--epochs 5] [--our-epochs 20]
     [--threads 2] [--work data/bench/recbole] [--batch-order by_length|shuffled]
     [--our-batch-size 256] [--recbole-result data/bench/recbole/recbole.json]
(``--batch-order``: ours batches histories of similar length and cuts each batch to its
longest, ``train.batch_order: by_length``, by default; ``shuffled`` mixes lengths, so its
batches, cut the same way, run close to L.
``--recbole-result``: reuse an earlier RecBole run on the same generated data.)
(``--our-batch-size``: our batches count users, each training every position of its
history, so ours takes ~7x fewer steps per epoch than RecBole, whose 256 counts prefixes;
measured: 64 or 128 users a batch did not raise our HR@10 after 4 epochs.)
(``--our-epochs``: ours may run more epochs than RecBole's ``--epochs``, since an epoch of ours
costs a fraction of one of RecBole's; the "after the same number of epochs" line compares
epoch ``--epochs`` of both.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf.loading import load_config  # noqa: E402
from trainers.embedding import build_optimizer  # noqa: E402
from trainers.registry import build_model, model_class, variable_length  # noqa: E402
from trainers.split_data import declared_inputs, load_split_data  # noqa: E402
from trainers.train import seed_everything, train_epoch, validate, worker_rows  # noqa: E402

RECBOLE_PYTHON = ROOT / ".venv-recbole" / "bin" / "python"
SASREC = {"embed_dim": 64, "num_blocks": 2, "num_heads": 1, "dropout": 0.5}


def config(work: Path, batch_order: str, batch_size: int, seed: int):
    return load_config("sample-loo", "sasrec", "local", [
        f"paths.raw_dir={work}/raw", f"paths.work_dir={work}/work",
        f"tracking.uri=sqlite:///{work}/mlflow.db", f"tracking.artifact_location={work}/mla",
        "dataset.name=bench", "dataset.format=s3rec", "dataset.files=[Bench.txt]",
        "dataset.behaviors=[interaction]", "dataset.start=null", "dataset.last_day=null",
        "dataset.rating_scale=null", "dataset.positive_min_rating=null",
        "generate.rows=240000", "generate.users=22363", "generate.items=12101",
        "generate.malformed_rate=0", f"train.batch_size={batch_size}", "train.lr=0.001",
        "train.eval_batch_size=1024", f"train.batch_order={batch_order}", f"train.seed={seed}",
        *(f"model.params.{k}={v}" for k, v in SASREC.items()),
    ])


def ours(cfg, epochs: int) -> list[dict]:
    required, optional = declared_inputs(model_class("sasrec"))
    data = load_split_data(cfg, required, ("train", "valid"), "cpu", optional)
    seed_everything(cfg.train.seed)
    model = build_model("sasrec", dict(cfg.model.params), data.sizes)
    data.builder.trim_padding = variable_length(model)
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.l2)
    sampler = data.negative_sampler(cfg)
    out = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        train = data.train_epoch_samples(cfg, epoch, sampler)
        rows = worker_rows(data.builder, train, cfg.train, epoch, 0, 1, "cpu")
        loss, _ = train_epoch(model, model, optimizer, data.builder, train, rows,
                              cfg.train.batch_size, cfg.train.l2, 1, 0, epoch, None)
        trained = time.perf_counter()
        valid = validate(model, data.builder, data.splits["valid"], cfg.train.eval_batch_size,
                         0, 1, data.protocol)
        out.append({"epoch": epoch, "train_seconds": trained - start,
                    "valid_seconds": time.perf_counter() - trained, "train_loss": loss,
                    "hit@10": valid["hr@10"], "mrr": valid["mrr"],
                    "train_rows": len(train)})
        print(json.dumps(out[-1]), flush=True)
    return out


def mean_epochs(runs: list[list[dict]]) -> list[dict]:
    """Per epoch, the mean of each number over the seeds' runs, and HR@10's min and max."""
    out = []
    for epochs in zip(*runs):
        row = {k: sum(e[k] for e in epochs) / len(epochs) for k in epochs[0]}
        row["epoch"] = epochs[0]["epoch"]
        row["hit@10_min"] = min(e["hit@10"] for e in epochs)
        row["hit@10_max"] = max(e["hit@10"] for e in epochs)
        out.append(row)
    return out


def seconds_to(epochs: list[dict], target: float) -> float | None:
    """Cumulative training seconds until valid HR@10 first reaches ``target``."""
    total = 0.0
    for e in epochs:
        total += e["train_seconds"]
        if e["hit@10"] >= target:
            return total
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="RecBole's epochs")
    parser.add_argument("--our-epochs", type=int, default=None,
                        help="our epochs (default: --epochs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench" / "recbole")
    parser.add_argument("--batch-order", choices=["shuffled", "by_length"], default="by_length",
                        help="our train.batch_order (by_length: batches cut to their longest "
                             "history; shuffled: mixed lengths, batches near L = 50)")
    parser.add_argument("--our-batch-size", type=int, default=256,
                        help="our train.batch_size, in users (each trains every position of "
                             "its history); RecBole's 256 counts prefixes")
    parser.add_argument("--seeds", default="2024",
                        help="comma-separated train.seed values: ours trains once per seed "
                             "(same data, same lists) and the table gives the mean HR@10 and "
                             "its spread, so a difference can be read against seed noise; "
                             "RecBole runs once, with the first seed")
    parser.add_argument("--recbole-result", type=Path, default=None,
                        help="reuse RecBole's JSON of an earlier run on the same data instead "
                             "of training it again (its seconds were measured then)")
    args = parser.parse_args()
    if args.recbole_result is None and not RECBOLE_PYTHON.exists():
        sys.exit(f"RecBole's venv is missing: see benchmarks/recbole_runner.py for the "
                 f"install line ({RECBOLE_PYTHON})")
    torch.set_num_threads(args.threads)
    seeds = [int(x) for x in args.seeds.split(",")]
    cfg = config(args.work.resolve(), args.batch_order, args.our_batch_size, seeds[0])

    from spark_jobs.index import run_index
    from spark_jobs.ingest import run_ingest
    from spark_jobs.sample_data import generate, why_generate

    if why_generate(cfg) is not None:
        generate(cfg)
    run_ingest(cfg)
    index = run_index(cfg)
    manifest = index["manifest"]
    print(f"data: {manifest['num_users']} users, {manifest['num_items']} items, "
          f"index counts {manifest['counts']}", flush=True)

    runs = [ours(config(args.work.resolve(), args.batch_order, args.our_batch_size, seed),
                 args.our_epochs or args.epochs) for seed in seeds]
    mine = mean_epochs(runs)
    recbole_out = args.recbole_result or args.work / "recbole.json"
    if args.recbole_result is None:
        subprocess.run([str(RECBOLE_PYTHON), str(ROOT / "benchmarks" / "recbole_runner.py"),
                        "--sequences", str(Path(cfg.paths.raw_dir) / "Bench.txt"),
                        "--epochs", str(args.epochs), "--out", str(recbole_out),
                        "--threads", str(args.threads), "--embed-dim", "64", "--blocks", "2",
                        "--heads", "1", "--dropout", "0.5", "--max-len", "50", "--lr", "0.001",
                        "--batch-size", "256", "--seed", str(seeds[0])],
                       check=True, env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
                       cwd=args.work)
    theirs = json.loads(recbole_out.read_text())["epochs"]

    print(f"\n| epoch | ours train s | ours valid s | ours HR@10 (mean of {len(seeds)} "
          f"seeds) | min - max | RecBole train s | RecBole valid s | RecBole HR@10 | "
          f"speed-up per epoch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, a in enumerate(mine):
        b = theirs[i] if i < len(theirs) else None
        theirs_cells = (f"{b['train_seconds']:.1f} | {b['valid_seconds']:.1f} | "
                        f"{b['hit@10']:.4f} | {b['train_seconds'] / a['train_seconds']:.1f}x"
                        if b else " | | | ")
        print(f"| {a['epoch']} | {a['train_seconds']:.1f} | {a['valid_seconds']:.1f} | "
              f"{a['hit@10']:.4f} | {a['hit@10_min']:.4f} - {a['hit@10_max']:.4f} | "
              f"{theirs_cells} |")
    target = min(max(e["hit@10"] for e in mine), max(e["hit@10"] for e in theirs))
    a, b = seconds_to(mine, target), seconds_to(theirs, target)
    same = min(len(theirs), len(mine)) - 1
    print(f"\nvalid HR@10 target {target:.4f} (the lower best): ours {a:.1f} s, "
          f"RecBole {b:.1f} s of training -> {b / a:.1f}x; after {same + 1} epochs each: "
          f"ours {mine[same]['hit@10']:.4f}, RecBole {theirs[same]['hit@10']:.4f} "
          f"(difference {mine[same]['hit@10'] - theirs[same]['hit@10']:+.4f}); "
          f"{args.threads} torch threads")


if __name__ == "__main__":
    main()
