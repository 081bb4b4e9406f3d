"""Running pipelines: stages with completion records, and the entry point of ``pipelines/*.py``.

Each run keeps ``<output>/_pipeline.json``: the stages it finished, with their outputs and
timings, and the config settings each read. A rerun of the same config and output (e.g. a
RayJob retried after ``backoffLimit``) skips those stages and resumes at the first unfinished one,
which itself resumes from its own checkpoints; a finished stage whose settings changed is refused.
A scheduled run writing into a new dated ``output`` records nothing yet, so it embeds the images
that are new in the shared store, then selects again.
"""

from __future__ import annotations

import argparse
import logging
import time

from pydantic import BaseModel

from .config import load_config
from .errors import ConfigError
from .io import storage
from .io.protocol import changes, header

log = logging.getLogger("activeft.pipeline")
STATE = "_pipeline.json"


class Pipeline:
    """The stage record of one run."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.uri = storage.join(cfg.output, STATE)
        self.state = storage.read_json(self.uri) if storage.exists(self.uri) else {"name": cfg.name, "stages": {}}

    def stage(self, name: str, fn, marker: str | None = None, settings: dict | None = None):
        """Run ``fn`` (returning a JSON-able result) unless this run finished the stage already and
        its ``marker`` file still exists; return the (recorded) result. A finished stage whose
        config ``settings`` (``{"select": cfg.select, ...}``: what it reads) changed since is refused."""
        now = _flat(settings or {})
        done = self.state["stages"].get(name)
        if done is not None and (marker is None or storage.exists(marker)):
            diff = changes(done.get("settings", {}), now)
            if diff:
                raise ConfigError(f"stage {name} of {self.cfg.output} finished with other settings {diff}; "
                                  f"use another output, or delete {self.uri} to redo every stage")
            log.info("stage %s: already done in this run (%s); skipping", name, done.get("finished"))
            return done["result"]
        log.info("stage %s: start", name)
        start = time.perf_counter()
        result = fn()
        seconds = round(time.perf_counter() - start, 2)
        self.state["stages"][name] = {"result": result, "seconds": seconds, "settings": now,
                                      "finished": header()["created"]}
        storage.write_json(self.uri, self.state)
        log.info("stage %s: done in %.1f s", name, seconds)
        return result


def embed_stage(p: Pipeline, e) -> str:
    """The embed stage of a pipeline, always resuming: new images of the source are embedded, finished
    partitions kept. Returns the store's URI."""
    from .embed import embed
    from .io.store import MANIFEST

    return p.stage("embed", lambda: embed(e.source, e.store, **e.model_dump(exclude={"source", "store"}),
                                          resume=True).uri, storage.join(e.store, MANIFEST), {"embed": e})


def _flat(d: dict, prefix: str = "") -> dict:
    """``{"select": SelectConfig(...)}`` -> ``{"select.budget": "1%", ...}`` (JSON values)."""
    out = {}
    for k, v in d.items():
        v = v.model_dump(mode="json") if isinstance(v, BaseModel) else v
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def main(run, argv: list[str] | None = None, prog: str | None = None) -> int:
    """The one parser of ``python pipelines/<job>.py`` and ``activeft run <job>``: ``--config X.yaml
    [--set key=value ...] [--date D]``; load, validate, run.

    Bad input ends in one line on stderr and exit code 1 (``ACTIVEFT_DEBUG=1``: traceback).
    """
    from .runtime.console import error_exit, setup_logging

    parser = argparse.ArgumentParser(prog=prog, description=(run.__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--config", required=True, help="pipeline config (YAML, local or s3://)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set select.budget=2%% (repeatable)")
    parser.add_argument("--date", help="the {date} of a scheduled run (default: today, UTC)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        run(load_config(args.config, args.overrides, args.date))
    except Exception as e:
        return error_exit(e, parser.prog)
    return 0

