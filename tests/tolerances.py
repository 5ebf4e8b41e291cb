"""Float32 comparison bounds shared by the tests (issue #25).

Importable from any test module: pytest puts this folder on sys.path when it
loads tests/conftest.py (the default "prepend" import mode).
"""

from __future__ import annotations

import torch

FP32_EPS = torch.finfo(torch.float32).eps


def fp32_bound(*scales) -> float:
    """Rounding allowed to a float32 result against another computation of it (a
    float64 reference, or float32 by another path that sums in another order).

    Micro-batch shapes, packing, chunked log-probs, compiled layers and FSDP's
    reduce order change the order of the sums inside matmuls, softmax and
    gradient accumulation, and the CPU's kernels decide how that rounds. Each
    result is a sum of terms no larger than the largest magnitude in play
    (`scales`: tensors or numbers: log-probs, entropy, weights, advantages, the
    loss), so two paths differ by a few eps * scale; the largest seen with
    AVX512, AVX2 and default ATen kernels and MKL's COMPATIBLE and AVX2 paths was
    15 eps * scale (typical for sums of n terms: sqrt(n) eps * scale). 100 eps *
    scale (1.2e-5 of it) leaves room for any kernel, while a wrong formula is
    off by O(scale).
    """
    return 100 * FP32_EPS * max(float(torch.as_tensor(s).abs().max()) for s in scales)
