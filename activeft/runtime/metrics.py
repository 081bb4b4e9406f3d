"""Custom metrics for the Ray dashboard / Prometheus, all prefixed ``activeft_``.

``ray.util.metrics`` objects are created lazily in whichever process reports (driver, Ray
Data task, actor or Ray Train worker) and only when Ray is running, so library code can
call :func:`inc` and :func:`set` unconditionally.

A counter counts what a task did only where no retry repeats it: Ray may retry or re-execute a task, and
an increment inside it counts every attempt. The embed stage's ``activeft_images_embedded`` and
``activeft_decode_errors`` are therefore counted on the driver, from the shards each manifest commits
(:func:`activeft.embed._commit`).
"""

from __future__ import annotations

METRICS = {
    "activeft_images_embedded": ("counter", "Images embedded by the embed stage"),
    "activeft_decode_errors": ("counter", "Images that could not be read or decoded"),
    "activeft_select_iteration": ("gauge", "Current iteration of the selection optimiser"),
    "activeft_select_loss": ("gauge", "ActiveFT loss of the current iteration"),
    "activeft_kmeans_inertia": ("gauge", "k-means inertia (sum of squared distances) of the current iteration"),
    "activeft_dedup_duplicates": ("counter", "Near-duplicate rows found (not kept) by dedup or select --dedup"),
    "activeft_dedup_groups": ("counter", "Near-duplicate groups found by dedup or select --dedup"),
    "activeft_calibrate_pseudo_labels": ("counter", "Pseudo-labeled samples added by calibration"),
    "activeft_train_loss": ("gauge", "Finetuning training loss of the last epoch"),
    "activeft_val_accuracy": ("gauge", "Finetuning validation top-1 accuracy of the last evaluation"),
    "activeft_loop_round": ("gauge", "Rounds completed by the active-learning loop"),
}
TAGS = ("stage",)
_made: dict = {}


def _get(name: str):
    import ray

    if not ray.is_initialized():
        return None
    if name not in _made:
        from ray.util import metrics

        kind, description = METRICS[name]
        cls = metrics.Counter if kind == "counter" else metrics.Gauge
        _made[name] = cls(name, description=description, tag_keys=TAGS)
    return _made[name]


def inc(name: str, value: float = 1.0, stage: str = "") -> None:
    m = _get(name)
    if m is not None and value:
        m.inc(value, tags={"stage": stage})


def set(name: str, value: float, stage: str = "") -> None:  # noqa: A001 - mirrors Gauge.set
    m = _get(name)
    if m is not None:
        m.set(value, tags={"stage": stage})
