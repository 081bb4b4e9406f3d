"""The finetuned classifier: a timm backbone (or none) with a head, and how a finished run is reloaded."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import StoreError
from ..io import storage
from .backbone import BackboneSpec, pooled_features
from .heads import MLP

METRICS = "metrics.json"


class Classifier(nn.Module):
    """timm backbone -> pooled pre-logits -> L2-normalise -> linear head (``backbone`` may be None:
    then the input is the stored embedding itself)."""

    def __init__(self, backbone: nn.Module | None, head: nn.Module, classifier_name: str = "head"):
        super().__init__()
        self.backbone, self.head, self.classifier_name = backbone, head, classifier_name

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.backbone is None else F.normalize(pooled_features(self.backbone, x), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def timm_state_dict(self) -> dict:
        """Backbone keys as timm names them, the head under the model's classifier name."""
        state = {} if self.backbone is None else dict(self.backbone.state_dict())
        state.update({f"{self.classifier_name}.{k}": v for k, v in self.head.state_dict().items()})
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def build_classifier(spec: BackboneSpec | None, n_classes: int, head: str = "linear", *, dim: int | None = None,
                     drop_path_rate: float | None = None) -> tuple[Classifier, dict | None]:
    """The backbone of ``spec`` and a new head; without a backbone, a head on ``dim``-d embeddings."""
    if spec is None:
        backbone, record, name = None, None, "head"
    else:
        backbone, record = spec.build(drop_path_rate=drop_path_rate)
        cls = backbone.pretrained_cfg.get("classifier") or "head"
        name = cls if isinstance(cls, str) else cls[0]
        dim = int(backbone.num_features)
    module = MLP(dim, n_classes) if head == "mlp" else nn.Linear(dim, n_classes)
    return Classifier(backbone, module, name), record


def load_model(run: str) -> tuple[Classifier, list]:
    """The finetuned classifier of a finished run, in eval mode, and its classes.

    Examples
    --------
    >>> import activeft
    >>> activeft.load_model("no/such/run")
    Traceback (most recent call last):
    ...
    activeft.errors.StoreError: no/such/run is not a finished finetuning run (no metrics.json)
    """
    from safetensors.torch import load

    if not storage.exists(storage.join(run, METRICS)):
        raise StoreError(f"{run} is not a finished finetuning run (no {METRICS})")
    info = storage.read_json(storage.join(run, METRICS))
    cfg = info["config"]
    spec = BackboneSpec(cfg["model"], "none", cfg.get("image_size")) if cfg.get("model") else None
    model, _ = build_classifier(spec, len(info["classes"]), cfg["head"], dim=info["dim"])
    state = load(storage.read_bytes(storage.join(run, "model.safetensors")))
    prefix = model.classifier_name + "."
    model.head.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    if model.backbone is not None:
        model.backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith(prefix)})
    return model.eval(), info["classes"]
