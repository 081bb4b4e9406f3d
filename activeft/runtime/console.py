"""How a command ends: one line on stderr for a user error, logging to stderr. Shared by the
``activeft`` command line and ``python pipelines/NAME.py``."""

from __future__ import annotations

import logging
import os
import sys

from ..errors import ActiveftError


def error_exit(e: Exception, prog: str) -> int:
    """A user error becomes one line on stderr and exit code 1; anything else is re-raised (bugs stay loud)."""
    user = user_error(e)
    if user is None or os.environ.get("ACTIVEFT_DEBUG"):
        raise e
    print(f"{prog}: error: {user}", file=sys.stderr)
    return 1


def user_error(e: BaseException) -> ActiveftError | None:
    """The ActiveftError behind ``e``, also when Ray wrapped it (a task error's ``cause``, a Ray Train
    worker group's ``worker_failures``)."""
    seen, todo = set(), [e]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(e, ActiveftError) and not isinstance(cause, ActiveftError):  # not Ray's wrapper of one
            return e
        todo += [cause, e.__cause__, *getattr(e, "worker_failures", {}).values()]
    return None


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (so redirection and capture work)."""

    def emit(self, record):
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def quiet_libraries() -> None:
    """Keep library chatter out of the console, unless debugging: faiss's start-up lines (which CPU build
    it loads) and Ray Train's per-report lines (logged by loggers named after their file)."""
    if os.environ.get("ACTIVEFT_DEBUG"):
        return
    logging.getLogger("faiss").setLevel(logging.WARNING)
    ray = sys.modules.get("ray")
    if ray is not None:
        where = os.path.dirname(ray.__file__)
        for name in list(logging.root.manager.loggerDict):
            if name.startswith(where):
                logging.getLogger(name).setLevel(logging.WARNING)


def ray_train_log_level() -> str:
    """The console level of Ray Train's own lines (worker group start, checkpoints, reports)."""
    return "INFO" if os.environ.get("ACTIVEFT_DEBUG") else "WARNING"


def setup_logging() -> None:
    quiet_libraries()
    logger = logging.getLogger("activeft")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(os.environ.get("ACTIVEFT_LOG_LEVEL", "INFO"))
