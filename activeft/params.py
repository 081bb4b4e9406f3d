"""Parameters declared once, scikit-learn style, and everything derived from that declaration.

A function declares each parameter once: its name and default in the signature, its
:class:`Rule` (type and constraint) in a ``{name: Rule}`` dict above it (:func:`validated`, as
scikit-learn's ``validate_params``), its help in the numpydoc docstring. A selector declares
``{name: Param}``. From that one declaration come the Python API's validation (:func:`validate`: one
line naming the parameter and what is allowed), the YAML config section (:func:`config_fields`) and
the command-line options (:func:`cli_parameters`). A new selector registers itself and appears in
``activeft select --help``, in configs and in the API with no edit elsewhere.

A help sentence starting "In Python" speaks of the API only: the command line leaves it out.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from .errors import ActiveftError, ParameterError, check

REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Rule:
    """A parameter's Python ``type`` (for the CLI; ``config_type`` for YAML, when it differs),
    validity test and the phrase ``expected`` that the error message gives. ``parse`` (of a
    :func:`parsed` rule) raises its own one-line error for a bad value; ``choices`` (a tuple, or a
    callable giving one) are listed in the command-line help."""

    type: Any
    ok: Callable[[Any], bool]
    expected: str
    config_type: Any = None
    parse: Callable[[Any], Any] | None = None
    choices: tuple | Callable[[], Any] | None = None


@dataclass(frozen=True)
class Param:
    """One declared parameter: its default (:data:`REQUIRED` for none), rule, help and extra CLI
    spellings (e.g. ``-o``)."""

    default: Any
    rule: Rule
    help: str = ""
    flags: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(minimum: int | None = None) -> Rule:
    return Rule(int, lambda v: _int(v) and (minimum is None or v >= minimum),
                "an int" + (f" >= {minimum}" if minimum is not None else ""))


def number(minimum: float | None = None, *, strict: bool = False, maximum: float | None = None) -> Rule:
    """A float ``> minimum`` (``strict``) or ``>= minimum``, and ``<= maximum``."""
    bounds = [f"{'>' if strict else '>='} {minimum:g}"] if minimum is not None else []
    bounds += [f"<= {maximum:g}"] if maximum is not None else []
    return Rule(float, lambda v: _num(v) and (minimum is None or (v > minimum if strict else v >= minimum))
                and (maximum is None or v <= maximum), "a float" + (" " + " and ".join(bounds) if bounds else ""))


def one_of(*choices) -> Rule:
    return Rule(str, lambda v: v in choices, "one of " + ", ".join(map(str, choices)), choices=choices)


BOOL = Rule(bool, lambda v: isinstance(v, bool), "True or False")
TEXT = Rule(str, lambda v: isinstance(v, str), "a string")
STORE = Rule(str, lambda v: isinstance(v, str) or hasattr(v, "manifest"), "a store URI or an EmbeddingStore")
TABLE = Rule(str, lambda v: isinstance(v, str) or hasattr(v, "num_rows"), "a table URI or a pyarrow.Table")


def optional(rule: Rule) -> Rule:
    """``rule`` or None (None: automatic, or unset)."""
    return Rule(rule.type | None, lambda v: v is None or rule.ok(v), rule.expected,
                None if rule.config_type is None else rule.config_type | None,
                None if rule.parse is None else lambda v: v if v is None else rule.parse(v), rule.choices)


def parsed(parse: Callable[[Any], Any], expected: str, config_type: Any = None, cli_type: Any = str,
           choices: tuple | Callable[[], Any] | None = None) -> Rule:
    """A value the library's own ``parse`` accepts (it raises on bad input, its error is the one
    reported), so the API, the config and the CLI accept the same values; the CLI reads it as
    ``cli_type``, YAML as ``config_type``."""
    def ok(v):
        try:
            parse(v)
        except (ActiveftError, ValueError, TypeError, AttributeError):
            return False
        return True

    return Rule(cli_type, ok, expected, config_type, parse, choices)


def declared(fn: Callable, rules: dict[str, Rule], flags: dict[str, tuple[str, ...]] | None = None) -> dict[str, Param]:
    """``{name: Param}`` of ``fn``'s parameters named in ``rules``: defaults from its signature,
    help from its numpydoc docstring."""
    signature, helps = inspect.signature(fn), docstring_params(fn.__doc__ or "")
    missing = sorted(set(rules) - set(signature.parameters))
    if missing:
        raise TypeError(f"{fn.__name__} has no parameter {missing[0]!r}")
    return {name: Param(signature.parameters[name].default, rule, helps.get(name, ""), (flags or {}).get(name, ()))
            for name, rule in rules.items()}


def docstring_params(doc: str) -> dict[str, str]:
    """``{name: help}`` from a numpydoc ``Parameters`` section (``a, b : type`` entries share one help)."""
    section = re.search(r"Parameters\n\s*-+\n(.*?)(?:\n\s*\n\s*[A-Z][a-z]+\n\s*-+\n|\Z)", inspect.cleandoc(doc), re.S)
    out: dict[str, str] = {}
    names: list[str] = []
    for line in (section.group(1).splitlines() if section else []):
        if line and not line[0].isspace():
            names = [n.strip() for n in line.split(":")[0].split(",")]
            for n in names:
                out[n] = ""
        elif line.strip():
            for n in names:
                out[n] = (out[n] + " " + line.strip()).strip()
    return {k: _plain(v) for k, v in out.items()}


def docstring_summary(fn: Callable) -> str:
    """The first paragraph of ``fn``'s docstring, without reST markup (a command's help line)."""
    return _plain(inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0].replace("\n", " "))


def _plain(text: str) -> str:
    return re.sub(r":\w+:`~?([^`]+)`|``([^`]+)``", lambda m: m.group(1) or m.group(2), text)


def validate(params: dict[str, Param], values: dict, owner: str, kind: str = "") -> dict:
    """``values`` checked against ``params``, defaults filled in. A bad or unknown one raises the
    one-line :class:`~activeft.errors.ParameterError` naming it and what is allowed (``kind``: what
    ``owner`` is, e.g. "method")."""
    unknown = sorted(set(values) - set(params))
    if unknown:
        raise ParameterError(f"The '{unknown[0]}' parameter does not apply to {kind + ' ' if kind else ''}{owner}; "
                             f"its parameters: "
                             f"{', '.join(params) or 'none'}")
    out = {}
    for name, p in params.items():
        if name not in values and p.required:
            raise ParameterError(f"The '{name}' parameter of {owner} is required")
        value = values.get(name, p.default)
        if not p.rule.ok(value) and p.rule.parse is not None:
            try:
                p.rule.parse(value)  # its own one-line error names what is wrong, when it has one
            except ActiveftError:
                raise
            except (ValueError, TypeError, AttributeError):
                pass
        check(p.rule.ok(value), name, owner, p.rule.expected, value)
        out[name] = value
    return out


def validated(rules: dict[str, Rule], owner: str | None = None, flags: dict[str, tuple[str, ...]] | None = None):
    """Decorator: declare ``fn``'s parameters (:func:`declared`, as ``fn.params``) and check every call
    against them (:func:`validate`) before ``fn`` runs; ``owner`` names it in errors (default: its name)."""
    def wrap(fn: Callable) -> Callable:
        params, signature = declared(fn, rules, flags), inspect.signature(fn)

        @functools.wraps(fn)
        def checked(*args, **kwargs):
            given = signature.bind(*args, **kwargs).arguments
            validate(params, {k: v for k, v in given.items() if k in params}, owner or fn.__name__)
            return fn(*args, **kwargs)

        checked.params = params
        return checked

    return wrap


def choices(rule: Rule) -> tuple:
    """The values a rule accepts, when it lists them (else empty)."""
    listed = rule.choices() if callable(rule.choices) else rule.choices
    return tuple(listed or ())


def cli_help(p: Param) -> str:
    """``p``'s help for the command line: API-only sentences ("In Python ...") left out, choices listed."""
    text = re.sub(r"\s*In Python.*?\.(\s|$)", " ", p.help).strip()
    listed = choices(p.rule)
    if listed and not re.search(r"\bOne of\b", text):
        text = f"{text} One of: {', '.join(map(str, listed))}.".strip()
    return text


