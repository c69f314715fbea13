"""The RecBole peer's resume state (benchmarks/recbole_runner.py): RecBole itself lives in its
own venv, so these check the runner's pieces that decide and restore a resumed run; a resumed
RecBole run was checked against an uninterrupted one by hand (issue 23 note: equal losses and
test metrics)."""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks.recbole_runner import (finished_key, rng_states, run_key, save_atomically,
                                       set_rng_states)


def _args(**changes) -> argparse.Namespace:
    base = {"sequences": Path("/d/Toys.txt"), "inter": None, "loss": "BPR", "lr": 0.001,
            "epochs": 50, "threads": 1, "out": Path("/d/bpr/result.json"), "seed": 2024}
    return argparse.Namespace(**{**base, **changes})


def test_a_raised_cap_or_other_threads_resume_and_any_other_argument_starts_afresh():
    key = run_key(_args())
    assert run_key(_args(epochs=300, threads=2, out=Path("/e/result.json"))) == key
    assert run_key(_args(lr=0.01)) != key
    assert run_key(_args(loss="CE")) != key
    assert run_key(_args(sequences=Path("/d/Beauty.txt"))) != key


def test_saved_generators_give_the_draws_that_would_have_come_next(tmp_path):
    loader = SimpleNamespace(generator=torch.Generator().manual_seed(7))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    save_atomically(tmp_path / "resume.pt", {"rng": rng_states(loader)})
    expected = (random.random(), np.random.rand(), torch.rand(2),
                torch.randperm(5, generator=loader.generator))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    fresh = SimpleNamespace(generator=torch.Generator().manual_seed(9))
    set_rng_states(torch.load(tmp_path / "resume.pt", weights_only=False)["rng"], fresh)
    got = (random.random(), np.random.rand(), torch.rand(2),
           torch.randperm(5, generator=fresh.generator))
    assert got[:2] == expected[:2]
    assert torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])
    assert [p.name for p in tmp_path.iterdir()] == ["resume.pt"]  # no temporary left


def test_a_finished_result_names_its_run_and_an_unreadable_one_is_named(tmp_path):
    out = tmp_path / "result.json"
    assert finished_key(out) is None
    out.write_text('{"best_epoch": 3}')  # a result from before results carried their key
    assert finished_key(out) is None
    out.write_text('{"key": {"loss": "BPR"}, "best_epoch": 3}')
    assert finished_key(out) == {"loss": "BPR"}
    out.write_text('{"key": {"loss"')
    with pytest.raises(SystemExit, match=f"{out} is not a result JSON"):
        finished_key(out)
