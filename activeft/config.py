"""Pipeline configs: YAML validated with pydantic, ``--set key=value`` overrides, one-line errors.

One schema serves every pipeline; each pipeline requires the sections it uses. String values
may use ``{date}`` (the UTC date of the run, ``YYYY-MM-DD``: scheduled runs write into a dated
prefix) and ``{output}`` (the resolved ``output``). A wrong key, type or value fails before any
work starts with one line naming the key and what is allowed.

Relative paths resolve against the current directory. Under ``ray job submit --working-dir DIR`` that
is Ray's temporary copy of DIR (:func:`activeft.runtime.cluster.working_dir_copy`), which cannot see where the
job was submitted from and which Ray deletes: there a config naming a relative path is refused, in one
line, before any work (submit with ``--working-dir "local://$PWD"`` to run in your own directory, or
use absolute paths or ``s3://`` URIs).
"""

from __future__ import annotations

import datetime
import os
import re
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, create_model, field_validator

from . import stages
from .errors import ActiveftError, ConfigError
from .io import storage
from .params import config_fields, validate
from .runtime import cluster


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


# The keys of a group of sections that are the group's own (the train pipeline's inputs).
GROUPS = {"train": {"labels": (str, ...), "store": (str, "{output}/store"), "selection": (str, "{output}/selection")}}


class _Config(_Section):
    name: str = "activeft"
    output: str

    def require(self, *sections: str) -> None:
        missing = [s for s in sections if getattr(self, s) is None]
        if missing:
            raise ConfigError(f"config has no '{missing[0]}' section, which this pipeline needs")


def _stage_section(entry: stages.Stage) -> tuple:
    """``(model, default)`` of a stage's config section: its declared parameters (less those the pipeline
    passes itself) and the section's own keys; present by default when ``always``."""
    sec = entry.section
    name = "".join(part.title() for part in sec.path.rpartition(".")[2].split("_")) + "Config"
    model = section(name, {k: p for k, p in entry.params.items() if k not in sec.fixed}, **sec.extra)
    return (model, model()) if sec.always else (model | None, None)


def config_model() -> type[_Config]:
    """The config schema, from the stage table: a section per stage (``train.calibrate`` nests in the
    ``train`` group, whose own keys are in :data:`GROUPS`)."""
    import activeft  # noqa: F401  (registers every stage)

    top: dict = {}
    nested: dict = {}
    for entry in stages.list_stages():
        if entry.section is not None:
            group, _, key = entry.section.path.rpartition(".")
            (nested.setdefault(group, {}) if group else top)[key] = _stage_section(entry)
    for group, fields in nested.items():
        model = create_model(group.title() + "Config", __base__=_Section, **GROUPS.get(group, {}), **fields)
        top[group] = (model | None, None)
    return create_model("Config", __base__=_Config, **top)


def _find(cfg, path: str):
    """The section at a dotted ``path`` of a config, or None where the config has none."""
    for key in path.split("."):
        cfg = getattr(cfg, key, None)
    return cfg


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


def load_config(uri: str, overrides: list[str] = (), date: str | None = None) -> _Config:
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
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or storage._first_line(e)
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem}); quote it, "
                              f"e.g. {key.strip()}='{text}'") from None
        _set(tree, key.strip(), value)
    variables = {"date": date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}
    if "output" in tree:  # every default path is {output}/...: an empty one would write under /
        try:
            storage.output_uri(_resolve(str(tree["output"] if tree["output"] is not None else ""), variables),
                               "config key 'output'")
        except ActiveftError as e:
            raise ConfigError(str(e)) from None
    try:
        variables["output"] = _resolve(str(tree.get("output", "")), variables).rstrip("/")
        given = _resolve(tree, variables)
        schema = config_model()
        cfg = schema.model_validate(given)
        cfg = schema.model_validate(_resolve(cfg.model_dump(), variables))  # defaults that use {output}
    except ValidationError as e:
        raise ConfigError(_describe(e.errors()[0], schema)) from None
    for entry in stages.list_stages():  # a method's parameters, against its declaration
        section = _find(cfg, entry.section.path) if entry.section and entry.section.methods else None
        if section is not None:
            try:
                validate(entry.section.methods(section.method).params, section.params, section.method, "method")
            except ActiveftError as e:
                raise ConfigError(f"config key '{entry.section.path}.params': {e}") from None
    for key, value in _paths(cfg.model_dump(), _OUTPUTS):  # where stages write: never empty, never a filesystem root
        try:
            storage.output_uri(value, f"config key '{key}'")
        except ActiveftError as e:
            raise ConfigError(str(e)) from None
    _check_relative(given)
    return cfg


# The keys that name files or directories, in every section: where stages write, and what they read
# (``pretrained`` is a path unless it is one of its keywords).
_OUTPUTS = ("output", "store", "state")
_INPUTS = ("source", "exclude", "labels", "selection", "val", "val_store", "eval_store", "pretrained")
_KEYWORDS = {"pretrained": ("hub", "none")}


def _paths(tree: dict, keys: tuple[str, ...], prefix: str = ""):
    """``(dotted key, value)`` of the paths under ``keys`` that a config names (method ``params`` hold none)."""
    for k, v in tree.items():
        if isinstance(v, dict) and k != "params":
            yield from _paths(v, keys, f"{prefix}{k}.")
        elif k in keys and isinstance(v, str) and v not in _KEYWORDS.get(k, ()):
            yield f"{prefix}{k}", v


def _check_relative(given: dict) -> None:
    """Refuse relative paths in a Ray job's working-dir copy: they would resolve inside it (outputs lost
    with it, inputs not found), never where the job was submitted from, which Ray does not pass on."""
    copy = cluster.working_dir_copy()
    if copy is None:
        return
    relative = [f"{k}={v!r}" for k, v in _paths(given, _OUTPUTS + _INPUTS)
                if not storage.is_remote(v) and not os.path.isabs(os.path.expanduser(v.removeprefix("file://")))]
    if relative:
        raise ConfigError(f"relative path{'s' if len(relative) > 1 else ''} in the config ({', '.join(relative)}) "
                          f"would resolve inside Ray's temporary copy of the job's working directory ({copy}), "
                          "which Ray deletes; use absolute paths or s3:// URIs, or, on a one-machine cluster, "
                          'submit with --working-dir "local://$PWD" so that the job runs in your directory')