def merged_params(methods: dict[str, dict[str, Param]]) -> dict[str, Param]:
    """Several methods' parameters, each name once (the first method's rule); its help names each method
    using it, with that method's help and default."""
    out: dict[str, list] = {}
    for method, params in methods.items():
        for key, p in params.items():
            out.setdefault(key, []).append((method, p))
    return {k: dataclasses.replace(v[0][1], help="; ".join(f"{m}: {p.help} (default {p.default})" for m, p in v))
            for k, v in out.items()}


def config_fields(params: dict[str, Param]) -> dict[str, tuple]:
    """pydantic ``create_model`` fields ``{name: (type, default)}`` (``...`` when required); the
    values are then checked by the rules themselves."""
    return {name: (p.rule.config_type or p.rule.type, ... if p.required else p.default) for name, p in params.items()}


def cli_parameters(params: dict[str, Param], *, method_defaults: bool = False) -> list[inspect.Parameter]:
    """typer options for ``params``: ``--name`` (and its ``flags``), its help and default. A bool off
    by default is a plain switch; one on by default also gets ``--no-name``. With
    ``method_defaults`` every option defaults to None: the method's own default then applies."""
    import typer

    out = []
    for name, p in params.items():
        opt = "--" + name.replace("_", "-")
        kind = p.rule.type
        if kind is bool and not method_defaults:
            decls, default = ((opt,) if p.default is False else (f"{opt}/--no-{opt[2:]}",)), p.default
        else:
            decls, default = (opt,), None if method_defaults else p.default
            if method_defaults or default is None:
                kind = kind | None
        annotation = Annotated[kind, typer.Option(*decls, *p.flags, help=cli_help(p))]
        out.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
    return out
