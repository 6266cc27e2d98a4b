"""Tolerances from error bounds, for the tests that compare floating-point results.

A fixed tolerance such as 1e-5 records what one machine happened to give. The summation order of a
float32 matrix product or reduction (vector width, fused multiply-add, threads, BLAS blocking) differs
between CPUs, so the same computation lands a different distance from the exact value on each: a test
with a fixed number passes on one CPU and fails on another.
Two rules replace such numbers here:

* `assert_within_reference_error`: the exact value is a float64 run; our float32 result may be FACTOR
  times as far from it as an independent float32 computation of the same thing on the same inputs
  (transformers' model, a plain NumPy path), measured where the test runs. The floor is the unit
  roundoff of our dtype times the size of the values: no result stored in that dtype can do better.
* `dot_bound(n)`: the a-priori worst case of a float32 dot product of n terms in any summation order,
  gamma_n = n u / (1 - n u) relative to the sum of |terms| (Higham, Accuracy and Stability of Numerical
  Algorithms, 2nd ed., section 3.1), for results that are one dot product of unit vectors.

tests/test_kernels.py applies the first rule to the fused log-prob kernel with its own error measures
(relative per entry, normalised for gradients).
"""
import numpy as np
import torch


FACTOR = 4


def unit_roundoff(dtype=np.float32):
    """u = eps / 2: the largest relative error of rounding one real number to `dtype`."""
    if isinstance(dtype, torch.dtype):
        return torch.finfo(dtype).eps / 2
    return float(np.finfo(dtype).eps) / 2


def dot_bound(n, dtype=np.float32):
    """gamma_n: |computed - exact| <= gamma_n * sum(|a_i b_i|) for a dot product of n terms, any order."""
    nu = n * unit_roundoff(dtype)
    assert nu < 1, f"no bound for {n} terms in {dtype}"
    return nu / (1 - nu)


def as_float64(values):
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def reference_error_limit(theirs, exact, dtype=np.float32, factor=FACTOR):
    """FACTOR times the largest |theirs - exact|, at least FACTOR units of roundoff of the largest |exact|."""
    exact = as_float64(exact)
    theirs_error = float(np.abs(as_float64(theirs) - exact).max(initial=0.0))
    return factor * max(theirs_error, unit_roundoff(dtype) * float(np.abs(exact).max(initial=0.0)))


def assert_within_reference_error(ours, theirs, exact, factor=FACTOR):
    """Our result is within FACTOR times the reference implementation's own error of the exact values."""
    dtype = ours.dtype if isinstance(ours, torch.Tensor) else np.asarray(ours).dtype
    limit = reference_error_limit(theirs, exact, dtype, factor)
    error = float(np.abs(as_float64(ours) - as_float64(exact)).max(initial=0.0))
    assert error <= limit, f"error {error:.3g} exceeds {factor} x the reference's own error (limit {limit:.3g})"
