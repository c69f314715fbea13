"""Every embedding table of every registered model starts at the model's init std (issue 23):
a position or label table left at PyTorch's N(0, 1) is ~10x the item rows (std 0.1), so
position drowns the input and DFAR's feedback label is ~1 % of its variance."""

from __future__ import annotations

import pytest
import torch

from conf.loading import load_config
from trainers.embedding import RowSparseEmbedding
from trainers.registry import DataSizes, build_model, model_names

SIZES = DataSizes(num_users=50, num_items=400, history_slices=3, set_size=4, sequence_len=20)
TEST_MODELS = {"test_tiny", "test_tiny_seq"}  # tests/tiny_index.py, no preset


def init_std(params: dict) -> float:
    """The std a model's preset starts its item rows at (``embed_init_std``, or ``init_std``
    for the models initialised as their released Transformer codes)."""
    return params["embed_init_std"] if "embed_init_std" in params else params["init_std"]


def tables(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every embedding table's weight, padding rows (all zero) left out."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Embedding, RowSparseEmbedding)):
            weight = module.weight.detach()
            out[name] = weight[weight.abs().sum(dim=1) > 0]
    return out


@pytest.mark.parametrize("name, overrides", [
    *(pytest.param(name, {}, id=name) for name in sorted(model_names()) if name not in TEST_MODELS),
    pytest.param("dfar", {"positions": "learned"}, id="dfar-learned-positions"),
])
def test_every_embedding_table_starts_at_the_models_init_std(name, overrides):
    params = {**load_config("sample", name, "local", []).model.params, **overrides}
    torch.manual_seed(0)
    model = build_model(name, params, SIZES)
    std = init_std(params)
    found = tables(model)
    assert found, f"{name} has no embedding table"
    for table, weight in found.items():
        # 2 label rows of d = 16 hold 32 values: their std is within ~15 % of the truth
        assert 0.6 * std < float(weight.std()) < 1.6 * std, (name, table, float(weight.std()))
    if overrides:
        assert "embed.position" in found
