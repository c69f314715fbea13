"""The baselines of DualRec's and DFAR's tables learn beyond popularity on generated data
shaped like the real logs (issue 23).

The data: ``sample-loo`` and ``sample-feedback`` as their presets generate them (Amazon
5-core reviews; a ratings CSV), cut to under 500 users after ingest. On the real Amazon Toys
every DualRec baseline reaches at least 1.5x popularity's HR@10 (DualRec Table 2: Caser 0.354,
GRU4Rec 0.469, SASRec 0.503 against popularity's 0.236); SASRec with torch's default
initialisation stayed at 1.2x on both the real file and these (issue 23). Each model trains
with the loop's own functions (trainers/local_fit.py) for a fixed budget, two models at a
time in worker processes, then its test lists are scored beside popularity's.

Budgets hold across seeds (0, 1 and the default 2024; the comments below): a budget at the
floor for one seed fails for another. The small feedback log trains in batches of 32: every
tower model sits at random AUC for its first 500-1,000 steps, which batches of 64 (123 steps
an epoch) left to chance at 6 epochs (DFAR's test AUC 0.578 with the default seed, 0.458 when
dropout drew its masks another way; seed 3's valid AUC at epoch 6 was 0.453). GRU4Rec trains
at lr 3e-3 here: at its preset's 1e-2 its valid HR@10 levels off at 1.27-1.30x popularity
from epoch 5 (test 1.29x with seed 1 after 60 epochs); at 3e-3 it climbs to 1.50-1.56x.
BERT4Rec learns here only with BERT's two LayerNorms (its preset, the released code's):
with the paper's printed Section 3.4 and Eq. 7 (``embed_norm`` and ``head_norm`` false, as
the model was before) it reached 1.22-1.29x in 100 epochs with seeds 0, 1 and 2024, and no
lr, batch, mask ρ, weight decay or dropout tried did better than 1.28x.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor

import pytest
import torch

from conf.loading import load_config
from trainers.local_fit import fit_locally

# The preset's taste shares (main 0.47, drift 0.2) match the real Toys' counts on 11.6k users;
# on 500 users the same shares count for less: ranking by co-occurrence with the history gave
# 1.37x popularity's HR@10 (real Toys 1.72x), so this log was harder than the real one.
# benchmarks/order_signal.py on this log with the shares below: co-occurrence 1.77x, after
# the last item 1.33x (real 1.22x; 1.16-1.33x over transition shares 0.2-0.3 and seeds: ±0.02
# of HR on 490 test lists), after a random earlier item 1.05x (1.05x). Counts only, no model.
TASTE_AT_500 = ["generate.main_share=0.6", "generate.drift_share=0.25"]
SMALL = {  # under 500 users after ingest's 5-core / the feedback filters
    # 97 % of the leave-one-out histories fit in 20 slots (mean 9.1): the fixed-length models
    # (FMLP-Rec, BERT4Rec, DualRec, Caser's batches) then cost half of what L = 50 does
    "sample-loo": ["generate.users=540", "generate.items=650", "generate.rows=5400",
                   "generate.communities=10", "train.batch_size=32",
                   "index.sequence_max_len=20", *TASTE_AT_500],
    "sample-feedback": ["generate.users=2000", "generate.items=1000", "generate.rows=22000",
                        "generate.communities=10", "train.batch_size=32"],
}
# Test HR@10 over popularity's at these budgets, on this log with the generator's transitions,
# seeds 0 / 1 / 2024 (the default): SASRec 1.66 / 1.49 / 1.55x, DualRec 2.06 / 2.03 / 2.12x,
# GRU4Rec 1.58 / 1.56 / 1.65x, FMLP-Rec 1.78 / 1.72 / 1.81x, Caser 1.46 / 1.41 / 1.34x,
# BERT4Rec 1.60 / 1.55 / 1.46x; SASRec at torch's default init 1.15 / 1.22x (seeds 0 / 1).
# On the log before them (taste only), seeds 0 / 1 / 2024: SASRec
# 1.46 / 1.66 / 1.56x, DualRec 1.64 / 1.56 / 1.67x, GRU4Rec 1.56 / 1.52 / 1.54x, FMLP-Rec
# 1.36 / 1.49 / 1.49x, Caser 1.50 / 1.47 / 1.44x (one sampled item a target: 1.45 / 1.50 /
# 1.39x; three summed: 1.38 / 1.40 / 1.34x), BERT4Rec 1.57 / 1.59 / 1.60x (its preset's
# lr warmup over 100 steps; the model before, without BERT's LayerNorms: 1.22 / 1.29 / 1.29x
# at 100 epochs)
LOO = [  # model, epochs, overrides
    ("sasrec", 12, []), ("dualrec", 15, []), ("gru4rec", 30, ["train.lr=0.003"]),
    ("fmlp", 20, []), ("caser", 60, []),
    # the paper's lr 1e-4 needs its 400k steps; 16 steps an epoch here: RecBole's 1e-3
    ("bert4rec", 60, ["train.lr=0.001"]),
]
# Test AUC above max(popularity, 0.5) = 0.5 with the same seeds: DFAR +0.13 / +0.16 / +0.09,
# DIN +0.14 / +0.18 / +0.15, DIEN +0.21 / +0.23 / +0.21 (6 epochs with uniform L_aux
# negatives: +0.16 / +0.19 / +0.18), DFN +0.15 / +0.15 / +0.18, FeedRec +0.14 / +0.15 /
# +0.17, GRU4Rec +0.16 / +0.19 / +0.17, SASRec +0.17 / +0.14 / +0.12
FEEDBACK = [  # model, epochs
    ("dfar", 6), ("din", 6), ("dien", 4), ("dfn", 7), ("feedrec", 6), ("gru4rec", 4),
    ("sasrec", 4)]
TORCH_DEFAULT_INIT = ["model.params.init_std=null", "model.params.embed_init_std=0.1"]
# each fit's seconds on one core at the budgets above (the longest start first)
SECONDS = {"dfn": 60, "dien": 30, "dfar": 37, "bert4rec": 22, "feedrec": 24, "din": 24,
           "caser": 22, "fmlp": 20, "dualrec": 10}


@pytest.fixture(scope="module")
def indices(tmp_path_factory, spark) -> dict[str, list[str]]:
    """Both small indices, built once by the real generate, ingest and index stages; the
    overrides that point a config at each."""
    from spark_jobs.index import run_index
    from spark_jobs.ingest import run_ingest
    from spark_jobs.sample_data import generate

    root = tmp_path_factory.mktemp("generated")
    out = {}
    for dataset, overrides in SMALL.items():
        where = root / dataset
        out[dataset] = [f"paths.raw_dir={where}/raw", f"paths.work_dir={where}/work",
                        "spark.master=local[2]", "spark.shuffle_partitions=4", *overrides]
        cfg = load_config(dataset, "sasrec", "local", out[dataset])
        generate(cfg)
        run_ingest(cfg)
        manifest = run_index(cfg)["manifest"]
        assert manifest["num_users"] <= 500, (dataset, manifest["num_users"])
    return out


def _fit(dataset: str, model: str, epochs: int, overrides: list[str]) -> tuple[dict, dict]:
    """One model trained in a worker process with one torch thread (tiny tensors: faster than
    two); its test metrics and popularity's on the same lists."""
    torch.set_num_threads(1)
    fit = fit_locally(load_config(dataset, model, "local", overrides), epochs)
    return fit.test, fit.popularity


