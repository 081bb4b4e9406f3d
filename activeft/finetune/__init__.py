"""The finetune stage: train the model the selection was for.

Modes:

- ``linear``: the backbone stays frozen; a head is trained on the stored embeddings of the
  training ids (no image is read): logistic regression (L-BFGS) or, with ``head="mlp"``,
  ASVP's MLP (:mod:`activeft.models.heads`). Runs in this process, anywhere; the CPU benchmarks use it.
- ``full``: a Ray Train ``TorchTrainer`` over a Ray Data dataset of the training images, decoded
  and augmented per epoch (timm's RandomResizedCrop + flip), the store's timm backbone and weights
  with a new head; the DeiT recipe of the papers, scaled for small sets (:mod:`.full`).
- ``lp-ft``: the linear probe first (on the embeddings), then full finetuning from it (ASVP's
  choice for few labels).

The classifier is the timm backbone's pooled pre-logits, L2-normalised (what the store holds),
then a linear head, so a head trained on stored embeddings is the same function on images.
``RUN/model.safetensors`` keeps timm's key names (the head under the model's classifier name);
:func:`activeft.load_model` rebuilds the module. ``RUN/classes.json`` and ``RUN/metrics.json`` (per-epoch
history, best and final validation top-1, config) sit beside it.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ..errors import LabelsError, ModelError, StoreError, check
from ..io import protocol, storage
from ..io.labels import class_indices, class_map, read_labels
from ..io.store import EmbeddingStore, open_store
from ..models.backbone import BackboneSpec
from ..models.classifier import METRICS, Classifier, build_classifier
from ..models.heads import train_linear, train_mlp
from ..params import BOOL, STORE, TABLE, TEXT, integer, number, one_of, optional
from ..runtime import metrics
from ..stages import Command, Section, stage

log = logging.getLogger(__name__)
MODES = ("linear", "full", "lp-ft")
KIND = protocol.Kind("finetuning run", METRICS, r"model\.safetensors|classes\.json|metrics\.json")


def _summary(info: dict, values: dict) -> str:
    return (f"{values['output']}: {values['mode']} on {info['config']['train_rows']} samples, "
            f"{len(info['classes'])} classes; val top-1 final {info['final_val_accuracy']}, "
            f"best {info['best_val_accuracy']}")


@stage({
    "store": STORE, "train": TABLE, "output": TEXT, "mode": one_of(*MODES), "val": optional(TABLE),
    "val_store": optional(STORE), "model": optional(TEXT), "pretrained": optional(TEXT),
    "epochs": optional(integer(1)), "lr": optional(number(0, strict=True)), "batch_size": integer(1),
    "weight_decay": optional(number(0)), "head": one_of("linear", "mlp"), "eval_every": integer(1),
    "num_workers": integer(1), "use_gpu": BOOL, "seed": integer(), "max_failures": integer(0), "resume": BOOL,
    "overwrite": BOOL}, flags={"output": ("-o",)}, output=KIND,
       command=Command("finetune", arguments=("store",), summary=_summary, example="activeft finetune stores/pool "
                       "--train cal/calibrated.parquet --val-store stores/test -o runs/r1 --mode full"),
       section=Section("train.finetune", fixed=("store", "train", "resume", "overwrite"),
                       extra={"output": (str, "{output}/finetune")}, always=True))
def finetune(store, *, train, output: str, mode: str = "linear", val=None, val_store=None, model: str | None = None,
             pretrained: str | None = None, epochs: int | None = None, lr: float | None = None,
             batch_size: int = 64, weight_decay: float | None = None, head: str = "linear", eval_every: int = 5,
             num_workers: int = 1, use_gpu: bool = False, seed: int = 0, max_failures: int = 3,
             resume: bool = False, overwrite: bool = False, _fail_at: int | None = None) -> dict:
    """Train a classifier on the labeled (and pseudo-labeled) training table.

    Parameters
    ----------
    store : str or EmbeddingStore
        The embedding store holding the training ids (their embeddings and image uris).
    train : str or pyarrow.Table
        ``id,label`` table: the labels that came back for a selection, or ActiveDC's
        ``calibrated.parquet`` (pseudo-labeled rows included).
    output : str
        Run directory: ``model.safetensors``, ``classes.json``, ``metrics.json``; Ray Train
        checkpoints under ``_work/``.
    mode : {"linear", "full", "lp-ft"}
        linear: a head on the stored embeddings; full: Ray Train on the images; lp-ft: the linear
        probe, then full.
    val : str or pyarrow.Table, optional
        Held-out ``id,label`` rows of the same store.
    val_store : str, optional
        A second store whose ``label`` column is the ground truth (e.g. an embedded test set).
    model : str, optional
        timm model for full / lp-ft; default the store's own (manifest).
    pretrained : str, optional
        Its weights: hub, none or a path; default the store's.
    epochs : int, optional
        linear: L-BFGS iterations (default 500) or MLP epochs (50); full / lp-ft: epochs (50).
    lr : float, optional
        full: 0.01 x global batch / 512 (the official recipe); mlp: 0.1.
    batch_size : int, default=64
        Images per worker and step (full, lp-ft).
    weight_decay : float, optional
        linear: 1 / n (scikit-learn's C=1); full: 1e-4.
    head : {"linear", "mlp"}
        linear mode: logistic regression ('linear') or ASVP's MLP ('mlp').
    eval_every : int, default=5
        Epochs between validations (and checkpoints) in full / lp-ft; the last epoch always.
    num_workers : int, default=1
        Ray Train workers for full / lp-ft (DDP; nccl on GPU).
    use_gpu : bool
        Train on GPUs (bf16 autocast).
    seed : int, default=0
        Random seed.
    max_failures : int, default=3
        Worker-group restarts from the last checkpoint (Ray Train ``FailureConfig``).
    resume : bool
        Continue the run in ``output`` (same config).
    overwrite : bool
        Replace an existing run in ``output`` (only what a run run wrote: any other file
        there is refused); the new one is written beside it and swapped in when complete.

    Returns
    -------
    dict
        The content of ``metrics.json``.

    Examples
    --------
    >>> import activeft, numpy as np, pyarrow as pa, tempfile
    >>> d = tempfile.mkdtemp()
    >>> x = np.random.default_rng(0).normal(size=(40, 4)).astype("float32") + np.repeat(np.eye(4)[:2] * 4, 20, 0)
    >>> np.save(f"{d}/x.npy", x)
    >>> _ = open(f"{d}/ids.txt", "w").write("\\n".join(f"i{j}" for j in range(40)))
    >>> store = activeft.import_embeddings(f"{d}/x.npy", f"{d}/store", ids=f"{d}/ids.txt")
    >>> labels = pa.table({"id": [f"i{j}" for j in range(40)], "label": ["a"] * 20 + ["b"] * 20})
    >>> m = activeft.finetune(store, train=labels.slice(0, 30), val=labels.slice(30), output=f"{d}/run")
    >>> m["classes"], m["final_val_accuracy"]
    (['a', 'b'], 1.0)
    """
    owner = "finetune"
    start = time.perf_counter()
    check(head == "linear" or mode == "linear", "head", owner, "'linear' for full and lp-ft", head)
    check(val is None or val_store is None, "val", owner, "unset when val_store is given (pick one)", val)
    store = open_store(store)
    table = read_labels(train, "train")
    classes = class_map(table.column("label"))
    if len(classes) < 2:
        raise LabelsError(f"the train table has a single class ({classes[0]!r}); a classifier needs at least two")
    rows = store.rows_of(table.column("id").to_pylist(), "train ids")
    target = class_indices(table.column("label"), classes)
    weight = _weights(table)
    val_source, val_rows, val_target = validation_set(store, val, val_store, classes)
    spec, dim = _backbone(store, model, pretrained, mode) if mode != "linear" else (None, store.dim)
    backbone = spec or _store_spec(store)
    config = {"mode": mode, "head": head, "model": backbone.model if backbone else None,
              "pretrained": backbone.pretrained if backbone else None,
              "image_size": backbone.image_size if backbone else None,
              "epochs": epochs, "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay,
              "eval_every": eval_every, "num_workers": num_workers, "use_gpu": use_gpu, "seed": seed,
              "store": store.uri, "train_rows": len(rows), "weighted": weight is not None,
              "val": _describe_val(val, val_store)}
    output = storage.output_uri(output)
    with protocol.writing(output, KIND, config, resume=resume, overwrite=overwrite) as out:
        if out.finished:
            return storage.read_json(storage.join(output, METRICS))  # resumed a run that had finished
        x = torch.from_numpy(store.embeddings_at(rows))
        if mode == "linear":
            classifier, history = _fit_head(x, torch.from_numpy(target), weight, len(classes), head, epochs,
                                            weight_decay, lr, seed)
            if val_rows is not None:
                val_acc = accuracy(classifier, val_source.embeddings_of(val_rows), val_target)
                history[-1]["val_accuracy"] = val_acc
            if backbone is not None:  # the full model: the store's backbone with the trained head
                full, _ = build_classifier(backbone, len(classes), head)
                full.head = classifier.head
                classifier = full
            state, best_epoch = classifier.timm_state_dict(), len(history) - 1
        else:
            from .full import fit

            head_init = None
            if mode == "lp-ft":
                head_init = train_linear(x, torch.from_numpy(target), len(classes), weight=weight,
                                         weight_decay=weight_decay)
                head_init = {k: v.detach() for k, v in head_init.state_dict().items()}
            state, history, best_epoch = fit(
                store, rows, target, weight, classes, spec, val_source, val_rows, val_target, config, head_init,
                out.dir, max_failures=max_failures, fail_at=_fail_at)
        info = _finish(out, dim, classes, config, state, history, best_epoch, start)
    log.info("finetune: %s on %d samples, %d classes: final val top-1 %s, best %s -> %s", mode, len(rows),
             len(classes), info["final_val_accuracy"], info["best_val_accuracy"], output)
    return info


def _weights(table) -> torch.Tensor | None:
    """The rows' weights: a ``confidence`` column (label propagation's), else none."""
    if "confidence" not in table.column_names:
        return None
    weight = torch.from_numpy(table.column("confidence").to_numpy(zero_copy_only=False).astype(np.float64))
    if not torch.isfinite(weight).all() or (weight < 0).any() or not weight.sum() > 0:
        raise LabelsError("the train table's 'confidence' column (the rows' weights) must hold finite values >= 0, "
                          "not all 0")
    return weight


def _fit_head(x, y, weight, n_classes, head, epochs, weight_decay, lr, seed):
    losses: list = []
    if head == "mlp":
        module = train_mlp(x, y, n_classes, weight=weight, epochs=epochs or 50, lr=lr or 0.1, seed=seed,
                           history=losses)
    else:
        module = train_linear(x, y, n_classes, weight=weight, weight_decay=weight_decay, max_iter=epochs or 500,
                              history=losses)
    classifier = Classifier(None, module)
    with torch.no_grad():
        train_acc = float((classifier(x).argmax(1) == y).float().mean())
    metrics.set("activeft_train_loss", losses[-1], stage="finetune")
    history = [{"epoch": i, "loss": v} for i, v in enumerate(losses)]
    history[-1]["train_accuracy"] = train_acc
    return classifier, history


class _ValSource:
    """Where validation rows live: a store (embeddings and uris) and its row numbers."""

    def __init__(self, store: EmbeddingStore):
        self.store = store

    def embeddings_of(self, rows) -> torch.Tensor:
        return torch.from_numpy(self.store.embeddings_at(rows))

    def uris_of(self, rows) -> list[str]:
        if "uri" not in self.store.columns:
            raise StoreError(f"store {self.store.uri} has no image uris; full finetuning needs images")
        return self.store.take(rows, ["uri"]).column("uri").to_pylist()


def validation_set(store, val, val_store, classes):
    if val is None and val_store is None:
        return None, None, None
    if val is not None:
        table, source = read_labels(val, "val"), _ValSource(store)
        rows = store.rows_of(table.column("id").to_pylist(), "val ids")
        labels = table.column("label").to_pylist()
    else:
        other = open_store(val_store)
        if not other.has_labels:
            raise StoreError(f"val store {other.uri} has no 'label' column")
        source, rows = _ValSource(other), np.arange(len(other))
        labels = other.read(columns=["label"]).column("label").to_pylist()
    known = {str(c): i for i, c in enumerate(classes)}
    unseen = sum(str(v) not in known for v in labels)
    if unseen:
        log.warning("finetune: %d of %d validation rows have classes never seen in training; they count as errors",
                    unseen, len(labels))
    return source, rows, np.array([known.get(str(v), -1) for v in labels])


def accuracy(classifier, x, target) -> float:
    with torch.no_grad():
        return float((classifier(x).argmax(1).numpy() == target).mean())


def _store_spec(store: EmbeddingStore) -> BackboneSpec | None:
    b = store.manifest.get("backbone") or {}
    return BackboneSpec(b["model"], b.get("pretrained", "hub"), b.get("image_size")) if b.get("model") else None


def _backbone(store, model, pretrained, mode) -> tuple[BackboneSpec, int]:
    """The backbone to finetune and its feature size; checked now, so a bad one fails in one line."""
    spec = _store_spec(store)
    if model is None and spec is None:
        raise ModelError(f"store {store.uri} has no backbone (imported embeddings); full finetuning needs "
                         "--model and --pretrained")
    if "uri" not in store.columns:
        raise StoreError(f"store {store.uri} has no image uris; full finetuning needs images")
    if model is not None and spec is not None and model != spec.model:
        log.warning("finetune: training %s although the store was embedded with %s", model, spec.model)
    spec = BackboneSpec(model or spec.model, pretrained or (spec.pretrained if spec else "hub"),
                        spec.image_size if spec else None)
    dim = int(spec.build()[0].num_features)
    if mode == "lp-ft" and dim != store.dim:
        raise ModelError(f"lp-ft starts from a linear probe on the store's {store.dim}-d embeddings, but {spec.model} "
                         f"has {dim}-d features; use the store's backbone or --mode full")
    return spec, dim


def _describe_val(val, val_store):
    if val_store is not None:
        return {"store": str(getattr(val_store, "uri", val_store))}
    if val is not None:
        return {"table": val if isinstance(val, str) else f"{val.num_rows} rows"}
    return None


def _finish(out: protocol.Output, dim, classes, config, state, history, best_epoch, start) -> dict:
    from safetensors.torch import save

    vals = [h["val_accuracy"] for h in history if "val_accuracy" in h]
    info = {**protocol.header(), "config": config, "classes": classes, "dim": dim, "history": history,
            "final_val_accuracy": vals[-1] if vals else None, "best_val_accuracy": max(vals) if vals else None,
            "exported_epoch": best_epoch, "seconds": round(time.perf_counter() - start, 3)}
    if vals:
        metrics.set("activeft_val_accuracy", vals[-1], stage="finetune")
    storage.write_bytes(out.join("model.safetensors"), save(state))
    storage.write_json(out.join("classes.json"), classes)
    return out.commit(info)  # files.json, then metrics.json (last), then the swap on --overwrite

