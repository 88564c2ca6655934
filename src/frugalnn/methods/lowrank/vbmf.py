"""Rank estimation by empirical variational Bayesian matrix factorisation (EVBMF).

Kim et al. (2016) choose Tucker-2 ranks of a convolution by running VBMF on
the mode-0 and mode-1 unfoldings of its kernel: the rank is the number of
components the Bayesian model keeps once the noise level is estimated from the
data. Nakajima et al. ("Global analytic solution of fully-observed variational
Bayesian matrix factorization", JMLR 2013) showed that the empirical-Bayes
solution is analytic: with ``Y`` of shape ``L x M`` (``L <= M``), ``alpha =
L / M`` and singular values ``gamma_h``, a component survives iff

    gamma_h > sqrt(M * sigma^2 * (1 + tau_bar) * (1 + alpha / tau_bar)),

where ``tau_bar`` is the positive root of ``log(t + 1) + alpha log(t / alpha
+ 1) - t = 0`` and the noise variance ``sigma^2`` minimises the (scaled) free
energy below over an interval the paper bounds analytically. This module
implements that recipe with NumPy and SciPy (root finding and a bounded scalar
minimisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from frugalnn.methods.lowrank.decompose import singular_values


def _tau_bar(alpha: float) -> float:
    """The positive root of ``log(t+1) + alpha*log(t/alpha+1) - t``."""

    def f(t: float) -> float:
        return np.log1p(t) + alpha * np.log1p(t / alpha) - t

    return float(brentq(f, 1e-8, 1e4))


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    """Shrinkage ratio of a surviving component with normalised power ``x``."""
    b = x - (1.0 + alpha)
    return 0.5 * (b + np.sqrt(np.maximum(b * b - 4.0 * alpha, 0.0)))


def _free_energy(sigma2: float, s2: np.ndarray, m: int, alpha: float, x_bar: float) -> float:
    """EVB free energy (up to constants and a factor) as a function of ``sigma^2``."""
    x = s2 / (m * sigma2)
    energy = float(np.sum(x - np.log(x)))
    big = x[x > x_bar]
    if big.size:
        t = _tau(big, alpha)
        energy += float(np.sum(np.log1p(t) + alpha * np.log1p(t / alpha) - t))
    return energy


@dataclass
class VBMFResult:
    """The estimated rank, noise variance and the threshold on singular values."""

    rank: int
    sigma2: float
    threshold: float
    singular_values: np.ndarray


def evbmf(matrix: np.ndarray, sigma2: float | None = None) -> VBMFResult:
    """Empirical VBMF of ``matrix``: estimated rank (0 means "pure noise").

    ``sigma2`` fixes the noise variance instead of estimating it.
    """
    y = np.asarray(matrix, dtype=np.float64)
    if y.ndim != 2 or min(y.shape) < 1:
        raise ValueError(f"evbmf needs a non-empty matrix, got shape {y.shape}")
    if y.shape[0] > y.shape[1]:
        y = y.T
    l_dim, m_dim = y.shape
    alpha = l_dim / m_dim
    s = singular_values(y)
    s2 = s * s
    tau_bar = _tau_bar(alpha)
    x_bar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)
    if s2.sum() <= 0:
        return VBMFResult(0, 0.0, 0.0, s)
    if sigma2 is None:
        # Bounds on sigma^2 from the paper: the noise cannot exceed the total
        # power, nor be smaller than what the weakest components imply.
        h_ub = min(int(np.ceil(l_dim / (1.0 + alpha))) - 1, l_dim - 1)
        upper = s2.sum() / (l_dim * m_dim)
        lower = max(s2[h_ub] / (m_dim * x_bar), s2[h_ub:].mean() / m_dim)
        lower = max(lower, upper * 1e-12)
        if lower >= upper:
            sigma2 = upper
        else:
            tiny = upper * 1e-300
            res = minimize_scalar(
                lambda v: _free_energy(v, np.maximum(s2, tiny), m_dim, alpha, x_bar),
                bounds=(lower, upper), method="bounded",
            )
            sigma2 = float(res.x)
    threshold = float(np.sqrt(m_dim * sigma2 * x_bar))
    return VBMFResult(int(np.sum(s > threshold)), float(sigma2), threshold, s)
