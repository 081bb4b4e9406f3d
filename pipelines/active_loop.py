"""Active loop: (embed) -> multi-round selection through a proxy (ASVP), feature refresh, final model.

    ray job submit --working-dir "local://$PWD" -- python pipelines/active_loop.py --config configs/loop.yaml
With `loop.labels` (human in the loop) a round exports its selection and the job ends; submit it
again once the labels table has grown, and it continues with the next round.
"""

import sys

import activeft
from activeft.pipeline import Pipeline, embed_stage, main


def run(cfg):
    """Active loop: embed (if configured) -> rounds of proxy selection -> final model."""
    cfg.require("loop")
    e, lp = cfg.embed, cfg.loop
    if e is not None:
        embed_stage(Pipeline(cfg), e)
    # the loop keeps its own state (it may stop to wait for labels), so it is not a recorded stage
    return activeft.loop(**lp.model_dump())


if __name__ == "__main__":
    sys.exit(main(run, prog="active_loop"))
