"""Full finetuning on Ray Train: the DeiT recipe of ActiveFT / ActiveDC, scaled for small sets.

Official recipe (github.com/yichen928/ActiveFT ``deit/main.py``, arguments as run): SGD
(Nesterov) momentum 0.9, weight decay 1e-4 (none on biases and norms), lr 0.01 x global batch
/ 512, cosine schedule with 5 warm-up epochs, label smoothing 0.1, drop-path 0.1, gradient
clipping 2.0, AMP; RandomResizedCrop + flip, no mixup / RandAugment. "Scaled for small sets":
50 epochs by default instead of 1000, and warm-up min(5, epochs / 10) epochs. Augmentation runs
per epoch in Ray Data (ActiveDC's frozen-augmentation bug is not copied).

Each worker gets its share of a Ray Data dataset of the training images
(``get_dataset_shard``), trains the DDP model (``prepare_model``), and evaluates its share of
the validation images (correct counts all-reduced). Rank 0 checkpoints at every evaluation;
Ray Train keeps the best by validation accuracy and the latest, restarts a failed worker group
from the latest (``FailureConfig``), and a rerun with the same output resumes.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import time

import numpy as np
import pyarrow as pa
import torch

from ..io import storage
from ..models.backbone import Preprocess
from ..models.classifier import build_classifier
from ..models.heads import cross_entropy
from ..models.images import read_images
from ..runtime import metrics
from ..runtime.runner import inject_failure, read_checkpoint, report, train_group

log = logging.getLogger(__name__)


def decode(batch: dict, config: dict, training: bool) -> dict:
    """Ray Data task: read, decode and transform each image; unreadable rows are dropped (counted)."""
    images, errors = read_images(list(batch["uri"]), config, training)
    ok = np.array([not e for e in errors], dtype=bool)
    if not ok.all():
        metrics.inc("activeft_decode_errors", int((~ok).sum()), stage="finetune")
    return {"image": images[ok], "target": np.asarray(batch["target"])[ok], "weight": np.asarray(batch["weight"])[ok]}


def _param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, total: int, warmup: int, base: float, floor: float = 1e-5) -> float:
    if step < warmup:
        return 1e-6 + (base - 1e-6) * step / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * t))


def train_loop(config: dict) -> None:
    """The Ray Train worker function (config only: it must pickle)."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":  # Ray gives 1 thread per reserved CPU; use the cores decoding leaves idle (1.6x)
        torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"] + rank)
    model, _ = build_classifier(config["spec"], config["n_classes"], drop_path_rate=0.1)
    if config["head_init"] is not None:
        model.head.load_state_dict(config["head_init"])
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.SGD(_param_groups(model, config["weight_decay"]), lr=config["lr"], momentum=0.9, nesterov=True)
    history, start = [], 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = torch.load(io.BytesIO(read_checkpoint(checkpoint, "state.pt")), weights_only=True)
        _unwrap(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history, start = state["history"], state["epoch"] + 1
    pre = Preprocess(config["data_config"])
    amp = torch.bfloat16 if device.type == "cuda" else None
    train = ray.train.get_dataset_shard("train")
    steps = max(1, math.ceil(config["train_rows"] / (config["batch_size"] * world)))
    total, warmup = config["epochs"] * steps, min(5, config["epochs"] // 10) * steps
    for epoch in range(start, config["epochs"]):
        began = time.perf_counter()
        model.train()
        seen, loss_sum, step = 0, 0.0, epoch * steps
        lr = _lr_at(min(step, total), total, warmup, config["lr"])
        for batch in train.iter_torch_batches(batch_size=config["batch_size"], local_shuffle_buffer_size=256,
                                              device=device):
            lr = _lr_at(min(step, total), total, warmup, config["lr"])
            for group in opt.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, amp, enabled=amp is not None):
                logits = model(pre.normalize(batch["image"]))
                loss = cross_entropy(logits.float(), batch["target"].long(),
                                     batch["weight"] if config["weighted"] else None, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
            opt.step()
            seen, loss_sum, step = seen + len(batch["target"]), loss_sum + loss.item() * len(batch["target"]), step + 1
        totals = torch.tensor([loss_sum, seen], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(totals)
        record = {"epoch": epoch, "loss": float(totals[0] / max(totals[1], 1)), "lr": lr,
                  "images": int(totals[1]), "seconds": round(time.perf_counter() - began, 3)}
        if checkpoint is not None and epoch == start:
            record["resumed"] = True  # the first epoch after a restart from a checkpoint
        last = epoch == config["epochs"] - 1
        if config["has_val"] and ((epoch + 1) % config["eval_every"] == 0 or last):
            record["val_accuracy"] = _evaluate(model, ray.train.get_dataset_shard("val"), pre, device, amp, config)
        history.append(record)
        metrics.set("activeft_train_loss", record["loss"], stage="finetune")
        if rank == 0:
            log.info("finetune: epoch %d/%d loss %.4f lr %.2e%s", epoch + 1, config["epochs"], record["loss"], lr,
                     f" val top-1 {record['val_accuracy']:.4f}" if "val_accuracy" in record else "")
        if "val_accuracy" in record or last or not config["has_val"]:
            _save(model, opt, epoch, history, rank)
        else:
            ray.train.report(record)
        inject_failure(config["fail_at"], epoch + 1, checkpoint is not None, rank)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _save(model, opt, epoch, history, rank) -> None:
    files = None
    if rank == 0:
        buf = io.BytesIO()
        torch.save({"model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                    "history": history}, buf)
        files = {"state.pt": buf.getvalue()}
    report({**history[-1], "val_accuracy": history[-1].get("val_accuracy", -1.0)}, files)


def _evaluate(model, shard, pre, device, amp, config) -> float:
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for batch in shard.iter_torch_batches(batch_size=config["batch_size"], device=device):
            with torch.autocast(device.type, amp, enabled=amp is not None):
                pred = model(pre.normalize(batch["image"])).argmax(1)
            counts += torch.tensor([(pred == batch["target"]).sum().item(), len(pred)], device=device,
                                   dtype=torch.float64)
    torch.distributed.all_reduce(counts)
    return float(counts[0] / max(counts[1], 1))


def fit(store, rows, target, weight, classes, spec, val_source, val_rows, val_target, config, head_init, output, *,
        max_failures: int, fail_at: int | None):
    """Train on Ray Train; return ``(timm state dict, history, exported epoch)``.

    A re-run with the same ``output`` continues from its latest checkpoint: Ray Train V2 restores
    a run of the same name and storage path.
    """
    import ray
    from ray.train import CheckpointConfig

    from ..runtime import cluster

    cluster.init()
    model, _ = spec.build()
    data_config = spec.data_config(model)
    del model
    n_workers = config["num_workers"]
    order = np.random.default_rng(config["seed"]).permutation(len(rows))  # tables come sorted (often by class)
    datasets = {"train": _images(store.take(np.asarray(rows)[order], ["uri"]).column("uri").to_pylist(),
                                 np.asarray(target)[order], data_config, True,
                                 None if weight is None else weight.numpy()[order])}
    if val_rows is not None:
        datasets["val"] = _images(val_source.uris_of(val_rows), val_target, data_config, False)
    epochs, batch = config["epochs"] or 50, config["batch_size"]
    lr = config["lr"] or 0.01 * batch * n_workers / 512
    cpus = float(ray.cluster_resources().get("CPU", 1))
    per_worker = 1.0 if config["use_gpu"] or cpus > n_workers else max(0.1, (cpus - 1) / n_workers)
    if per_worker < 1:  # leave a CPU to Ray Data's decode tasks, or the job never gets its images
        log.info("finetune: %d workers on %g CPUs: %.2f CPU per worker, one left for data loading", n_workers, cpus,
                 per_worker)
    loop_config = {"spec": spec, "n_classes": len(classes), "head_init": head_init,
                   "data_config": data_config, "epochs": epochs, "lr": lr, "batch_size": batch,
                   "weight_decay": 1e-4 if config["weight_decay"] is None else config["weight_decay"],
                   "eval_every": config["eval_every"], "seed": config["seed"], "train_rows": len(rows),
                   "has_val": val_rows is not None, "weighted": weight is not None, "fail_at": fail_at,
                   "threads": max(1, int(cpus) // n_workers)}
    result = train_group(train_loop, loop_config, num_workers=n_workers, use_gpu=config["use_gpu"],
                         work=storage.join(output, "_work", "train"), max_failures=max_failures, datasets=datasets,
                         resources_per_worker={"CPU": per_worker},
                         checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_order="max",
                                                            checkpoint_score_attribute="val_accuracy"))
    best = max(result.best_checkpoints, key=lambda c: c[1]["val_accuracy"])[0] if val_rows is not None \
        else result.checkpoint
    history = torch.load(io.BytesIO(read_checkpoint(result.checkpoint, "state.pt")), weights_only=True)["history"]
    state = torch.load(io.BytesIO(read_checkpoint(best, "state.pt")), weights_only=True)
    model, _ = build_classifier(dataclasses.replace(spec, pretrained="none"), len(classes))
    model.load_state_dict(state["model"])
    return model.timm_state_dict(), history, state["epoch"]


def _images(uris, target, data_config, training, weight=None):
    """Ray Data: the images decoded and transformed, with their class and weight (1 when not given)."""
    import ray

    weight = np.ones(len(uris)) if weight is None else weight
    table = pa.table({"uri": uris, "target": pa.array(np.asarray(target, dtype=np.int64)),
                      "weight": pa.array(np.asarray(weight, dtype=np.float32))})
    return ray.data.from_arrow(table).map_batches(decode, batch_format="numpy", batch_size=32,
                                                  fn_kwargs={"config": data_config, "training": training})

