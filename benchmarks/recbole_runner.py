"""RecBole 1.2.1's SASRec on a leave-one-out sequence file, timed per epoch (the peer of
benchmarks/recbole_sasrec.py). Runs inside RecBole's own venv, never in the project's:

    python -m venv .venv-recbole
    .venv-recbole/bin/pip install torch==2.13.0
    .venv-recbole/bin/pip install recbole==1.2.1 "numpy<2" "pandas<2.3" "scipy<1.14"
    .venv-recbole/bin/pip install "setuptools<70"  # RecBole's ray import needs pkg_resources;
    # one step with torch fails (torch 2.13 asks setuptools>=77.0.3): the warning is harmless
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 .venv-recbole/bin/python benchmarks/recbole_runner.py \
        --sequences data/bench/Beauty.txt --epochs 5 --out data/bench/recbole.json

Input: an S3-Rec style ``<Name>.txt`` (``uid i1 … iK`` in time order), the same sequences our
index trains on. It becomes RecBole atomic files (``timestamp`` = position, so RecBole's
time order equals the file's), split leave-one-out (``LS: valid_and_test``, time order)
as S3-Rec; SASRec with BPR and one uniform negative (RecBole's SASRec offers BPR or
full-softmax CE; BPR is the sampled objective nearest our BCE), one training sample per
prefix, as RecBole trains sequences (PROTOCOLS.md §5);
evaluation ``uni99`` (1 positive + 99 sampled negatives, RecBole resamples them at every
evaluation, see PROTOCOLS.md §1), HR@10 / NDCG@10 / MRR. Hyper-parameters follow our SASRec
preset where RecBole has the same knob (d, blocks, heads, dropout, L, lr, batch size).

Or an atomic file as it is, e.g. RecBole's own ML-100K (benchmarks/movielens_recbole.py):

    .venv-recbole/bin/python benchmarks/recbole_runner.py --inter data/raw/ml-100k/ml-100k.inter \
        --kcore 5 --loss CE --patience 10 --epochs 50 --out data/bench/ml-100k/recbole-ce.json

``--inter``: the file is copied as RecBole's dataset ``seqrec_input`` (a dataset named
``ml-100k`` would make RecBole read the copy in its own package instead of ``data_path``),
read with RecBole's default columns (user_id, item_id, timestamp) and, with ``--kcore K``,
RecBole's iterative K-core (``user_inter_num_interval`` / ``item_inter_num_interval``
``[K,inf)``), as our leave-one-out presets' ``dataset.kcore``. ``--loss CE`` is RecBole's
full-softmax cross-entropy (no training negatives), ``BPR`` one uniform negative.
Metrics: Hit, NDCG and MRR at 1, 5, 10 and 100 (``mrr@100`` over uni99's 100 candidates is
the untruncated MRR our tables give). ``--patience N`` stops after N epochs without a gain
of ``--valid-metric`` and tests the best epoch's weights on the test items (``uni99`` too).

Subnormal floats are flushed to zero, as in our own trainers (trainers/__init__.py), so
that neither side's epoch time carries that slowdown.

Output: JSON with seconds per training epoch, validation seconds and valid metrics per
epoch, the torch thread count, and ``best_epoch`` with the ``test`` metrics of that epoch's
weights, written atomically. Every epoch also saves ``resume.pt`` beside it (model, optimizer,
the epochs so far, the best weights, the random generators): a run stopped part-way resumes
after its last finished epoch when started again with the same arguments (the epoch cap and
threads may differ), and a finished one is not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

ATOMIC_NAME = "seqrec_input"  # never "ml-100k": RecBole would read its packaged copy instead


def write_atomic(sequences: Path, folder: Path, name: str) -> int:
    """``<folder>/<name>/<name>.inter`` from the sequence file; returns interactions."""
    out = folder / name
    out.mkdir(parents=True, exist_ok=True)
    rows = 0
    with sequences.open() as src, (out / f"{name}.inter").open("w") as dst:
        dst.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for line in src:
            uid, *items = line.split()
            for position, item in enumerate(items):
                dst.write(f"{uid}\t{item}\t{position}\n")
                rows += 1
    return rows


def copy_atomic(inter: Path, folder: Path) -> int:
    """``<folder>/<ATOMIC_NAME>/<ATOMIC_NAME>.inter``: the atomic file as it is; returns its
    data lines."""
    out = folder / ATOMIC_NAME
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(inter, out / f"{ATOMIC_NAME}.inter")
    with inter.open() as f:
        return sum(1 for _ in f) - 1


def run_key(args: argparse.Namespace) -> dict:
    """What makes a run this run: every argument but the epoch cap, the threads and the
    output (a run resumes under a raised cap and on other threads)."""
    return {k: str(v) for k, v in sorted(vars(args).items())
            if k not in ("epochs", "threads", "out")}


def rng_states(train) -> dict:
    """Python's, numpy's and torch's global generators (RecBole samples its negatives with
    them) and the training loader's own (its shuffle)."""
    import random

    import numpy as np
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(), "loader": train.generator.get_state()}


