"""Self-supervised training of a small timm backbone without labels: SimCLR on a CPU.

SimCLR (Chen, Kornblith, Norouzi and Hinton, "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020): two augmented views of each image go through the backbone
and a projection head (Linear-BatchNorm-ReLU-Linear, 512 hidden, 128 out); the NT-Xent loss
makes each view pick out its partner among the ``2 * batch - 1`` other views of the batch. The
head is dropped afterwards; the backbone's state dict (timm key names, ``num_classes=0``) is
what :func:`activeft.embed` loads with ``model=NAME, pretrained=PATH``.

The augmentations suit small grayscale images and run on whole batches with torch ops: one
affine resampling per view (random resized crop, horizontal flip, a small rotation) to the
embed stage's input size, then brightness/contrast jitter and Gaussian noise. Inputs are
normalised with the model's own timm data config, as the embed stage does.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from ..errors import ParameterError
from ..params import TEXT, integer, number, validated

log = logging.getLogger(__name__)


@dataclass
class Encoder:
    """A trained backbone: timm ``model`` name, input ``image_size``, its ``state_dict`` (no
    projection head), the mean NT-Xent loss of each epoch and the training wall time."""

    model: str
    image_size: int
    state_dict: dict
    losses: list[float]
    seconds: float

    def save(self, path: str) -> str:
        """Write the weights as ``.safetensors`` (written under a temporary name, then renamed)."""
        from safetensors.torch import save_file

        tmp = f"{path}.{os.getpid()}.tmp"
        save_file({k: v.contiguous() for k, v in self.state_dict.items()}, tmp,
                  metadata={"model": self.model, "image_size": str(self.image_size), "method": "simclr"})
        os.replace(tmp, path)
        return path


@validated({"model": TEXT, "image_size": integer(8), "epochs": integer(1), "batch_size": integer(2),
            "lr": number(0, strict=True), "temperature": number(0, strict=True),
            "min_scale": number(0, strict=True, maximum=1), "seed": integer()}, "ssl.train")
def train(images: np.ndarray, *, model: str = "test_resnet", image_size: int = 32, epochs: int = 10,
          batch_size: int = 256, lr: float = 2e-3, temperature: float = 0.2, min_scale: float = 0.3,
          seed: int = 0) -> Encoder:
    """Train ``model`` on ``images`` with SimCLR; deterministic for a seed and thread count.

    Parameters
    ----------
    images : numpy.ndarray
        uint8 ``(n, h, w)`` grayscale or ``(n, h, w, 3)`` RGB images, n >= 2.
    model : str, default="test_resnet"
        timm model name (random init; pooled features, ``num_classes=0``).
    image_size : int, default=32
        Side of the views; embed with the same ``image_size``.
    epochs : int, default=10
        Passes over the images (the last partial batch of each is dropped).
    batch_size : int, default=256
        Images per step (each gives two views); capped at n.
    lr : float, default=2e-3
        Peak AdamW learning rate (weight decay 1e-4), after a linear warm-up over the first
        tenth of the steps, then a cosine decay to zero.
    temperature : float, default=0.2
        NT-Xent temperature.
    min_scale : float, default=0.3
        Smallest area fraction of a random resized crop.
    seed : int, default=0
        Seeds the initialisation, the batch order and the augmentations.

    Returns
    -------
    Encoder

    Examples
    --------
    >>> import numpy as np
    >>> from activeft.models.ssl import train
    >>> images = np.random.default_rng(0).integers(0, 256, (16, 28, 28), dtype=np.uint8)
    >>> enc = train(images, epochs=2, batch_size=8)
    >>> len(enc.losses), enc.image_size
    (2, 32)
    """
    import timm
    import torch
    import torch.nn.functional as F

    from .backbone import BackboneSpec

    x = _as_batch(images)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = timm.create_model(model, pretrained=False, num_classes=0)
        if hasattr(net, "set_input_size"):
            net.set_input_size(img_size=(image_size, image_size))
        head = torch.nn.Sequential(torch.nn.Linear(net.num_features, 512), torch.nn.BatchNorm1d(512),
                                   torch.nn.ReLU(inplace=True), torch.nn.Linear(512, 128))
    cfg = BackboneSpec(model, "none", image_size).data_config(net)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    g = torch.Generator().manual_seed(seed)
    batch = min(batch_size, len(x))
    per_epoch = len(x) // batch
    total = epochs * per_epoch
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    warmup = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup if s < warmup else
                                              0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    net.train()
    head.train()
    labels = torch.arange(2 * batch).roll(batch)  # view i's partner is view i + batch (mod 2 * batch)
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=g)
        total_loss = 0.0
        for step in range(per_epoch):
            chunk = x[order[step * batch:(step + 1) * batch]]
            views = torch.cat([augment(chunk, image_size, min_scale, g), augment(chunk, image_size, min_scale, g)])
            z = F.normalize(head(net.forward_head(net.forward_features((views - mean) / std), pre_logits=True)), dim=1)
            logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
            loss = F.cross_entropy(logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item()
        losses.append(total_loss / per_epoch)
        log.info("ssl: epoch %d/%d, NT-Xent %.4f (%.0f s)", epoch + 1, epochs, losses[-1], time.perf_counter() - start)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return Encoder(model, image_size, state, losses, round(time.perf_counter() - start, 1))


def _as_batch(images):
    """uint8 ``(n, h, w)`` / ``(n, h, w, 3)`` array -> uint8 ``(n, c, h, w)`` tensor; else a one-line error."""
    import torch

    shape = getattr(images, "shape", None)
    dtype = getattr(images, "dtype", None)
    if not (isinstance(images, np.ndarray) and dtype == np.uint8 and (images.ndim == 3 or (
            images.ndim == 4 and shape[3] == 3)) and shape[0] >= 2):
        raise ParameterError("The 'images' parameter of ssl.train must be a uint8 numpy array (n, h, w) or "
                             f"(n, h, w, 3) with n >= 2. Got {type(images).__name__} of dtype {dtype} and "
                             f"shape {shape} instead.")
    x = torch.tensor(images)
    return (x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)).contiguous()


def augment(batch, size: int, min_scale: float, generator):
    """One random view of each image of a uint8 ``(b, c, h, w)`` tensor, as float ``(b, 3, size, size)``
    in [0, 1]: one affine resampling (random resized crop of area ``min_scale``..1 and aspect
    3/4..4/3, horizontal flip, rotation up to 10 degrees), then brightness/contrast jitter
    (probability 0.8) and Gaussian noise of std 0.05 (probability 0.5), drawn from ``generator``."""
    import torch
    import torch.nn.functional as F

    b = len(batch)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=generator)  # noqa: E731
    area, aspect = u(min_scale, 1), torch.exp(u(math.log(3 / 4), math.log(4 / 3)))
    w, h = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    angle = u(-math.pi / 18, math.pi / 18)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([w * flip * cos, -h * sin, u(-1, 1) * (1 - w)], 1),
                         torch.stack([w * flip * sin, h * cos, u(-1, 1) * (1 - h)], 1)], 1)
    grid = F.affine_grid(theta, [b, 1, size, size], align_corners=False)
    x = F.grid_sample(batch.float() / 255, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    jitter = (torch.rand(b, generator=generator) < 0.8).float().view(b, 1, 1, 1)
    contrast, brightness = u(0.6, 1.4).view(b, 1, 1, 1), u(-0.2, 0.2).view(b, 1, 1, 1)
    level = x.mean(dim=(1, 2, 3), keepdim=True)
    x = x + jitter * ((x - level) * (contrast - 1) + brightness)
    noise = (torch.rand(b, generator=generator) < 0.5).float().view(b, 1, 1, 1) * 0.05
    x = (x + noise * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
