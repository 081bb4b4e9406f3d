"""LogME (You et al., ICML 2021): the evidence that features predict the labels, without training.

For each class, Bayesian linear regression of the one-hot target on the features with Gaussian
prior (precision alpha) and noise (precision beta); alpha and beta maximise the marginal
likelihood (evidence) by fixed-point iteration; LogME is the evidence per sample, averaged over
classes. Higher means the features fit the labels better. This follows the official
implementation's default, ``LogME._fit_fixed_point`` (github.com/thuml/LogME, the fixed-point
algorithm of "Ranking and Tuning Pre-trained Models", arXiv 2110.10545, which maximises the same
evidence as the ICML paper's iteration, faster).

One deviation: with fewer samples than dimensions (N < D, the few-labels case of an active
loop) the official fixed-point code sums log(alpha + beta sigma_i) over the N non-zero
eigenvalues only; the evidence's log-determinant has D of them, the D - N zero ones each
adding log(alpha), as in the ICML iteration. We keep them, so both algorithms agree.
"""

from __future__ import annotations

import numpy as np


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of ``features`` (N, D) for integer ``labels`` (N,) in ``[0, C)``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 200)
    >>> good = np.eye(3)[y] + 0.1 * rng.normal(size=(200, 3))
    >>> bad = rng.normal(size=(200, 3))
    >>> logme(good, y) > logme(bad, y)
    True
    """
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    if n > d:  # SVD through the D x D Gram matrix (as the official truncated_svd)
        vals, v = np.linalg.eigh(f.T @ f)
        order = np.argsort(vals)[::-1]
        s = np.sqrt(np.clip(vals[order], 0, None))
        keep = s > 1e-10
        s, vh = s[keep], v[:, order][:, keep].T
        u = f @ vh.T / s
    else:
        u, s, vh = np.linalg.svd(f, full_matrices=False)
    sigma = s ** 2
    evidences = []
    for c in range(int(labels.max()) + 1):
        y = (labels == c).astype(np.float64)
        x2 = (u.T @ y) ** 2
        res_x2 = (y ** 2).sum() - x2.sum()
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / (t + sigma) ** 2).sum()
            res2 = (x2 / (1 + sigma / t) ** 2).sum() + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        log_det = np.sum(np.log(alpha + beta * sigma)) + (d - len(sigma)) * np.log(alpha)
        evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * log_det
                    - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))
