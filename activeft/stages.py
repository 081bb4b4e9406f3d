"""The stage table: each stage declared once, above its function.

``@stage(rules, ...)`` declares a stage's parameters (:func:`activeft.params.validated`: rules above
the function, defaults in its signature, help in its docstring), checks every call, and enters the
stage in the table with what it writes (:class:`activeft.io.protocol.Kind`), its sub-command
(:class:`Command`) and its section of the pipeline configs (:class:`Section`). The command line
(:mod:`activeft.cli`), the configs (:mod:`activeft.config`) and the public API (``activeft.NAME``)
iterate :func:`list_stages`: a new stage is its module (imported by ``activeft/__init__.py``) and
its pipeline line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ParameterError, suggest
from .params import Param, Rule, validated

_STAGES: dict[str, Stage] = {}


@dataclass(frozen=True)
class Command:
    """A stage's sub-command ``activeft NAME``: its positional ``arguments``, the options ``required``
    there though optional in Python, ``summary(result, values)``: the line printed after a run,
    ``options()``: more options, each None by default (e.g. every selector's parameters), and an
    ``example`` command for its help."""

    name: str
    arguments: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    summary: Callable[[Any, dict], str] | None = None
    options: Callable[[], dict[str, Param]] | None = None
    example: str = ""


@dataclass(frozen=True)
class Section:
    """A stage's section of the pipeline configs: its ``path`` (``select``; ``train.calibrate`` nests it
    in the ``train`` group), the parameters the pipeline passes itself (``fixed``: not config keys), the
    section's own keys (``extra``: ``{key: (type, default)}``; defaults may use ``{output}``), whether
    a config has the section without naming it (``always``), and for a stage of several methods
    ``methods(name)``: the method's class, whose declared ``params`` the section's ``params`` key holds."""

    path: str
    fixed: tuple[str, ...] = ()
    extra: dict[str, tuple] = field(default_factory=dict)
    always: bool = False
    methods: Callable[[str], Any] | None = None


@dataclass(frozen=True)
class Stage:
    """One row of the table: ``fn`` is the checked API function, ``params`` its declaration."""

    name: str
    fn: Callable
    params: dict[str, Param]
    output: Any = None
    command: Command | None = None
    section: Section | None = None


def stage(rules: dict[str, Rule], *, name: str | None = None, output=None, command: Command | None = None,
          section: Section | None = None, flags: dict[str, tuple[str, ...]] | None = None) -> Callable:
    """Decorator: declare a stage function's parameters, check its calls, and register it as ``name``
    (default: the function's name)."""
    def wrap(fn: Callable) -> Callable:
        checked = validated(rules, name or fn.__name__, flags)(fn)
        register(Stage(name or fn.__name__, checked, checked.params, output, command, section))
        return checked

    return wrap


def register(entry: Stage) -> Stage:
    if entry.name in _STAGES:
        raise ValueError(f"stage {entry.name!r} registered twice")
    _STAGES[entry.name] = entry
    return entry


def list_stages() -> list[Stage]:
    """The registered stages, in registration order (the order of ``activeft/__init__.py``'s imports)."""
    return list(_STAGES.values())


def get_stage(name: str) -> Stage:
    if name not in _STAGES:
        raise ParameterError(suggest(name, _STAGES, "stage"))
    return _STAGES[name]
