"""Learning curves of one model on a built index, against popularity (issue 23's diagnosis).

    .venv/bin/seqrec index --dataset sample-loo            # generate + ingest first
    .venv/bin/python benchmarks/learning_curves.py --dataset sample-loo --model sasrec \\
        --epochs 6 --set model.params.loss=ce --set train.embedding_updates=dense

Trains in this process with the loop's own epoch function (no Ray, no MLflow), prints the
validation HR@10 and MRR after every epoch and seconds so far, then the test HR@10 and MRR
beside popularity's on the same lists. Measured with a first draft of this driver on the
Toys-shaped ``sample-loo`` (SASRec, preset settings, 2 busy cores): valid HR@10 0.142,
0.196, 0.239, 0.257, 0.265, 0.264; test 0.263 against popularity's 0.238; ``loss=ce``
0.199, 0.262, 0.271, 0.272; ``embedding_updates=dense`` 0.146, 0.207, 0.246, 0.260.
"""

from __future__ import annotations

import argparse
import time

from conf.loading import load_config
from trainers.embedding import build_optimizer
from trainers.evaluate import score_lists
from trainers.registry import build_model, model_class
from trainers.split_data import declared_inputs, load_split_data
from trainers.train import seed_everything, train_epoch, worker_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="sample-loo")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="config override key=value (repeatable)")
    args = parser.parse_args()
    cfg = load_config(args.dataset, args.model, "local", args.overrides)
    required, optional = declared_inputs(model_class(args.model))
    data = load_split_data(cfg, required, ("train", "valid", "test"), "cpu", optional)
    seed_everything(cfg.train.seed)
    model = build_model(args.model, dict(cfg.model.params), data.sizes)
    tc = cfg.train
    optimizer = build_optimizer(model, tc.lr, tc.l2, tc.weight_decay, tc.embedding_updates)
    sampler = data.negative_sampler(cfg)
    protocol = data.protocol

    def metrics(split: str, scorer) -> dict[str, float]:
        return score_lists(scorer, data.builder, data.splits[split], tc.eval_batch_size,
                           protocol)

    def ours(batch, cut, items):
        return model(batch).scores

    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        seed_everything(tc.seed + 1_000 * epoch)
        train = data.train_epoch_samples(cfg, epoch, sampler)
        rows = worker_rows(data.builder, train, tc, epoch, 0, 1, "cpu")
        loss, _ = train_epoch(model, model, optimizer, data.builder, train, rows,
                              tc.batch_size, tc.l2, 1, 0, epoch, tc.grad_clip)
        model.eval()
        valid = metrics("valid", ours)
        model.train()
        print(f"epoch {epoch}: loss {loss:.4f}, valid HR@10 {valid['hr@10']:.3f}, "
              f"MRR {valid['mrr']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    test = metrics("test", ours)
    popularity = metrics("test", protocol.popularity_scorer(data.popularity()))
    print(f"| model | test HR@10 | test MRR |\n|---|---|---|\n"
          f"| {args.model} | {test['hr@10']:.4f} | {test['mrr']:.4f} |\n"
          f"| popularity | {popularity['hr@10']:.4f} | {popularity['mrr']:.4f} |")


if __name__ == "__main__":
    main()
