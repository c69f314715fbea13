"""The declared model interface (trainers/registry.py) of every registered model, on real
batches of each protocol that can feed it (tests/tiny_index.py indexes, batched as training
batches them): nothing is kept on the model between ``forward`` and ``loss``, and a
next-item model's scores are its ``encode_users`` states against its ``item_table``."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch

import tiny_index
from conf.loading import load_config
from trainers.models.item_scoring import all_item_scores, candidate_scores
from trainers.protocols import PROTOCOLS, protocol_named
from trainers.registry import (Batch, NextItemRecommender, build_model, model_class,
                               model_names, variable_length)
from trainers.split_data import declared_inputs, load_split_data

NEXT_ITEM = {"sasrec", "gru4rec", "caser", "bert4rec", "fmlp", "dualrec", "dual_gru4rec",
             "dual_fmlp", "svdpp"}
TEST_MODELS = {"test_tiny", "test_tiny_seq"}  # tests/tiny_index.py, no preset
# Every model of the product (trainers/models/), and the tiny test models; other test
# modules register models of their own, which the order of collection may or may not show.
MODELS = sorted(n for n in model_names()
                if model_class(n).__module__.startswith("trainers.models.")) + sorted(TEST_MODELS)
ROWS = 8  # rows per batch


def fed_pairs(names) -> list[tuple[str, str]]:
    """(model, protocol) for every protocol whose index feeds the model's required inputs."""
    return [(name, protocol) for name in names for protocol in PROTOCOLS
            if not protocol_named(protocol).unfed(declared_inputs(model_class(name))[0])]


def params_of(name: str) -> dict:
    if name in TEST_MODELS:
        return {"dim": 4}
    return dict(load_config("sample", name, "local", []).model.params)


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    """``(model, protocol) -> (model in train mode, batch A, batch B)``: two train batches of
    the protocol's tiny index with the fields the model reads, built as training builds
    them (histories cut for a ``variable_length`` model)."""
    root = tmp_path_factory.mktemp("indexes")

    @cache
    def index(protocol: str) -> Path:
        work = root / protocol
        if protocol == "slices":
            tiny_index.write_index(work / "work")
        else:
            tiny_index.write_sequence_index(work / "work", protocol)
        return work

    @cache
    def split_data(protocol: str, required: frozenset[str], optional: frozenset[str]):
        cfg = tiny_index.tiny_config(index(protocol), ["index.sequence_max_len=10"])
        return load_split_data(cfg, required, ("train",), "cpu", optional)

    def make(name: str, protocol: str) -> tuple[torch.nn.Module, Batch, Batch]:
        data = split_data(protocol, *declared_inputs(model_class(name)))
        torch.manual_seed(0)
        model = build_model(name, params_of(name), data.sizes).train()
        data.builder.trim_padding = variable_length(model)
        train = data.splits["train"]
        a, b = (data.builder.rows(train, torch.arange(lo, lo + ROWS)) for lo in (0, ROWS))
        return model, a, b

    return make


@pytest.mark.parametrize("name, protocol", fed_pairs(MODELS))
def test_loss_reads_only_its_own_forward_output(batches, name, protocol):
    """forward(A), forward(B), loss(output of A, A) is A's loss: no state on the model."""
    model, a, b = batches(name, protocol)
    torch.manual_seed(1)  # the same dropout and sampling draws for A both times
    expected = model.loss(model(a), a)
    torch.manual_seed(1)
    out_a = model(a)
    model(b)
    torch.testing.assert_close(model.loss(out_a, a), expected)
    assert model.regularization().ndim == 0


@pytest.mark.parametrize("name, protocol", fed_pairs(sorted(NEXT_ITEM)))
def test_next_item_scores_are_user_states_against_the_item_table(batches, name, protocol):
    model, batch, _ = batches(name, protocol)
    model.eval()
    with torch.no_grad():
        table, bias = model.item_table()
        assert table.shape[0] == tiny_index.NUM_ITEMS + 1
        assert bias is None or bias.shape == (tiny_index.NUM_ITEMS + 1,)
        states = model.encode_users(batch)  # (B, d)
        scores = candidate_scores(states, table, bias, batch["items"])
        torch.testing.assert_close(scores, model(batch).scores, rtol=1e-5, atol=1e-6)
        every = all_item_scores(states, table, bias)  # (B, I): column k-1 is item k
        torch.testing.assert_close(every.gather(1, batch["items"] - 1), scores)


def test_every_next_item_model_declares_the_split(batches):
    first_protocol = dict(reversed(fed_pairs(MODELS)))  # model -> a protocol it takes
    found = {name for name, protocol in first_protocol.items()
             if isinstance(batches(name, protocol)[0], NextItemRecommender)}
    assert found == NEXT_ITEM
