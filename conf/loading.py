"""Compose the YAML presets under ``conf/`` into one validated :class:`PipelineConfig`.

Order (later wins): ``defaults.yaml`` < ``profiles/<profile>.yaml`` < the dataset layer <
``models/<model>.yaml`` < the dataset's ``table.params`` (what a paper sets for every model of
its table, applied to the models that have that parameter) < an optional user file <
command-line overrides (``key.sub=value``).
The dataset layer is ``datasets/<dataset>.yaml`` for a preset name, the file itself when
``dataset`` is a YAML path (a user's own dataset needs no file in the repo), and nothing when
the user file defines ``dataset.name: <dataset>`` itself. Every leaf remembers which file set
it, so a validation error names both key and file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from conf.schema import PipelineConfig, TrainConfig

CONF_DIR = Path(__file__).resolve().parent


class ConfigError(ValueError):
    """A config could not be composed or validated; the message names key and source."""


def available(kind: str) -> list[str]:
    """Names of the presets of one kind: ``datasets``, ``models`` or ``profiles``."""
    return sorted(p.stem for p in (CONF_DIR / kind).glob("*.yaml"))


def preset_section(kind: str, name: str, section: str) -> dict[str, Any]:
    """What preset ``conf/<kind>/<name>.yaml`` itself sets in ``section`` (no other layer).

    Raises:
        ConfigError: no such preset, or it is not valid YAML.
    """
    path = CONF_DIR / kind / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown {kind[:-1]} preset {name!r}; available: "
                          f"{', '.join(available(kind))}")
    return dict(_read_yaml(path).get(section) or {})


def _dataset_layer(dataset: str, config_file: str | os.PathLike | None
                   ) -> tuple[str, dict[str, Any]] | None:
    """(source, data) of the dataset layer, or None when ``config_file`` defines the dataset.

    Raises:
        ConfigError: in one line, when ``dataset`` is neither a preset, nor a YAML file, nor
            the ``dataset.name`` of ``config_file``.
    """
    if dataset.endswith((".yaml", ".yml")) or os.sep in dataset:
        path = Path(dataset).expanduser()
        if not path.is_file():
            raise ConfigError(f"dataset file not found: {path}")
        return str(path), _read_yaml(path)
    preset = CONF_DIR / "datasets" / f"{dataset}.yaml"
    if preset.exists():
        return str(preset), _read_yaml(preset)
    if config_file is not None:
        section = _read_yaml(Path(config_file)).get("dataset")  # a user's file: any shape
        if isinstance(section, dict) and section.get("name") == dataset:
            return None
    where = f" and {config_file} does not set dataset.name: {dataset}" if config_file else ""
    raise ConfigError(
        f"unknown dataset {dataset!r}: not a preset ({', '.join(available('datasets'))}), "
        f"not a YAML file{where}; pass --dataset path/to/dataset.yaml or define it in --config")


def _table_section(source: str, table: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``params`` and ``train`` of one layer's ``table:`` section, checked.

    ``table.params`` holds the hyper-parameters a paper sets for every model of its
    comparison table (DualRec: d = 64; DFAR: embedding size 32). :func:`load_config` lays
    them over the model preset for the models whose preset defines that parameter; a user
    file and the command line still override them, and ``seqrec compare`` applies them to
    each model it trains (``cfg.table``). ``table.train`` is the training recipe such a paper
    gives every model (DFAR's lr 1e-4 and batch 200): laid over every model preset's own
    ``train:`` (GRU4Rec's lr), so the table's recipe wins where the paper sets one.

    Raises:
        ConfigError: ``table`` is not ``{params: {...}, train: {...}}``, a parameter no model
            preset has, or a train key that does not exist.
    """
    if not (isinstance(table, dict) and set(table) <= {"params", "train"}
            and all(isinstance(v, dict) for v in table.values())):
        raise ConfigError(f"{source}: table must be a mapping with keys params (model "
                          f"hyper-parameters every model of the table shares) and train "
                          f"(the training recipe every model of the table shares)")
    params, train = table.get("params") or {}, table.get("train") or {}
    unknown_train = sorted(set(train) - set(TrainConfig.model_fields))
    if unknown_train:
        raise ConfigError(f"{source}: table.train {', '.join(unknown_train)}: no such train "
                          f"setting")
    if not params:
        return {}, train
    known = {key for name in available("models") for key in
             (_read_yaml(CONF_DIR / "models" / f"{name}.yaml").get("model", {})
              .get("params") or {})}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"{source}: table.params {', '.join(unknown)}: no model preset has "
                          f"such a parameter")
    return params, train


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(base: dict, update: dict, source: str, origin: dict, prefix: str = "") -> None:
    """Deep-merge ``update`` into ``base`` in place, recording each leaf's source in ``origin``."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict) and value:
            _merge(base[key], value, source, origin, dotted + ".")
        else:
            base[key] = copy.deepcopy(value)
            origin[dotted] = source


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key part")
    # YAML parsing turns "3" into 3, "true" into True, "[a, b]" into a list, "null" into None.
    return key.split("."), yaml.safe_load(raw) if raw != "" else ""


def _expand_all(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _expand_all(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_expand_all(v) for v in data]
    return _expand(data) if isinstance(data, str) else data


def _source_of(loc: tuple, origin: dict[str, str]) -> str:
    parts = [str(p) for p in loc]
    while parts:
        dotted = ".".join(parts)
        if dotted in origin:
            return origin[dotted]
        parts.pop()
    return "no file (required key missing everywhere)"


def _expand(value: str) -> str:
    """``${VAR}`` and ``${VAR:-default}`` from the environment."""
    return re.sub(
        r"\$\{(\w+)(?::-([^}]*))?\}",
        lambda m: os.environ.get(m.group(1), m.group(2) or ""),
        value,
    )


def _resolve_path(value: str, dataset: str) -> str:
    value = value.replace("{dataset}", dataset)
    if "://" in value or value.startswith("sqlite:"):
        return value
    return str(Path(value).expanduser().resolve())


def load_config(
    dataset: str = "sample",
    model: str = "score",
    profile: str = "local",
    overrides: list[str] | None = None,
    config_file: str | os.PathLike | None = None,
) -> PipelineConfig:
    """Compose and validate the config.

    Args:
        dataset: dataset preset name (``conf/datasets/<name>.yaml``), a YAML file's path, or
            the ``dataset.name`` that ``config_file`` defines.
        model: model preset name (``conf/models/<name>.yaml``).
        profile: ``local`` or ``cluster`` (``conf/profiles/<name>.yaml``).
        overrides: dotted ``key=value`` strings applied last.
        config_file: an extra YAML file of the user's, applied before overrides.

    Returns:
        The validated, frozen config with ``{dataset}`` expanded and local paths absolute.

    Raises:
        ConfigError: unknown preset, unknown key, wrong type or bad value; the message names
            the dotted key and the file (or override) that set it.
    """
    layers: list[tuple[str, dict]] = [(str(CONF_DIR / "defaults.yaml"),
                                       _read_yaml(CONF_DIR / "defaults.yaml"))]
    for kind, name in (("profiles", profile), ("models", model)):
        path = CONF_DIR / kind / f"{name}.yaml"
        if not path.exists():
            raise ConfigError(
                f"unknown {kind[:-1]} preset {name!r}; available: {', '.join(available(kind))}"
            )
        layers.append((str(path), _read_yaml(path)))
    dataset_layer = _dataset_layer(dataset, config_file)
    if dataset_layer is not None:
        layers.insert(2, dataset_layer)  # after the profile, before the model
    if config_file is not None:
        layers.append((str(config_file), _read_yaml(Path(config_file))))
    model_params = layers[-1 if config_file is None else -2][1].get("model", {}).get("params", {})
    parsed = [(text, *_parse_override(text)) for text in overrides or []]
    table: dict[str, Any] = {}
    table_train: dict[str, Any] = {}
    for source, data in layers:
        if "table" in data:
            params, train = _table_section(source, data["table"])
            table.update(params)
            table_train.update(train)
    for text, keys, value in parsed:  # --set table.params.<key>=value, table.train.<key>=..
        if keys[0] == "table" and len(keys) in (2, 3) and keys[1] in ("params", "train"):
            given = {keys[2]: value} if len(keys) == 3 else value
            params, train = _table_section(f"override {text!r}", {keys[1]: given})
            table.update(params)
            table_train.update(train)
    shared = {k: v for k, v in table.items() if k in model_params}
    after_model = len(layers) - (config_file is not None)
    if table_train:  # over the model preset's own train recipe
        layers.insert(after_model, ("table.train", {"train": table_train}))
    if shared:  # right after the model preset
        layers.insert(after_model, ("table.params", {"model": {"params": shared}}))

    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source, data in layers:
        _merge(merged, _expand_all(data), source, origin)
    merged["profile"] = profile
    origin["profile"] = "--profile"
    for text, keys, value in parsed:
        nested: dict[str, Any] = value
        for key in reversed(keys):
            nested = {key: nested}
        _merge(merged, nested, f"override {text!r}", origin)

    try:
        cfg = PipelineConfig.model_validate(merged)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "<root>"
            lines.append(f"  {key}: {err['msg']} (from {_source_of(err['loc'], origin)})")
        raise ConfigError("invalid config:\n" + "\n".join(lines)) from None

    name = cfg.dataset.name
    paths = cfg.paths.model_copy(
        update={k: _resolve_path(v, name) for k, v in cfg.paths.model_dump().items()}
    )
    tracking = cfg.tracking.model_copy(
        update={
            "uri": _resolve_sqlite(cfg.tracking.uri.replace("{dataset}", name)),
            "artifact_location": _resolve_path(cfg.tracking.artifact_location, name),
        }
    )
    return cfg.model_copy(update={"paths": paths, "tracking": tracking})


def _resolve_sqlite(uri: str) -> str:
    """Make a relative ``sqlite:///rel/path.db`` absolute so runs from any cwd share it."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def section_hash(cfg: PipelineConfig, *sections: str) -> str:
    """Stable hash of the named config sections; a stage reruns when it changes."""
    payload = {name: getattr(cfg, name).model_dump(mode="json") for name in sections}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def to_yaml(cfg: PipelineConfig) -> str:
    """The composed config as YAML (logged with every run)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
