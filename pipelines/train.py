"""Train, after the labels came back: (ActiveDC calibration) -> finetune -> evaluate.

    ray job submit --working-dir "local://$PWD" -- python pipelines/train.py --config configs/demo.yaml \
        --set train.labels=labels.csv
"""

import logging
import sys

import activeft
from activeft.calibrate import CALIBRATED, CALIBRATION
from activeft.finetune import METRICS
from activeft.io import storage
from activeft.pipeline import Pipeline, main

log = logging.getLogger("activeft.pipeline")


def run(cfg):
    """Train: calibrate -> finetune -> evaluate."""
    cfg.require("train")
    t = cfg.train
    c, f = t.calibrate, t.finetune
    p = Pipeline(cfg)
    train_table = t.labels
    if c.enabled:
        p.stage("calibrate", lambda: activeft.calibrate(
            t.store, selection=t.selection, labels=t.labels, **c.model_dump(exclude={"enabled", "params"}),
            **c.params, overwrite=True).num_rows, storage.join(c.output, CALIBRATION),
            {"train": t.model_dump(mode="json", exclude={"finetune"})})
        train_table = storage.join(c.output, CALIBRATED)
    p.stage("finetune", lambda: activeft.finetune(t.store, train=train_table, **f.model_dump(),
                                                  resume=True)["final_val_accuracy"],
            storage.join(f.output, METRICS), {"train": t})
    metrics = p.stage("evaluate", lambda: {k: v for k, v in storage.read_json(storage.join(f.output, METRICS)).items()
                                           if k in ("final_val_accuracy", "best_val_accuracy", "exported_epoch")})
    log.info("train: model %s; validation top-1 final %s, best %s", storage.join(f.output, "model.safetensors"),
             metrics["final_val_accuracy"], metrics["best_val_accuracy"])
    return p.state


if __name__ == "__main__":
    sys.exit(main(run, prog="train"))
