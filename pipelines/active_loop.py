"""Active loop: (embed) -> multi-round selection through a proxy (ASVP), feature refresh, final model.

    ray job submit --working-dir . -- python pipelines/active_loop.py --config configs/loop.yaml
With `loop.labels` (human in the loop) a round exports its selection and the job ends; submit it
again once the labels table has grown, and it continues with the next round.
"""

import sys

import activeft
from activeft import storage
from activeft.pipeline import Pipeline, main


def run(cfg):
    """Active loop: embed (if configured) -> rounds of proxy selection -> final model."""
    cfg.require("loop")
    e, lp = cfg.embed, cfg.loop
    if e is not None:
        Pipeline(cfg).stage("embed", lambda: activeft.embed(
            e.source, e.store, model=e.model, pretrained=e.pretrained, batch_size=e.batch_size,
            image_size=e.image_size, num_actors=e.num_actors, gpus_per_actor=e.gpus_per_actor,
            partition_size=e.partition_size, dtype=e.dtype, max_error_fraction=e.max_error_fraction,
            resume=True).uri, storage.join(e.store, "_manifest.json"), {"embed": e})
    # the loop keeps its own state (it may stop to wait for labels), so it is not a recorded stage
    return activeft.loop(lp.store, state=lp.state, round_budget=lp.round_budget, rounds=lp.rounds,
                         strategy=lp.strategy, first=lp.first, refresh=lp.refresh, refresh_mode=lp.refresh_mode,
                         refresh_epochs=lp.refresh_epochs,
                         final=lp.final, final_threshold=lp.final_threshold, oracle=lp.oracle, labels=lp.labels,
                         eval_store=lp.eval_store, num_workers=lp.num_workers, use_gpu=lp.use_gpu, seed=lp.seed,
                         proxy_epochs=lp.proxy_epochs, label_cost=lp.label_cost, gpu_hour_cost=lp.gpu_hour_cost,
                         cpu_hour_cost=lp.cpu_hour_cost)


if __name__ == "__main__":
    sys.exit(main(run, prog="active_loop"))
