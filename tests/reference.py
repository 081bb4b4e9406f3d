"""A direct transcription of the official ActiveFT code, kept as an oracle.

``official_loss`` is ``SampleModel.get_loss`` and ``official_select`` is ``optimize_dist`` of
github.com/yichen928/ActiveFT ``data_selection/sample_tools/ActiveFT_CIFAR.py`` (dense N x K
similarity matrix, full autograd, K x N sort for the mapping), with the device and the initial
rows made arguments. Tests check :mod:`activeft.select.activeft` against it;
``benchmarks/select_speed.py`` measures against it. Not part of the package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def official_loss(features: torch.Tensor, centroids: torch.Tensor, temperature: float, balance: float):
    centroids = F.normalize(centroids, dim=1)
    prod = torch.matmul(features, centroids.transpose(1, 0))  # (n, k)
    prod = prod / temperature
    prod_exp = torch.exp(prod)
    prod_exp_pos, pos_k = torch.max(prod_exp, dim=1)  # (n, )
    cent_prod = torch.matmul(centroids.detach(), centroids.transpose(1, 0))  # (k, k)
    cent_prod = cent_prod / temperature
    cent_prod_exp = torch.exp(cent_prod)
    cent_prob_exp_sum = torch.sum(cent_prod_exp, dim=0)  # (k, )
    J = torch.log(prod_exp_pos) - torch.log(prod_exp_pos + cent_prob_exp_sum[pos_k] * balance)
    return -torch.mean(J)


def official_select(features: torch.Tensor, init_rows, iterations: int = 300, lr: float = 1e-3,
                    temperature: float = 0.07, balance: float = 1.0) -> list[int]:
    """The official loop from the given initial rows; returns the selected rows (sorted, as the script)."""
    features = F.normalize(features, dim=1)
    centroids = torch.nn.Parameter(features[list(init_rows)].clone())
    optimizer = torch.optim.Adam([centroids], lr=lr)
    for _ in range(iterations):
        loss = official_loss(features, centroids, temperature, balance)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    centroids = F.normalize(centroids.detach(), dim=1)
    dist = torch.matmul(centroids, features.transpose(1, 0))  # (k, n)
    sample_ids = set()
    _, ids_sort = torch.sort(dist, dim=1, descending=True)
    for i in range(ids_sort.shape[0]):
        for j in range(ids_sort.shape[1]):
            if ids_sort[i, j].item() not in sample_ids:
                sample_ids.add(ids_sort[i, j].item())
                break
    return sorted(sample_ids)