def set_rng_states(states: dict, train) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    train.generator.set_state(states["loader"])


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(temporary path)``, then the temporary renamed over ``path``: a reader never
    sees a half-written file."""
    partial = path.with_name(path.name + ".tmp")
    write(partial)
    os.replace(partial, path)


def save_atomically(path: Path, payload: dict) -> None:
    """``torch.save`` through :func:`write_atomically`."""
    import torch

    write_atomically(path, lambda partial: torch.save(payload, partial))


def finished_key(out: Path) -> dict | None:
    """The ``key`` a finished run wrote into ``out`` (None: no such file, or one from before
    results carried their key).

    Raises:
        SystemExit: ``out`` is not JSON (naming it: delete it to run again).
    """
    if not out.exists():
        return None
    try:
        return json.loads(out.read_text()).get("key")
    except json.JSONDecodeError as err:
        raise SystemExit(f"{out} is not a result JSON ({err}); delete it to run again") from err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sequences", type=Path, help="S3-Rec <Name>.txt")
    source.add_argument("--inter", type=Path, help="a RecBole atomic .inter, used as it is")
    parser.add_argument("--kcore", type=int, default=0, help="RecBole's iterative k-core")
    parser.add_argument("--loss", choices=["BPR", "CE"], default="BPR")
    parser.add_argument("--mode", default="uni99", help="RecBole eval_args mode")
    parser.add_argument("--patience", type=int, default=0,
                        help="stop after this many epochs without valid gain (0: never)")
    parser.add_argument("--valid-metric", default="mrr@100")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    # RecBole writes log_tensorboard/ into the working directory: make that the output's.
    args.out, args.sequences, args.inter = (
        p if p is None else p.resolve() for p in (args.out, args.sequences, args.inter))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    os.chdir(args.out.parent)
    key = run_key(args)
    if finished_key(args.out) == {**key, "epochs": args.epochs}:
        print(f"{args.out}: this run finished already", flush=True)
        return

    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    torch.set_flush_denormal(True)  # as trainers/__init__.py does for ours: same speed fix
    torch.set_num_threads(args.threads)
    folder = args.out.parent / "recbole_data"
    if args.inter is not None:
        name, rows = ATOMIC_NAME, copy_atomic(args.inter, folder)
    else:
        name = args.sequences.stem
        rows = write_atomic(args.sequences, folder, name)
    interval = f"[{args.kcore},inf)" if args.kcore else None
    config = Config(model="SASRec", dataset=name, config_dict={
        "data_path": str(folder), "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp", "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": args.max_len, "hidden_size": args.embed_dim,
        "inner_size": args.embed_dim, "n_layers": args.blocks, "n_heads": args.heads,
        "hidden_dropout_prob": args.dropout, "attn_dropout_prob": args.dropout,
        "loss_type": args.loss, "train_neg_sample_args": (
            {"distribution": "uniform", "sample_num": 1} if args.loss == "BPR" else None),
        "user_inter_num_interval": interval, "item_inter_num_interval": interval,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": args.mode,
                      "group_by": "user"},
        "metrics": ["Hit", "NDCG", "MRR"], "topk": [1, 5, 10, 100], "valid_metric": "Hit@10",
        "learning_rate": args.lr, "train_batch_size": args.batch_size,
        "eval_batch_size": 2048, "epochs": args.epochs, "seed": args.seed,
        "device": "cpu", "use_gpu": False, "show_progress": False, "save_dataset": False,
        "save_dataloaders": False, "checkpoint_dir": str(folder / "saved"),
        "log_wandb": False, "state": "WARNING",
    })
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = SASRec(config, train.dataset).to(config["device"])
    trainer = Trainer(config, model)
    epochs, best, waited = [], None, 0
    resume = args.out.parent / "resume.pt"
    if resume.exists():
        saved = torch.load(resume, weights_only=False)
        if saved["key"] == key:
            epochs, best, waited = saved["epochs"], saved["best"], saved["waited"]
            model.load_state_dict(saved["model"])
            trainer.optimizer.load_state_dict(saved["optimizer"])
            set_rng_states(saved["rng"], train)
            print(f"resumed after epoch {len(epochs)} from {resume}", flush=True)
    stopped = bool(args.patience) and waited >= args.patience
    for epoch in range(len(epochs), 0 if stopped else args.epochs):
        start = time.perf_counter()
        loss = trainer._train_epoch(train, epoch)
        trained = time.perf_counter()
        _, result = trainer._valid_epoch(valid)
        epochs.append({"epoch": epoch + 1, "train_seconds": trained - start,
                       "valid_seconds": time.perf_counter() - trained,
                       "train_loss": float(loss if not isinstance(loss, tuple) else sum(loss)),
                       **{k: float(v) for k, v in result.items()}})
        print(json.dumps(epochs[-1]), flush=True)
        if best is None or epochs[-1][args.valid_metric] > best[0]:
            best = (epochs[-1][args.valid_metric], epoch + 1,
                    {k: v.detach().clone() for k, v in model.state_dict().items()})
            waited = 0
        else:
            waited += 1
        save_atomically(resume, {
            "key": key, "epochs": epochs, "best": best, "waited": waited,
            "model": model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
            "rng": rng_states(train)})
        if args.patience and waited >= args.patience:
            break
    model.load_state_dict(best[2])
    start = time.perf_counter()
    tested = trainer.evaluate(test, load_best_model=False)
    result = json.dumps({
        "key": {**key, "epochs": args.epochs},
        "interactions": rows, "users": dataset.user_num - 1, "items": dataset.item_num - 1,
        "threads": args.threads, "loss": args.loss, "mode": args.mode, "epochs": epochs,
        "best_epoch": best[1], "test_seconds": time.perf_counter() - start,
        "test": {k: float(v) for k, v in tested.items()}}, indent=1)
    write_atomically(args.out, lambda partial: partial.write_text(result))


if __name__ == "__main__":
    main()