@pytest.fixture(scope="module")
def fits(indices) -> dict[tuple, Future]:
    """Every fit of the module, two at a time (one a core) in spawned worker processes, the
    longest first: {(dataset, model, epochs, extra overrides): its ``_fit`` future}."""
    cases = [("sample-loo", model, epochs, tuple(extra)) for model, epochs, extra in LOO]
    cases += [("sample-feedback", model, epochs, ()) for model, epochs in FEEDBACK]
    cases.append(("sample-loo", "sasrec", 12, tuple(TORCH_DEFAULT_INIT)))
    cases.sort(key=lambda case: -SECONDS.get(case[1], 10))
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield {(dataset, model, epochs, tuple(extra)): pool.submit(
            _fit, dataset, model, epochs, [*indices[dataset], *extra])
            for dataset, model, epochs, extra in cases}


@pytest.mark.parametrize("model, epochs, overrides", LOO)
def test_dualrec_baselines_beat_popularity_by_a_third(fits, model, epochs, overrides):
    test, popularity = fits["sample-loo", model, epochs, tuple(overrides)].result()
    assert test["hr@10"] >= 1.3 * popularity["hr@10"], (test, popularity)


@pytest.mark.parametrize("model, epochs", FEEDBACK)
def test_dfar_baselines_beat_popularity_auc(fits, model, epochs):
    """By 0.05 over popularity and over random: popularity's AUC on these lists is below
    random (0.456), so a model that ranks nothing (DFN at 0.513 after 6 epochs) would pass
    the margin over popularity alone."""
    test, popularity = fits["sample-feedback", model, epochs, ()].result()
    assert test["auc"] >= max(popularity["auc"], 0.5) + 0.05, (test, popularity)


def test_sasrec_with_torchs_default_init_stays_near_popularity(fits):
    """The cause issue 23 found: the same SASRec started at torch's defaults (and the 0.1
    item rows of the earlier preset) does not reach 1.3x popularity on the same budget
    that takes the 0.02 start well past it (seeds 0 / 1 / 2024: 1.19 / 1.16 / 1.25x)."""
    default, popularity = fits["sample-loo", "sasrec", 12, tuple(TORCH_DEFAULT_INIT)].result()
    start, _ = fits["sample-loo", "sasrec", 12, ()].result()
    assert default["hr@10"] < 1.3 * popularity["hr@10"] <= start["hr@10"]
