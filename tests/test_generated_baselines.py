"""The baselines of DualRec's and DFAR's tables learn beyond popularity on generated data
shaped like the real logs (issue 23).

The data: ``sample-loo`` and ``sample-feedback`` as their presets generate them (Amazon
5-core reviews; a ratings CSV), cut to under 500 users after ingest. On the real Amazon Toys
every DualRec baseline reaches at least 1.5x popularity's HR@10 (DualRec Table 2: Caser 0.354,
GRU4Rec 0.469, SASRec 0.503 against popularity's 0.236); SASRec with torch's default
initialisation stayed at 1.2x on both the real file and these (issue 23). Each model trains
with the loop's own functions (trainers/local_fit.py) for a fixed budget, two models at a
time in worker processes, then its test lists are scored beside popularity's.

Caser needs 60 epochs of these 16 steps (1.20x popularity at 30, 1.31x at 60: the sample-loo
preset's old 30-epoch cap stopped it mid-climb); BERT4Rec needs its weight decay decoupled
(coupled to Adam, the paper's 0.01 shrank every row to ~0: 1.24x, decoupled 1.31x, at lr
1e-3 for 100 epochs; the paper's lr 1e-4 is for its 400k steps).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor

import pytest
import torch

from conf.loading import load_config
from trainers.local_fit import fit_locally

SMALL = {  # under 500 users after ingest's 5-core / the feedback filters
    "sample-loo": ["generate.users=540", "generate.items=650", "generate.rows=5400",
                   "generate.communities=10", "train.batch_size=32"],
    "sample-feedback": ["generate.users=2000", "generate.items=1000", "generate.rows=22000",
                        "generate.communities=10", "train.batch_size=64"],
}
LOO = [  # model, epochs, overrides
    # GRU4Rec: 1.300x at 45 epochs (valid HR@10 at 1.25-1.3x from epoch 5: its level here);
    # SASRec 1.69x at 12 (the torch-default-init test's own fit), DualRec 1.72x valid at 20
    ("sasrec", 12, []), ("dualrec", 20, []), ("gru4rec", 45, []), ("fmlp", 20, []),
    ("caser", 60, []),
    # the paper's lr 1e-4 needs its 400k steps; 16 steps an epoch here: RecBole's 1e-3
    ("bert4rec", 100, ["train.lr=0.001"]),
]
FEEDBACK = [  # model, epochs: the tower models sit at random AUC for their first epochs
    # (valid AUC: DFN 0.51 at 6, 0.60 at 8, 0.64 at 9; FeedRec 0.60 at 6, 0.71 at 9)
    ("dfar", 6), ("din", 6), ("dien", 6), ("dfn", 9), ("feedrec", 9), ("gru4rec", 6),
    ("sasrec", 6)]
TORCH_DEFAULT_INIT = ["model.params.init_std=null", "model.params.embed_init_std=0.1"]
# each fit's seconds on one core at the budgets above (the longest start first)
SECONDS = {"dfn": 70, "caser": 50, "fmlp": 50, "bert4rec": 45, "dfar": 30, "dien": 28,
           "feedrec": 25, "dualrec": 22, "din": 22}


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
    that takes the 0.02 start well past it."""
    default, popularity = fits["sample-loo", "sasrec", 12, tuple(TORCH_DEFAULT_INIT)].result()
    start, _ = fits["sample-loo", "sasrec", 12, ()].result()
    assert default["hr@10"] < 1.3 * popularity["hr@10"] <= start["hr@10"]
