"""timm backbones: building, weights, and the model's own preprocessing.

Models come only from ``timm.create_model``; preprocessing only from
``timm.data.resolve_model_data_config`` and ``create_transform``, so nothing hard-codes 224
or the ImageNet mean. Weights are ``none`` (random init, announced loudly), ``hub`` (timm's
normal download) or a path / URI to a ``.safetensors`` or ``.pth`` file, read with
safetensors or ``torch.load(weights_only=True)`` (timm's ``load_state_dict``) and checked
key by key: weights that do not fit the model are an error, not a silent partial load.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelError, suggest
from ..io import storage

log = logging.getLogger(__name__)

_HUB_HINT = "pass --pretrained PATH (a local .safetensors/.pth) or --pretrained none"


@dataclass(frozen=True)
class BackboneSpec:
    """What defines an embedding: the timm model name, its weights and the input size."""

    model: str
    pretrained: str = "hub"
    image_size: int | None = None

    def build(self, drop_path_rate: float | None = None):
        """``(model, weights_record)``; the model is in eval mode on the CPU."""
        import timm

        if not timm.is_model(self.model):
            raise ModelError(suggest(self.model, timm.list_models(), "timm model", "see timm.list_models()"))
        kwargs = {"num_classes": 0}
        if drop_path_rate is not None:
            kwargs["drop_path_rate"] = drop_path_rate
        if self.pretrained == "hub":
            try:
                model = timm.create_model(self.model, pretrained=True, **kwargs)
            except Exception as e:  # network, missing cfg, hub errors: all one story for the user
                raise ModelError(f"could not load hub weights for {self.model}: "
                                 f"{storage._first_line(e)}; {_HUB_HINT}") from e
            cfg = model.pretrained_cfg
            record = {"pretrained": "hub", "hf_hub_id": cfg.get("hf_hub_id"), "url": cfg.get("url")}
        else:
            import torch

            with torch.random.fork_rng(devices=[]):  # "none" is a seeded init: every actor gets the same weights
                torch.manual_seed(0)
                model = timm.create_model(self.model, pretrained=False, **kwargs)
            if self.pretrained == "none":
                log.warning("backbone %s has RANDOM weights (--pretrained none): embeddings carry no "
                            "pretrained knowledge", self.model)
                record = {"pretrained": "none", "seed": 0}
            else:
                record = load_weights(model, self.pretrained)
        if self.image_size is not None and hasattr(model, "set_input_size"):
            model.set_input_size(img_size=(self.image_size, self.image_size))
        return model.eval(), record

    def data_config(self, model) -> dict:
        """timm's data config for the model, with ``image_size`` applied."""
        from timm.data import resolve_data_config

        args = {} if self.image_size is None else {"input_size": (3, self.image_size, self.image_size)}
        cfg = resolve_data_config(args, model=model)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def load_weights(model, uri: str) -> dict:
    """Load a weights file into ``model``; every key must fit. Returns the manifest record."""
    from timm.models import load_state_dict

    path = _local_copy(uri)
    try:
        state = load_state_dict(path, weights_only=True)
    except Exception as e:
        raise ModelError(f"cannot read weights {uri}: {storage._first_line(e)}") from e
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    own = model.state_dict()
    head = model.pretrained_cfg.get("classifier") or ()
    head = (head,) if isinstance(head, str) else tuple(head)
    is_head = lambda k: any(k.startswith(h + ".") for h in head)  # noqa: E731
    state = {k: v for k, v in state.items()
             if not (is_head(k) and (k not in own or own[k].shape != v.shape))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(f"weights {uri} do not fit {type(model).__name__}: {len(missing)} missing keys "
                         f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}")
    return {"pretrained": str(uri), "sha256": _sha256(path)}


def _local_copy(uri: str) -> str:
    """A local path for ``uri``; remote files are downloaded once into the temp dir."""
    if not storage.is_remote(uri):
        path = os.path.abspath(os.path.expanduser(uri))
        if not os.path.isfile(path):
            raise ModelError(f"weights file {uri} does not exist")
        return path
    name = hashlib.sha1(uri.encode()).hexdigest()[:16] + "-" + uri.rsplit("/", 1)[-1]
    path = os.path.join(tempfile.gettempdir(), "activeft-weights", name)
    if not os.path.isfile(path):
        if not storage.is_file(uri):
            raise ModelError(f"weights file {uri} does not exist")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(storage.read_bytes(uri))
        os.replace(tmp, path)
    return path


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Preprocess:
    """RGB PIL image (:func:`activeft.models.images.open_images` makes one) -> uint8 CHW array, by timm's
    eval (or train) transform without normalisation.

    Normalisation (``/255``, mean, std) runs on the model's device in :meth:`normalize`,
    exactly as timm's ``use_prefetcher=True`` path splits the work.
    """

    config: dict
    training: bool = False
    _transform: object = field(init=False, repr=False)

    def __post_init__(self):
        from timm.data import create_transform

        cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.config.items()}
        extra = {"color_jitter": 0.0} if self.training else {}
        self._transform = create_transform(**cfg, is_training=self.training, use_prefetcher=True, **extra)

    def __call__(self, image) -> np.ndarray:
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(self._transform(image), dtype=np.uint8)

    def normalize(self, x):
        """uint8 ``(N, 3, H, W)`` tensor -> normalised float32 tensor on the same device."""
        import torch

        mean = torch.tensor(self.config["mean"], device=x.device).view(1, -1, 1, 1) * 255
        std = torch.tensor(self.config["std"], device=x.device).view(1, -1, 1, 1) * 255
        return (x.float() - mean) / std


def pooled_features(model, x):
    """timm's pre-logits features: the CLS token for ViTs, pooled features for CNNs."""
    return model.forward_head(model.forward_features(x), pre_logits=True)
