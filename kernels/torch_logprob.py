"""The same log-prob math as kernels/triton_logprob.py, in plain PyTorch: the fast path for CPU training.

AI-Salesman (arXiv 2511.12133) trains with GRPO and scores thoughts with a Bayesian reward, both from per-token
log-probabilities. On a CPU without Triton's compiler these functions do, for a chunk of rows at a time, what the
two Triton kernels do for one row at a time, with the same per-row statistics (m and log s, lse = m + log s):

  forward   z = logits / temperature;  m = max_j z_j;  log s = log sum_j exp(z_j - m);
            log p(target) = (z_target - m) - log s;  entropy = log s - sum_j p_j (z_j - m) (on request);
            ignored targets give 0.
  backward  dlogits = g * (onehot - exp((z - m) - log s)) / temperature, from the saved m and log s.

The caller (kernels/logprob.py) keeps chunks small, so every float32 temporary here is chunk-sized, and the work
is done in place on the caller's chunk buffer of logits (the fused path recomputes it per chunk); logits of
another dtype are copied to float32 once first.
Left out: a row-at-a-time streaming loop like the kernel's; on a CPU whole-chunk vector ops are faster.
"""
import torch


def scaled_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """z = logits / temperature as a float32 [C, V] buffer: logits' own when they are float32, else a copy."""
    if logits.dtype == torch.float32:
        return logits.div_(temperature) if temperature != 1.0 else logits
    return logits.to(torch.float32, copy=True).div_(temperature)


def forward_rows(logits, targets, temperature, ignore_index, with_entropy):
    """(logprobs, row_max, log_sum, entropy or None), each float32 [C], for logits [C, V], int64 targets [C]."""
    shifted = scaled_logits(logits, temperature)  # [C, V], becomes z - m below
    row_max = shifted.amax(dim=1)  # [C]
    shifted.sub_(row_max[:, None])  # <= 0; -inf stays -inf (a masked column)
    ignored = targets == ignore_index
    target_shifted = shifted.gather(1, torch.where(ignored, 0, targets)[:, None])[:, 0]  # [C]
    entropy = None
    if with_entropy:
        unnormalised = torch.exp(shifted)  # [C, V], exp(z - m)
        row_sum = unnormalised.sum(dim=1)
        weighted = (unnormalised * torch.where(unnormalised > 0, shifted, 0.0)).sum(dim=1)
        log_sum = row_sum.log()
        entropy = log_sum - weighted / row_sum
    else:
        log_sum = shifted.exp_().sum(dim=1).log()
    logprobs = torch.where(ignored, 0.0, target_shifted - log_sum)
    return logprobs, row_max, log_sum, entropy


def grad_logits_rows(logits, targets, row_max, log_sum, grad_logprobs, temperature, ignore_index):
    """float32 [C, V]: grad_logprobs * dlogprob/dlogits for logits [C, V], from the forward's row_max, log_sum."""
    shifted = scaled_logits(logits, temperature).sub_(row_max[:, None])
    probabilities = shifted.sub_(log_sum[:, None]).exp_()  # [C, V] softmax, recomputed
    ignored = targets == ignore_index
    scale = torch.where(ignored, 0.0, grad_logprobs) / temperature  # [C]
    grad = probabilities.mul_(-scale[:, None])  # -scale * softmax
    grad.scatter_add_(1, torch.where(ignored, 0, targets)[:, None], scale[:, None])  # + scale * onehot
    return grad
