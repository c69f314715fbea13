"""Config composition and validation: presets, overrides, errors that name key and file."""

from __future__ import annotations

import datetime as dt

import pytest

from conf.loading import ConfigError, available, load_config, section_hash


def test_every_dataset_preset_loads_with_paper_facts():
    facts = {"taobao": (1, 9), "tmall": (15, 13), "ccmr": (90, 41), "sample": (1, 9)}
    assert set(available("datasets")) == set(facts)
    for name, (slice_days, num_slices) in facts.items():
        cfg = load_config(dataset=name)
        assert (cfg.dataset.slice_days, cfg.dataset.num_slices) == (slice_days, num_slices)
        assert cfg.paths.work_dir.endswith(f"/{name}")  # {dataset} expanded
    taobao = load_config(dataset="taobao").dataset
    assert taobao.timezone == "Asia/Shanghai" and taobao.behaviors == ["pv"]
    assert (taobao.start, taobao.end) == (dt.date(2017, 11, 25), dt.date(2017, 12, 4))
    ccmr = load_config(dataset="ccmr").dataset
    assert (ccmr.positive_min_rating, ccmr.negative_max_rating) == (4, 3)


def test_overrides_are_typed_and_applied_last():
    cfg = load_config(overrides=["index.set_size=7", "train.use_gpu=true",
                                 "dataset.behaviors=[pv, buy]", "index.max_eval_users=null"])
    assert cfg.index.set_size == 7 and cfg.train.use_gpu is True
    assert cfg.dataset.behaviors == ["pv", "buy"] and cfg.index.max_eval_users is None


def test_unknown_key_names_key_and_file(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text("index:\n  set_sise: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(config_file=extra)
    assert "index.set_sise" in str(err.value) and str(extra) in str(err.value)


def test_wrong_type_names_key_and_override():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["train.batch_size=many"])
    assert "train.batch_size" in str(err.value) and "override 'train.batch_size=many'" in str(
        err.value
    )


def test_bad_values_rejected():
    with pytest.raises(ConfigError, match="dataset.timezone"):
        load_config(overrides=["dataset.timezone=Mars/Olympus"])
    with pytest.raises(ConfigError, match="index.set_size"):
        load_config(overrides=["index.set_size=0"])
    with pytest.raises(ConfigError, match="negative_max_rating must be below"):
        load_config(dataset="ccmr", overrides=["dataset.negative_max_rating=4"])
    with pytest.raises(ConfigError, match="unknown dataset preset 'nope'"):
        load_config(dataset="nope")
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config(overrides=["index.set_size"])


def test_section_hash_tracks_only_named_sections():
    base = load_config()
    assert section_hash(base, "dataset") == section_hash(load_config(), "dataset")
    lr = load_config(overrides=["train.lr=0.5"])
    assert section_hash(base, "dataset", "index") == section_hash(lr, "dataset", "index")
    assert section_hash(base, "train") != section_hash(lr, "train")


def test_environment_variables_expand(monkeypatch):
    monkeypatch.setenv("SEQREC_SPARK_MASTER", "spark://head:7077")
    assert load_config(profile="cluster").spark.master == "spark://head:7077"
    monkeypatch.delenv("SEQREC_SPARK_MASTER")
    assert load_config(profile="cluster").spark.master == "spark://127.0.0.1:7077"


def test_slice_bounds_are_local_midnights_across_a_dst_change():
    cfg = load_config("sample", overrides=["dataset.timezone=Europe/Berlin",
                                           "dataset.start=2017-03-24", "dataset.num_slices=4"])
    bounds = cfg.dataset.slice_bounds()
    # 2017-03-24 00:00 CET is 23:00 UTC the day before; clocks go forward on 03-26.
    assert bounds[0] == int(dt.datetime(2017, 3, 23, 23, tzinfo=dt.timezone.utc).timestamp())
    assert [b - a for a, b in zip(bounds, bounds[1:])] == [86400, 86400, 82800, 86400]
