"""Classifier heads trained on stored embeddings (no images): the linear probe and the MLP proxy.

- :func:`train_linear` is multinomial logistic regression, full-batch L-BFGS on
  ``mean CE + (weight_decay / 2) |W|^2`` (bias unpenalised; the mean weighted by the rows' weights
  when given, as sklearn's ``sample_weight``). ``weight_decay = 1 / n`` is
  scikit-learn's ``LogisticRegression(C=1)``, the linear check ActiveDC's ``DC_v10.py`` runs.
  Convex, deterministic, no learning rate to tune: one recipe for every selection method.
- :func:`train_mlp` is the proxy of ASVP (github.com/ZiTingW/asvp, ``dataset_model.MLP`` and
  ``train.py``): Linear(D, H) -> BatchNorm1d -> ReLU -> Linear(H, C), from scratch, SGD
  (Nesterov, momentum 0.9) lr 0.1, no weight decay, batch 2048, 50 epochs, learning rate
  ``lr * cos(7 pi / 16 * t / T)`` per iteration, cross-entropy.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
                  **kwargs) -> torch.Tensor:
    """Cross-entropy, its mean weighted by the rows' ``weight`` (None: the plain mean)."""
    if weight is None:
        return F.cross_entropy(logits, y, **kwargs)
    return (F.cross_entropy(logits, y, reduction="none", **kwargs) * weight).sum() / weight.sum().clamp_min(1e-12)


def train_linear(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, weight: torch.Tensor | None = None,
                 weight_decay: float | None = None, max_iter: int = 500, history: list | None = None) -> nn.Linear:
    """Logistic regression on ``x`` (n, D), rows weighted by ``weight`` (sklearn's ``sample_weight``);
    ``weight_decay`` defaults to ``1 / n`` (``1 / sum(weight)``), sklearn's C=1."""
    x, y = x.float(), y.long()
    weight = None if weight is None else weight.double().to(x.device)
    wd = (1.0 / (len(x) if weight is None else float(weight.sum()))) if weight_decay is None else weight_decay
    head = nn.Linear(x.shape[1], n_classes).to(x.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=max_iter, tolerance_grad=1e-6,
                            tolerance_change=1e-9, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = cross_entropy(head(x), y, weight) + wd / 2 * head.weight.pow(2).sum()
        loss.backward()
        if history is not None:
            history.append(loss.item())
        return loss

    opt.step(closure)
    return head


class MLP(nn.Module):
    """ASVP's proxy: Linear -> BatchNorm1d -> ReLU -> Linear."""

    def __init__(self, dim: int, n_classes: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.fc1, self.bn, self.fc2 = nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.Linear(hidden, n_classes)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.hidden(x))


def train_mlp(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, weight: torch.Tensor | None = None,
              hidden: int | None = None, epochs: int = 50, lr: float = 0.1, batch_size: int = 2048, seed: int = 0,
              history: list | None = None) -> MLP:
    """ASVP's proxy recipe, from scratch; deterministic per ``seed``.

    Trained on the store's L2-normalised embeddings (ASVP feeds raw features; its ``feas_norm``
    flag is unused), so the proxy sees what every other stage sees.
    """
    if len(x) < 2:
        from ..errors import LabelsError

        raise LabelsError(f"the MLP head needs at least 2 labeled samples (BatchNorm), got {len(x)}")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLP(x.shape[1], n_classes, hidden).to(x.device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=0)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total, step = epochs * steps_per_epoch, 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g).to(x.device)
        for lo in range(0, len(x), batch_size):
            idx = order[lo:lo + batch_size]
            if len(idx) < 2:  # BatchNorm needs two rows
                continue
            for group in opt.param_groups:
                group["lr"] = lr * math.cos(7 * math.pi / 16 * step / total)
            loss = cross_entropy(model(x[idx]), y[idx], None if weight is None else weight.to(x.device)[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        if history is not None:
            history.append(loss.item())
    return model.eval()
