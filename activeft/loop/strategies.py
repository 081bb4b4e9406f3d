"""Active-learning strategies that score the pool with a proxy model (ASVP's selection via proxy).

As in ASVP's ``samplings/sampling_strategy.py`` (github.com/ZiTingW/asvp): ``margin`` (smallest
p1 - p2), ``entropy`` (largest), ``confidence`` (smallest max-probability), ``coreset``
(k-center greedy on the proxy's hidden layer, labeled rows as the initial centres) and ``badge``
(k-means++ seeding on gradient embeddings: (p - onehot(argmax p)) outer the hidden embedding,
average-pooled to 16 x 32 = 512 dims when larger, as the official code does; our k-means++ draws
the first centre uniformly, where BADGE's ``init_centers`` takes the largest-norm embedding). Each runs on the
sharded engine: every worker scores its own rows; the top scores are merged (ties to the
smaller row), coreset and badge use the distributed k-center greedy and k-means++. Unlike
ActiveFT's, the proxy's scores are not re-computed row by row: with W > 1 workers they can
differ from W = 1 in the last float bits, so near-ties may resolve differently.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..engine import Collectives, Pool, chunk_rows, generator, k_center_greedy, kmeans_plusplus, merge_topk
from ..models.heads import MLP


def _proxy_outputs(proxy: MLP, x: torch.Tensor):
    """Softmax probabilities and hidden embeddings of ``x``, in chunks."""
    probs, hidden = [], []
    step = chunk_rows(proxy.fc1.out_features + proxy.fc2.out_features)
    with torch.no_grad():
        for lo in range(0, len(x), step):
            h = proxy.hidden(x[lo:lo + step].float())  # a float16 pool (GPU), a chunk at a time
            hidden.append(h)
            probs.append(F.softmax(proxy.fc2(h), dim=1))
    return torch.cat(probs), torch.cat(hidden)


def uncertainty(probs: torch.Tensor, strategy: str) -> torch.Tensor:
    """Higher means more uncertain (selected first)."""
    if strategy == "margin":
        top = probs.topk(2, dim=1).values
        return -(top[:, 0] - top[:, 1])
    if strategy == "entropy":
        return -(probs * probs.clamp(min=1e-12).log()).sum(1)
    return -probs.max(1).values  # confidence


def badge_embedding(probs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """BADGE's gradient embedding of the cross-entropy at the predicted label w.r.t. the last layer."""
    grad = probs - F.one_hot(probs.argmax(1), probs.shape[1]).to(probs.dtype)
    emb = grad[:, :, None] * hidden[:, None, :]  # (n, C, H)
    if emb.shape[1] * emb.shape[2] > 512:
        emb = F.adaptive_avg_pool2d(emb[:, None], (16, 32))[:, 0]
    return emb.flatten(1)


_STRATEGIES: dict = {}


def register_strategy(name: str):
    """Register ``fn(pool, comm, probs, hidden, budget, labeled, g) -> rows`` as a proxy strategy."""
    def add(fn):
        if name in _STRATEGIES:
            raise ValueError(f"strategy {name!r} registered twice")
        _STRATEGIES[name] = fn
        return fn
    return add


def _uncertainty_strategy(name: str):
    @register_strategy(name)
    def top_uncertain(pool, comm, probs, hidden, budget, labeled, g):
        score = uncertainty(probs, name)
        score[pool.local(labeled)[1]] = -torch.inf
        k = min(budget, len(score))
        v, i = score.topk(k)
        v = torch.cat([v, torch.full((budget - k,), -torch.inf, device=v.device)])
        r = torch.cat([i + pool.offset, torch.full((budget - k,), -1, device=i.device, dtype=torch.long)])
        return merge_topk(v[None], r[None], comm, budget)[1][0]


for _name in ("margin", "entropy", "confidence"):
    _uncertainty_strategy(_name)


@register_strategy("badge")
def _badge(pool, comm, probs, hidden, budget, labeled, g):
    step = chunk_rows(probs.shape[1] * hidden.shape[1])  # (rows, C, H) only a chunk at a time
    emb = Pool(torch.cat([badge_embedding(probs[lo:lo + step], hidden[lo:lo + step])
                          for lo in range(0, len(probs), step)]), pool.offset, pool.size)
    return kmeans_plusplus(emb, comm, budget, g, exclude=labeled)


@register_strategy("coreset")
def _coreset(pool, comm, probs, hidden, budget, labeled, g):
    return k_center_greedy(Pool(hidden, pool.offset, pool.size), comm, budget, g, labeled, tag="coreset")


STRATEGIES = tuple(_STRATEGIES)


def select_with_proxy(pool: Pool, comm: Collectives, proxy: MLP, strategy: str, budget: int, labeled,
                      seed: int = 0) -> torch.Tensor:
    """``budget`` global rows, none of them in ``labeled``, chosen by ``strategy`` with ``proxy``."""
    if strategy not in _STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}")
    proxy = proxy.to(pool.device).eval()
    probs, hidden = _proxy_outputs(proxy, pool.x)
    return _STRATEGIES[strategy](pool, comm, probs, hidden, budget, torch.as_tensor(labeled, dtype=torch.long),
                                 generator(seed))


def strategy_job(strategy, proxy_state, dims, budget, labeled, seed, pool, comm, checkpoints) -> dict:
    """The job :func:`activeft.engine.run` runs on every worker."""
    proxy = MLP(*dims)
    proxy.load_state_dict(proxy_state)
    rows = select_with_proxy(pool, comm, proxy, strategy, budget, labeled, seed)
    return {"rows": rows.tolist()}
