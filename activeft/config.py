"""Pipeline configs: YAML validated with pydantic, ``--set key=value`` overrides, one-line errors.

One schema serves every pipeline; each pipeline requires the sections it uses. String values
may use ``{date}`` (the UTC date of the run, ``YYYY-MM-DD``: scheduled runs write into a dated
prefix) and ``{output}`` (the resolved ``output``). A wrong key, type or value fails before any
work starts with one line naming the key and what is allowed.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from . import storage
from .errors import ActiveftError, ConfigError
from .loop import parse_budgets, parse_refresh
from .params import config_fields
from .select import PARAMS as select_params


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def section(name: str, declared: dict, **extra) -> type[_Section]:
    """A config section generated from declared parameters (:mod:`activeft.params`): their types and
    defaults, each value checked by its rule; ``extra`` fields are the config's own."""
    def rule_check(rule):
        def check_(cls, v):
            if not rule.ok(v):
                raise ValueError(f"must be {rule.expected}")
            return v
        return classmethod(check_)

    validators = {f"_check_{k}": field_validator(k)(rule_check(p.rule)) for k, p in declared.items()}
    return create_model(name, __base__=_Section, __validators__=validators, **{**config_fields(declared), **extra})


def _accepted_by(field: str, parse, allowed: str, mode: str = "after"):
    """A validator of ``field``: the value must pass the library's own ``parse`` (the API and the
    config accept the same values); ``allowed`` is what the one-line error says it must be."""
    def accepted(cls, v):
        try:
            parse(v)
        except ActiveftError:
            raise ValueError(f"must be {allowed}") from None
        return v

    return field_validator(field, mode=mode)(classmethod(accepted))


class EmbedConfig(_Section):
    source: str
    store: str = "{output}/store"
    model: str = "vit_small_patch16_224.dino"
    pretrained: str = "hub"
    image_size: int | None = Field(None, ge=8)
    batch_size: int = Field(64, ge=1)
    num_actors: int | str | None = None
    gpus_per_actor: float | None = Field(None, gt=0)
    partition_size: int = Field(10_000, ge=1)
    dtype: Literal["float32", "float16"] = "float32"
    max_error_fraction: float = Field(0.01, ge=0, le=1)


SelectConfig = section("SelectConfig", {k: p for k, p in select_params.items() if k not in ("store", "resume",
                                                                                          "overwrite")},
                       output=(str, "{output}/selection"), params=(dict[str, Any], {}))


class ReportConfig(_Section):
    enabled: bool = True
    sample: int = Field(5000, ge=10)
    clusters: int = Field(20, ge=2)


class ExportConfig(_Section):
    output: str = "{output}/export"
    label_studio: bool = True
    presign: bool = False
    expires: int = Field(7 * 24 * 3600, ge=1)


class CalibrateConfig(_Section):
    enabled: bool = True
    output: str = "{output}/calibration"
    alpha: float = Field(0.7, ge=0)
    xi: float = Field(0.2, ge=0)
    tukey_lambda: float = 0.5
    clusters: int | None = Field(None, ge=1)
    samples_per_label: int | Literal["auto"] = "auto"
    emd_filter: bool = False
    max_draws: int = Field(50, ge=1)
    kmeans_runs: int = Field(10, ge=1)
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    seed: int = 0


class FinetuneConfig(_Section):
    output: str = "{output}/finetune"
    mode: Literal["linear", "full", "lp-ft"] = "linear"
    val: str | None = None
    val_store: str | None = None
    model: str | None = None
    pretrained: str | None = None
    head: Literal["linear", "mlp"] = "linear"
    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    batch_size: int = Field(64, ge=1)
    weight_decay: float | None = Field(None, ge=0)
    eval_every: int = Field(5, ge=1)
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    seed: int = 0
    max_failures: int = Field(3, ge=0)


class TrainConfig(_Section):
    labels: str
    store: str = "{output}/store"
    selection: str = "{output}/selection"
    calibrate: CalibrateConfig = CalibrateConfig()
    finetune: FinetuneConfig = FinetuneConfig()


