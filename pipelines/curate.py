"""Curate: embed the pool, select what to label, write the report and the annotation export.

    ray job submit --working-dir "local://$PWD" -- python pipelines/curate.py --config configs/demo.yaml
    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python pipelines/curate.py --config configs/imagenet-1pct.yaml       # s3:// paths on a cluster
    activeft run curate --config configs/demo.yaml --set select.budget=1%
"""

import logging
import sys

import activeft
from activeft.export import MARKER as EXPORTED
from activeft.export import export
from activeft.io import storage
from activeft.pipeline import Pipeline, embed_stage, main
from activeft.report import REPORT, write_report
from activeft.scores import SCORES
from activeft.select import SELECTION

log = logging.getLogger("activeft.pipeline")


def run(cfg):
    """Curate: embed -> scores (with a scores section) -> select (after dedup, with select.dedup) -> report
    -> export."""
    cfg.require("embed", "select")
    e, s, r, x, sc = cfg.embed, cfg.select, cfg.report, cfg.export, cfg.scores
    p = Pipeline(cfg)
    store = embed_stage(p, e)
    if sc is not None:
        p.stage("scores", lambda: activeft.scores(store, **sc.model_dump(), overwrite=True).num_rows,
                storage.join(sc.output, SCORES), {"scores": sc})
    p.stage("select", lambda: activeft.select(store, **s.model_dump(exclude={"params"}), resume=True, **s.params).uri,
            storage.join(s.output, SELECTION), {"select": s})
    if r.enabled:
        p.stage("report", lambda: write_report(store, s.output, sample=r.sample, clusters=r.clusters, seed=s.seed),
                storage.join(s.output, REPORT), {"select": s, "report": r})
    p.stage("export", lambda: export(s.output, **x.model_dump()), storage.join(x.output, EXPORTED),
            {"select": s, "export": x})
    if s.dedup is not None:
        info = storage.read_json(storage.join(s.output, SELECTION))
        log.info("curate: %d near-duplicates (of the pool or of labeled images) left out at dedup %g",
                 info["dedup"]["dropped"], s.dedup)
    log.info("curate: selection %s; report %s; annotation export %s%s", s.output,
             storage.join(s.output, REPORT) if r.enabled else "off", x.output,
             f"; scores {storage.join(sc.output, REPORT)}" if sc is not None else "")
    return p.state


if __name__ == "__main__":
    sys.exit(main(run, prog="curate"))
