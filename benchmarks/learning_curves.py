"""Learning curves of one model on a built index, against popularity (issue 23's diagnosis).

    .venv/bin/seqrec index --dataset sample-loo            # generate + ingest first
    .venv/bin/python benchmarks/learning_curves.py --dataset sample-loo --model sasrec \\
        --epochs 6 --set model.params.loss=ce --set train.embedding_updates=dense

Trains in this process (trainers/local_fit.py: the loop's own epoch function, no Ray, no
MLflow), prints the validation metrics after every epoch and seconds so far, then the test
metrics beside popularity's on the same lists. Measured on the Toys-shaped ``sample-loo``
(11,583 users, 9,637 items; 1 thread each, 2 runs at a time) while finding issue 23's cause:

* SASRec at torch's default init with 0.1 item rows (the earlier preset; ``--set
  model.params.init_std=null --set model.params.embed_init_std=0.1``): valid HR@10 0.133,
  0.193, 0.242, 0.260, 0.264, 0.264, 0.264, 0.265, 0.263; test 0.263, popularity 0.238.
  Unchanged by ``loss=ce`` (0.274 at epoch 3, train loss stuck at 8.95), dense Adam, lr
  0.01, dropout 0.5, DualRec's recipe (CE, weight decay 1e-4, clip 5), 0.02 item rows alone
  (0.273 at epoch 6) or 0.02 blocks alone (0.256 at epoch 6): it takes both.
* The preset now (blocks and rows N(0, 0.02²)): 0.246, 0.265, 0.267, 0.276, ... 0.387 at
  epoch 18, still rising; test 0.398 after 20 epochs. With ``loss=ce``: 0.402 at epoch 6.
* DualRec's preset: 0.238 at epoch 1, 0.371 at 10, 0.502 at 20; test 0.479 (2.0x
  popularity; the paper's Toys: 0.5145 against popularity's 0.236).
* GRU4Rec (TOP1) at lr 1e-3: 0.278 at epoch 6, then 0.268-0.276 to epoch 13, whatever the
  objective (``loss=ce``: 0.287 at 3, 0.281 at 11), dropout 0.5, weight decay 1e-4, 0.02
  rows, dense Adam or a shared input/output table; train loss 1.00 -> 0.95. At lr 3e-3:
  0.308 at epoch 26; at 1e-2 (its preset now): 0.325 at 30, 0.332 at 34, still rising.
  On ML-100K (``--dataset ml-100k``, 80 epochs): test 0.502 at 1e-3, 0.654 at 1e-2.
* gBCE with one negative set shared by the batch: GRU4Rec 0.093 (AUC 0.45) at epoch 30 with
  lazy Adam, 0.103 at 10 with dense; SASRec 0.097 at 5. With a set per prediction (now):
  SASRec 0.270 at 15 (test 0.259).
* Caser at lr 1e-2: train loss 1.20 -> 0.65 in 11 epochs while valid stays at 0.24-0.26
  (it memorises); 0.02 rows at 1e-3: 0.250 at epoch 7; ``train.l2`` 1e-4 or 1e-3: 0.253
  at epoch 16. Through the pipeline to early stopping: test 0.260 (1.09x), best epoch 19.
  On ML-100K it reaches 1.70x. Neither the objective nor P_u is the cause: ``loss=ce``
  0.257 at epoch 6 (train loss 9.16 -> 8.80); without P_u (``personalized=false``) 0.253
  at 7, and at lr 1e-2 it memorises as with P_u (train loss 1.36 -> 0.92 in 11 epochs,
  valid 0.247 -> 0.203). The paper's skip targets (each window's next T = 3 items, the
  preset now): valid 0.265 at 13, 0.298 at 40 (MRR 0.122 -> 0.154, still rising while
  train loss falls to 0.41); test 0.295 (1.24x) after 40 epochs. Through the pipeline:
  best valid MRR 0.1795 at epoch 77, still rising (T = 1: 0.1256 at 19, early stop).
"""

from __future__ import annotations

import argparse

from conf.loading import load_config
from trainers.local_fit import fit_locally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="sample-loo")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="config override key=value (repeatable)")
    args = parser.parse_args()
    cfg = load_config(args.dataset, args.model, "local", args.overrides)

    def report(row: dict) -> None:
        shown = ", ".join(f"{k} {row[k]:.3f}" for k in ("hr@10", "mrr", "auc") if k in row)
        print(f"epoch {row['epoch']}: loss {row['loss']:.4f}, valid {shown} "
              f"({row['seconds']:.0f} s)", flush=True)

    fit = fit_locally(cfg, args.epochs, report)
    keys = [k for k in ("hr@10", "mrr", "auc") if k in fit.test]
    print("| model | " + " | ".join(f"test {k}" for k in keys) + " |\n|---|"
          + "---|" * len(keys))
    for name, values in ((args.model, fit.test), ("popularity", fit.popularity)):
        print(f"| {name} | " + " | ".join(f"{values[k]:.4f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
