"""Row-sparse embedding + lazy row-wise Adam against torch.optim.Adam."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from trainers.embedding import RowAdam, RowSparseEmbedding, build_optimizer


def _loss(emb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((emb.sum(dim=1) - target) ** 2).mean()


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_matches_torch_adam_when_every_row_is_touched(weight_decay):
    torch.manual_seed(0)
    table = RowSparseEmbedding(6, 4, init_std=0.5)
    reference = nn.Parameter(table.weight.detach().clone())
    rows = RowAdam([table], lr=0.01, weight_decay=weight_decay)
    adam = torch.optim.Adam([reference], lr=0.01, weight_decay=weight_decay)
    for step in range(5):
        # every row appears (some twice, so duplicate gradients are summed), in a new order
        ids = torch.cat([torch.randperm(6), torch.randint(0, 6, (6,))]).reshape(4, 3)
        target = torch.randn(4, 4)
        rows.zero_grad()
        _loss(table(ids), target).backward()
        rows.step()
        adam.zero_grad()
        _loss(reference[ids], target).backward()
        adam.step()
        assert torch.equal(table.weight, reference.detach()), f"step {step}"
    assert rows.state[0]["step"].tolist() == [5] * 6


def test_untouched_rows_stay_bitwise_unchanged_and_state_round_trips():
    torch.manual_seed(1)
    table = RowSparseEmbedding(10, 3, init_std=1.0)
    before = table.weight.detach().clone()
    opt = RowAdam([table], lr=0.1, weight_decay=0.1)
    ids = torch.tensor([[1, 3], [3, 7]])
    table(ids).pow(2).sum().backward()
    opt.step()
    touched = torch.zeros(10, dtype=torch.bool)
    touched[[1, 3, 7]] = True
    assert torch.equal(table.weight[~touched], before[~touched])
    assert not torch.equal(table.weight[touched], before[touched])
    assert opt.state[0]["step"].tolist() == [0, 1, 0, 1, 0, 0, 0, 1, 0, 0]
    assert table.touched == []

    # a fresh optimizer loaded from the state continues exactly like the original
    clone = RowSparseEmbedding(10, 3, init_std=1.0)
    clone.load_state_dict(table.state_dict())
    other = RowAdam([clone], lr=0.1, weight_decay=0.1)
    other.load_state_dict(opt.state_dict())
    for emb, o in ((table, opt), (clone, other)):
        emb(torch.tensor([3, 4])).sum().backward()
        o.step()
    assert torch.equal(table.weight, clone.weight)


def test_eval_lookup_records_nothing_and_accumulated_forwards_sum():
    table = RowSparseEmbedding(5, 2, init_std=1.0)
    with torch.no_grad():
        table(torch.tensor([1, 2]))
    table.eval()
    table(torch.tensor([1, 2]))
    assert table.touched == []
    table.train()
    for ids in (torch.tensor([1, 2]), torch.tensor([2, 4])):  # gradient accumulation
        table(ids).sum().backward()
    opt = RowAdam([table], lr=0.1, weight_decay=0.0)
    opt.step()
    assert opt.state[0]["step"].tolist() == [0, 1, 1, 0, 1]
    assert opt.state[0]["moments"][2, 0].tolist() == pytest.approx([0.2, 0.2])  # (1-β1)·(1+1)


def test_build_optimizer_splits_dense_and_row_sparse_parameters():
    model = nn.ModuleDict({"emb": RowSparseEmbedding(8, 2, init_std=0.1), "lin": nn.Linear(2, 1)})
    opt = build_optimizer(model, lr=0.05, l2=0.0)
    dense = opt.dense.param_groups[0]["params"]
    assert len(dense) == 2 and all(p.requires_grad for p in dense)
    assert opt.rows.tables == [model["emb"]]
    before = model["emb"].weight.clone()
    opt.zero_grad()
    model["lin"](model["emb"](torch.tensor([1, 5]))).sum().backward()
    opt.step()
    changed = (model["emb"].weight != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [1, 5]
    state = opt.state_dict()
    fresh = build_optimizer(model, lr=0.05, l2=0.0)
    fresh.load_state_dict(state)
    assert fresh.state_dict()["dense"]["state"][0]["step"] == state["dense"]["state"][0]["step"]
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer(nn.ReLU(), lr=0.1, l2=0.0)


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)  # same initial table everywhere
    table = RowSparseEmbedding(6, 2, init_std=1.0)
    opt = RowAdam([table], lr=0.1, weight_decay=0.0)
    ids = torch.tensor([[1, 2, 2], [4, 5, 5]])[rank]  # different rows, different counts
    (table(ids) * (rank + 1)).sum().backward()
    opt.step()
    torch.save({"weight": table.weight, "step": opt.state[0]["step"]}, f"{out_file}.{rank}")
    dist.destroy_process_group()


def test_processes_apply_the_same_averaged_row_updates(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2)
    a, b = (torch.load(tmp_path / f"out.{r}") for r in range(2))
    assert torch.equal(a["weight"], b["weight"])
    assert a["step"].tolist() == [0, 1, 1, 0, 1, 1]
    # single-process reference: the mean of both processes' gradients
    torch.manual_seed(0)
    table = RowSparseEmbedding(6, 2, init_std=1.0)
    opt = RowAdam([table], lr=0.1, weight_decay=0.0)
    loss = table(torch.tensor([1, 2, 2])).sum() / 2 + (table(torch.tensor([4, 5, 5])) * 2).sum() / 2
    loss.backward()
    opt.step()
    assert torch.allclose(a["weight"], table.weight)


def test_lookup_of_several_parts_dedupes_across_them():
    table = RowSparseEmbedding(9, 2, init_std=1.0)
    a, b = torch.tensor([[1, 4], [4, 8]]), torch.tensor([8, 2])
    out_a, out_b = table.lookup([a, b])
    assert torch.equal(out_a, table.weight[a]) and torch.equal(out_b, table.weight[b])
    (out_a.sum() + 2 * out_b.sum()).backward()
    (rows, leaf), = table.touched
    assert rows.tolist() == [1, 2, 4, 8]
    assert leaf.grad[:, 0].tolist() == [1.0, 2.0, 2.0, 3.0]  # row 8: once in a, once (x2) in b


def test_dense_updates_are_torch_adam_on_the_whole_table():
    """``train.embedding_updates: dense``: a row touched once keeps moving by its moments on
    the later steps, exactly as torch.optim.Adam moves an nn.Embedding (with λ + weight
    decay on every row); lazy updates leave it where its one step put it."""
    torch.manual_seed(0)
    table = RowSparseEmbedding(8, 3, init_std=0.1)
    reference = nn.Embedding(8, 3)
    reference.weight.data.copy_(table.weight.data)
    optimizer = build_optimizer(table, lr=0.01, l2=1e-3, weight_decay=1e-4,
                                embedding_updates="dense")
    adam = torch.optim.Adam(reference.parameters(), lr=0.01, weight_decay=1e-3 + 1e-4)
    lazy_table = RowSparseEmbedding(8, 3, init_std=0.1)
    lazy_table.weight.data.copy_(table.weight.data)
    lazy = build_optimizer(lazy_table, lr=0.01, l2=1e-3, weight_decay=1e-4)
    batches = [torch.tensor([5, 1]), torch.tensor([1, 2]), torch.tensor([2, 3])]
    for step, ids in enumerate(batches):
        for module, opt in ((table, optimizer), (reference, adam), (lazy_table, lazy)):
            opt.zero_grad()
            module(ids).pow(2).sum().backward()
            opt.step()
        if step == 0:
            after_touch = lazy_table.weight[5].clone()
    torch.testing.assert_close(table.weight.data, reference.weight.data, rtol=0, atol=0)
    assert torch.equal(lazy_table.weight[5], after_touch)  # lazy: only touched rows move
    assert not torch.equal(table.weight[5], after_touch)  # dense: momentum keeps moving it


def test_decoupled_weight_decay_is_adamw_without_biases_and_norms():
    """``train.weight_decay_mode: decoupled`` (BERT4Rec's optimiser): dense weights follow
    torch's AdamW, biases and LayerNorm gains are not decayed, and a row-sparse table's
    touched rows shrink by ``1 - lr·wd`` before their Adam step; the coupled default drives
    rows with tiny gradients to zero far faster (issue 23)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    reference = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    reference.load_state_dict(model.state_dict())
    ours = build_optimizer(model, lr=0.01, l2=0.0, weight_decay=0.1,
                           weight_decay_mode="decoupled")
    adamw = torch.optim.AdamW([{"params": [reference[0].weight], "weight_decay": 0.1},
                               {"params": [reference[0].bias, *reference[1].parameters()],
                                "weight_decay": 0.0}], lr=0.01)
    x = torch.randn(5, 3)
    for module, opt in ((model, ours), (reference, adamw)):
        for _ in range(3):
            opt.zero_grad()
            module(x).pow(2).sum().backward()
            opt.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    table = RowSparseEmbedding(6, 2, init_std=1.0)
    start = table.weight.detach().clone()
    rows = build_optimizer(table, lr=0.01, l2=0.0, weight_decay=0.1,
                           weight_decay_mode="decoupled")
    rows.zero_grad()
    (table(torch.tensor([2])) * 0.0).sum().backward()  # zero gradient: only the decay acts
    rows.step()
    torch.testing.assert_close(table.weight[2], start[2] * (1 - 0.01 * 0.1))
    assert torch.equal(table.weight[3], start[3])  # untouched rows stay

    def shrink(mode: str) -> float:  # a tiny gradient against weight decay 0.01 at lr 1e-4
        torch.manual_seed(0)
        emb = nn.Embedding(4, 8)
        nn.init.normal_(emb.weight, std=0.02)
        opt = build_optimizer(emb, lr=1e-4, l2=0.0, weight_decay=0.01, weight_decay_mode=mode)
        for _ in range(300):
            opt.zero_grad()
            (emb.weight.sum() * 1e-5).backward()
            opt.step()
        return float(emb.weight.detach().std())

    assert shrink("l2") < 0.5 * 0.02 < 0.019 < shrink("decoupled")
    from conf.loading import load_config

    assert load_config("beauty", "bert4rec").train.weight_decay_mode == "decoupled"
