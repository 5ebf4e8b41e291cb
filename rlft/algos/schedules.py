"""Step schedules and token selectors used by algorithm specs.

- `chord_mu`: CHORD's weight of the expert term over training.
- `prefix_window` / `sample_prefix_ratio`: Prefix-RFT's demonstration-prefix
  length ratio, drawn from Beta(alpha, beta) mapped into a window that moves
  with the step.
- `select_top_entropy`: keep the highest-entropy fraction of tokens (the
  "80/20" forking-token rule).

Everything is a pure function of its arguments (and an explicit generator), so
a resumed run reproduces the same values.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from rlft.registry import Registry


def chord_mu(step: int, mu_peak: float, mu_valley: float, warmup_steps: int,
             decay_steps: int) -> float:
    """Linear 0 -> mu_peak over `warmup_steps`, cosine mu_peak -> mu_valley over
    the next `decay_steps`, then mu_valley.

    mu(step) = mu_peak * step / warmup_steps                      for step < warmup
             = valley + (peak - valley) * (1 + cos(pi * t)) / 2   t = (step - warmup) / decay
             = mu_valley                                          after warmup + decay
    Step 0 is the first update, so a warm-up starts from mu = 0 exactly.
    """
    if step < 0 or warmup_steps < 0 or decay_steps < 0:
        raise ValueError(f"chord_mu: step, warmup_steps and decay_steps must be >= 0; got "
                         f"{step}, {warmup_steps}, {decay_steps}")
    for name, v in (("mu_peak", mu_peak), ("mu_valley", mu_valley)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"chord_mu: {name} must be in [0, 1]; got {v}")
    if step < warmup_steps:
        return mu_peak * step / warmup_steps
    if step >= warmup_steps + decay_steps:
        return mu_valley
    t = (step - warmup_steps) / decay_steps
    return mu_valley + (mu_peak - mu_valley) * 0.5 * (1.0 + math.cos(math.pi * t))


# -- Prefix-RFT --------------------------------------------------------------

# A window kind maps progress t in [0, 1] to the interpolation weight w in [0, 1]
# between the start and end bounds.
WindowFn = Callable[[float], float]
WINDOW_KINDS: Registry[WindowFn] = Registry("prefix window kind")
WINDOW_KINDS.register("constant")(lambda t: 0.0)
WINDOW_KINDS.register("linear")(lambda t: t)
WINDOW_KINDS.register("cosine")(lambda t: 0.5 * (1.0 - math.cos(math.pi * t)))


def prefix_window(step: int, total_steps: int, low_start: float, low_end: float,
                  high_start: float, high_end: float, kind: str = "cosine"
                  ) -> tuple[float, float]:
    """(low, high) bounds of the prefix ratio at `step`.

    t = min(step / total_steps, 1); w = kind(t) (constant: 0, linear: t,
    cosine: (1 - cos(pi t)) / 2); each bound = start + (end - start) * w. So
    "constant" stays at the start bounds, the others reach the end bounds at
    `total_steps` and stay there.
    """
    if total_steps < 1:
        raise ValueError(f"prefix_window: total_steps must be >= 1, got {total_steps}")
    for name, v in (("low_start", low_start), ("low_end", low_end),
                    ("high_start", high_start), ("high_end", high_end)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"prefix_window: {name} must be in [0, 1]; got {v}")
    if low_start > high_start or low_end > high_end:
        raise ValueError(f"prefix_window: low must not exceed high (start {low_start} > "
                         f"{high_start} or end {low_end} > {high_end})")
    w = WINDOW_KINDS.get(kind)(min(max(step, 0) / total_steps, 1.0))
    return low_start + (low_end - low_start) * w, high_start + (high_end - high_start) * w


def _standard_gamma(generator: torch.Generator, n: int, shape: float) -> torch.Tensor:
    """Gamma(shape, 1) draws from `generator` only (Marsaglia & Tsang, 2000).

    torch's own Gamma/Beta samplers read the global RNG; this one is
    reproducible from the generator alone. For shape < 1 it draws
    Gamma(shape + 1) and scales by U^(1/shape). Rejection is vectorised: each
    round redraws the rejected slots (acceptance is above 95%).
    """
    boost = shape < 1.0
    d = (shape + 1.0 if boost else shape) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64)  # [n]
    todo = torch.arange(n)
    while todo.numel():
        z = torch.randn(todo.numel(), generator=generator, dtype=torch.float64)
        u = torch.rand(todo.numel(), generator=generator, dtype=torch.float64)
        v = (1.0 + c * z) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * z**2 + d - d * v + d * torch.log(v.clamp(min=1e-300)))
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    if boost:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        out = out * u ** (1.0 / shape)
    return out


def sample_prefix_ratio(generator: torch.Generator, n: int, low: float, high: float,
                        alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """n ratios low + (high - low) * Beta(alpha, beta), float32 [n], within [low, high].

    Beta = X / (X + Y) with X ~ Gamma(alpha), Y ~ Gamma(beta), both drawn from
    `generator` (CPU), so a seeded generator gives the same ratios on any run.
    alpha = beta = 1 is uniform on the window.
    """
    if alpha <= 0 or beta <= 0:
        raise ValueError(f"sample_prefix_ratio: alpha and beta must be > 0; got {alpha}, {beta}")
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"sample_prefix_ratio: need 0 <= low <= high <= 1; got {low}, {high}")
    x = _standard_gamma(generator, n, alpha)
    y = _standard_gamma(generator, n, beta)
    total = x + y
    # Both draws can underflow to 0 for tiny shapes; 0.5 is then as good as any.
    b = torch.where(total > 0, x / total.clamp(min=1e-300), 0.5)  # [n]
    return (low + (high - low) * b).clamp(low, high).float()


# -- entropy-based token selection ---------------------------------------------

def select_top_entropy(entropy: torch.Tensor, mask: torch.Tensor, frac: float) -> torch.Tensor:
    """Bool [B, L]: the ceil(frac * n) highest-entropy tokens among the n True in `mask`.

    The selection is over the whole batch (not per sequence), so call it on the
    full step batch, not on a micro-batch. ceil keeps at least one token
    whenever frac > 0 and any token is masked. Ties are broken by position in
    row-major order (earlier row, then earlier column wins), so the result is
    deterministic.
    """
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"select_top_entropy: frac must be in [0, 1]; got {frac}")
    if entropy.shape != mask.shape:
        raise ValueError(f"select_top_entropy: entropy shape {tuple(entropy.shape)} must equal "
                         f"mask shape {tuple(mask.shape)}")
    mask = mask.bool()
    n = int(mask.sum())
    k = math.ceil(frac * n - 1e-9)  # the epsilon keeps 0.2 * 10 at 2, not 3
    flat = torch.where(mask, entropy.detach().float(), float("-inf")).flatten()  # [B*L]
    if torch.isnan(flat).any():
        raise ValueError("select_top_entropy: entropy has NaN at masked tokens")
    # A stable descending sort keeps equal entropies in index order.
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[order] = True
    return keep.view(mask.shape)
