"""Errors a user can cause. Each one's ``str`` is the single line the CLI prints."""


class ActiveftError(Exception):
    """Base class: bad input or a state the user can fix. The CLI prints it as one line."""


class ParameterError(ActiveftError, ValueError):
    """A parameter has a wrong type or value."""


class SourceError(ActiveftError):
    """The image source (directory, prefix or manifest table) is missing, empty or malformed."""


class StoreError(ActiveftError):
    """An embedding store or selection is missing, incomplete or inconsistent."""


class OutputExistsError(ActiveftError):
    """The output already holds results and neither resume nor overwrite was asked for."""


class ModelError(ActiveftError):
    """The backbone cannot be built or its weights do not fit it."""


class LabelsError(ActiveftError):
    """A labels table is missing columns or disagrees with the selection."""


class ConfigError(ActiveftError):
    """A pipeline config has a wrong key, type or value."""


class TooManyErrors(ActiveftError):
    """More images failed to decode than ``max_error_fraction`` allows."""


def check(ok: bool, name: str, owner: str, expected: str, got) -> None:
    """Raise the one message shape used for every bad parameter.

    >>> check(False, "budget", "select", "an int >= 1 or a fraction like '1%'", -3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    activeft.errors.ParameterError: The 'budget' parameter of select must be an int >= 1 or a fraction like '1%'. ...
    """
    if not ok:
        raise ParameterError(f"The '{name}' parameter of {owner} must be {expected}. Got {got!r} instead.")


def suggest(name: str, choices, what: str, listing: str | None = None) -> str:
    """``unknown method 'kmean'; available: fds, kmeans (did you mean 'kmeans'?)``.

    ``listing`` replaces the list of choices (for long ones, e.g. "see timm.list_models()").
    """
    import difflib

    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown {what} {name!r}; {listing or 'available: ' + ', '.join(choices)}{hint}"