class LoopConfig(_Section):
    store: str = "{output}/store"
    state: str = "{output}/loop"
    round_budget: int | str
    rounds: int | None = Field(None, ge=1)
    strategy: Literal["margin", "entropy", "confidence", "badge", "coreset", "activeft", "random"] = "margin"
    first: Literal["activeft", "random"] = "activeft"
    refresh: str = "never"
    refresh_mode: Literal["lp-ft", "full"] = "lp-ft"
    refresh_epochs: int | None = Field(None, ge=1)
    final: Literal["auto", "linear", "lp-ft", "full", "none"] = "auto"
    final_threshold: int = Field(100, ge=1)
    oracle: Literal["store-labels"] | None = None
    labels: str | None = None
    eval_store: str | None = None
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    seed: int = 0
    proxy_epochs: int = Field(50, ge=1)
    label_cost: float = Field(0.0, ge=0)
    gpu_hour_cost: float = Field(3.0, ge=0)
    cpu_hour_cost: float = Field(0.05, ge=0)

    _budgets = _accepted_by("round_budget", lambda v: parse_budgets(v, None), "a count >= 1 or counts 'B1,B2,...'",
                            mode="before")
    _policy = _accepted_by("refresh", parse_refresh, "'never', 'logme' or 'at-labels:N'")


class Config(_Section):
    name: str = "activeft"
    output: str
    embed: EmbedConfig | None = None
    select: SelectConfig | None = None
    report: ReportConfig = ReportConfig()
    export: ExportConfig = ExportConfig()
    train: TrainConfig | None = None
    loop: LoopConfig | None = None

    def require(self, *sections: str) -> None:
        missing = [s for s in sections if getattr(self, s) is None]
        if missing:
            raise ConfigError(f"config has no '{missing[0]}' section, which this pipeline needs")


def _set(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        if not isinstance(node.get(k, {}), dict):
            raise ConfigError(f"--set {dotted}: '{k}' is not a section")
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def _resolve(value, variables: dict):
    if isinstance(value, str):
        return re.sub(r"\{(date|output)\}", lambda m: variables[m.group(1)], value)
    if isinstance(value, dict):
        return {k: _resolve(v, variables) for k, v in value.items()}
    return value


def _describe(error: dict, model: type[BaseModel]) -> str:
    loc = [str(p) for p in error["loc"]]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        node: Any = model
        for part in loc[:-1]:
            field = node.model_fields.get(part)
            annotation = field.annotation if field else None
            node = next((a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)
                         and issubclass(a, BaseModel)), None)
            if node is None:
                break
        allowed = ", ".join(node.model_fields) if node is not None else "?"
        return f"config key '{key}' is not allowed here; allowed keys: {allowed}"
    got = error.get("input")
    msg = error["msg"].removeprefix("Value error, ")
    return f"config key '{key}': {msg[0].lower() + msg[1:]}" + ("" if isinstance(got, dict) else f" (got {got!r})")


def load_config(uri: str, overrides: list[str] = (), date: str | None = None) -> Config:
    """Read, override, resolve and validate a pipeline config.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "c.yaml")
    >>> _ = open(p, "w").write("output: out/{date}\\nselect: {budget: 1%, method: kmeans}\\n")
    >>> cfg = load_config(p, ["select.params.iterations=20"], date="2026-01-02")
    >>> cfg.output, cfg.select.output, cfg.select.params
    ('out/2026-01-02', 'out/2026-01-02/selection', {'iterations': 20})
    """
    try:
        tree = yaml.safe_load(storage.read_bytes(uri)) if storage.exists(uri) else None
    except (yaml.YAMLError, OSError) as e:
        raise ConfigError(f"cannot read config {uri}: {storage._first_line(e)}") from e
    if tree is None:
        raise ConfigError(f"config {uri} does not exist or is empty")
    if not isinstance(tree, dict):
        raise ConfigError(f"config {uri} must be a mapping of sections, not {type(tree).__name__}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. select.budget=1%")
        key, _, text = item.partition("=")
        _set(tree, key.strip(), yaml.safe_load(text) if text.strip() else "")
    variables = {"date": date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}
    try:
        variables["output"] = _resolve(str(tree.get("output", "")), variables).rstrip("/")
        cfg = Config.model_validate(_resolve(tree, variables))
        cfg = Config.model_validate(_resolve(cfg.model_dump(), variables))  # defaults that use {output}
    except ValidationError as e:
        raise ConfigError(_describe(e.errors()[0], Config)) from None
    if cfg.select is not None:  # method parameters are checked by the method itself, now
        from .select import get_selector

        try:
            get_selector(cfg.select.method)(seed=cfg.select.seed, **cfg.select.params)
        except ActiveftError as e:
            raise ConfigError(f"config key 'select.params': {e}") from None
    return cfg
