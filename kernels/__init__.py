"""Fused per-token log-probabilities for AI-Salesman (arXiv 2511.12133): GRPO ratios, KL and the Bayesian reward.

    from kernels import fused_linear_logprobs

kernels/logprob.py holds the public function (autograd, dispatch, input checks); kernels/triton_logprob.py the
Triton kernels; kernels/torch_logprob.py the same math in PyTorch for CPUs. See kernels/logprob.py for details.
"""
from kernels.logprob import TRITON_AVAILABLE, backend_for, fused_linear_logprobs


__all__ = ["TRITON_AVAILABLE", "backend_for", "fused_linear_logprobs"]
