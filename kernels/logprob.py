"""Per-token log-probabilities without an N x V log-softmax: the function the rest of AI-Salesman calls.

In AI-Salesman (arXiv 2511.12133) every learning signal is a sum of per-token log-probabilities:
the GRPO ratio rho = exp(log pi(y_t) - log pi_old(y_t)), the k3 KL to the reference model, and the Bayesian
reasoning reward R_bayes = log P(Th | c) + log P(A* | c, Th). This module computes them.

  fused_linear_logprobs(hidden [N, H], weight [V, H], targets) log p(target) under hidden @ weight.T, computed
      chunk_size rows at a time, so at most chunk_size x V logits exist at once, in the forward and the backward.
      The forward keeps only hidden, weight, targets and each row's float32 log-sum-exp (as m and log s, see
      kernels/triton_logprob.py); the backward recomputes each chunk's logits, turns them into
      dlogits = g * (onehot - softmax) / temperature in place, and accumulates grad_hidden and grad_weight.
      On request it also returns each row's entropy (GRPO logs the policy's, to see it collapse).

It is a torch.autograd.Function returning float32 [N]; a target equal to ignore_index gives 0 and no gradient.
Which engine does the per-row math (see backend_for):
  'triton' the kernels of kernels/triton_logprob.py: compiled for CUDA tensors, or interpreted on CPU tensors
           when TRITON_INTERPRET=1 was set before triton was imported (how the tests run them);
  'torch'  the identical math of kernels/torch_logprob.py: CPU tensors otherwise, or when forced with
           backend='torch' or the environment variable KERNELS_BACKEND=torch; also wherever triton is not installed.
Left out: a matmul fused into the kernel (torch's matmul is already fast; the saving is in never storing logits),
gradients of the entropy (it is returned for logging only), and a log-prob function for logits one already has
(every caller here has hidden states, and the fused path never stores the logits).
"""
import os

import torch

from kernels import torch_logprob


try:
    from kernels import triton_logprob
except ImportError:  # no triton on this machine: the PyTorch path serves every call
    triton_logprob = None

TRITON_AVAILABLE = triton_logprob is not None
BACKENDS = ("auto", "triton", "torch")

# Rows per chunk when chunk_size is not given. On a CPU, smaller chunks cost time (each chunk's backward reads and
# writes all of grad_weight once) and larger ones memory; 256 rows (155 MB of float32 logits at V = 151,936) keep
# the peak below 1/8 of the naive path's at N = 4096 (bench/logprob.py's target), which larger, faster chunks do
# not. On a GPU a chunk may hold ~1 GiB of logits, enough rows to keep the matmul busy.
CPU_CHUNK_ROWS = 256
GPU_CHUNK_BYTES = 2**30


def backend_for(tensor: torch.Tensor, backend: str | None = None) -> str:
    """'triton' or 'torch': the engine a call on `tensor` uses. backend (or env KERNELS_BACKEND) may force one."""
    requested = backend or os.environ.get("KERNELS_BACKEND") or "auto"
    if requested not in BACKENDS:
        raise ValueError(f"kernels: backend must be one of {BACKENDS}, got {requested!r} (argument or KERNELS_BACKEND)")
    if requested == "torch":
        return "torch"
    triton_runs_here = TRITON_AVAILABLE and (tensor.is_cuda or triton_logprob.INTERPRETED)
    if requested == "triton" and not triton_runs_here:
        why = ("triton is not installed" if not TRITON_AVAILABLE
               else "a CPU tensor needs TRITON_INTERPRET=1 in the environment before triton is imported")
        raise RuntimeError(f"kernels: backend 'triton' was requested but cannot run here: {why}")
    return "triton" if triton_runs_here else "torch"


def default_chunk_rows(vocab_size: int, dtype: torch.dtype, device: torch.device) -> int:
    if device.type == "cpu":
        return CPU_CHUNK_ROWS
    return max(1, GPU_CHUNK_BYTES // (vocab_size * torch.finfo(dtype).bits // 8))


# ----------------------------------------------------------------------------------------------------------------
# One engine interface over both backends: the forward and backward of a block of rows.


def rows_forward(engine, logits, targets, temperature, ignore_index, with_entropy):
    """(logprobs, row_max, log_sum, entropy or None), float32 [C], for logits [C, V] (unit stride along V), a
    chunk buffer the caller owns: the torch engine overwrites it."""
    if engine == "torch":
        return torch_logprob.forward_rows(logits, targets, temperature, ignore_index, with_entropy)
    rows = logits.shape[0]
    logprobs, row_max, log_sum = (torch.empty(rows, dtype=torch.float32, device=logits.device) for _ in range(3))
    entropy = torch.empty_like(logprobs) if with_entropy else None
    if rows > 0:
        triton_logprob.launch_forward(logits, targets, temperature, ignore_index, logprobs, row_max, log_sum, entropy)
    return logprobs, row_max, log_sum, entropy


def rows_grad_logits(engine, logits, targets, row_max, log_sum, grad_logprobs, temperature, ignore_index):
    """dlogits [C, V] in logits' dtype, written over logits (a chunk buffer the caller owns)."""
    if engine == "torch":
        grad = torch_logprob.grad_logits_rows(logits, targets, row_max, log_sum, grad_logprobs, temperature,
                                              ignore_index)
        return grad if grad.data_ptr() == logits.data_ptr() else logits.copy_(grad)
    if logits.shape[0] > 0:
        triton_logprob.launch_backward(logits, targets, row_max, log_sum, grad_logprobs, temperature, ignore_index,
                                       logits)
    return logits


def concatenate_rows(chunk_results):
    """[(logprobs, row_max, log_sum, entropy or None) per chunk] -> the same four for all rows."""
    columns = list(zip(*chunk_results))
    return [None if column[0] is None else torch.cat(column) for column in columns]


def row_chunks(rows: int, chunk_rows: int):
    """(start, end) of each chunk of rows; an empty batch still gets one (empty) chunk."""
    for start in range(0, max(rows, 1), chunk_rows):
        yield start, min(start + chunk_rows, rows)


# ----------------------------------------------------------------------------------------------------------------
# fused_linear_logprobs


class FusedLinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, ignore_index, with_entropy, engine, chunk_rows):
        rows, vocab_size = hidden.shape[0], weight.shape[0]
        logits_buffer = hidden.new_empty(min(rows, chunk_rows), vocab_size)  # the only [chunk, V] tensor alive

        def chunk_forward(start, end):
            logits = torch.mm(hidden[start:end], weight.t(), out=logits_buffer[: end - start])  # [C, V]
            return rows_forward(engine, logits, targets[start:end], temperature, ignore_index, with_entropy)

        logprobs, row_max, log_sum, entropy = concatenate_rows(
            chunk_forward(start, end) for start, end in row_chunks(rows, chunk_rows)
        )  # [N] float32 each
        ctx.save_for_backward(hidden, weight, targets, row_max, log_sum)
        ctx.settings = (temperature, ignore_index, engine, chunk_rows)
        if not with_entropy:
            return logprobs
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, *unused_grad_entropy):
        hidden, weight, targets, row_max, log_sum = ctx.saved_tensors
        temperature, ignore_index, engine, chunk_rows = ctx.settings
        wants_hidden, wants_weight = ctx.needs_input_grad[:2]
        grad_logprobs = grad_logprobs.to(torch.float32).contiguous()
        rows, vocab_size = hidden.shape[0], weight.shape[0]
        grad_hidden = torch.empty_like(hidden, memory_format=torch.contiguous_format) if wants_hidden else None
        # grad_weight accumulates over chunks in the weight's dtype (addmm accumulates each product in float32).
        grad_weight = torch.zeros_like(weight, memory_format=torch.contiguous_format) if wants_weight else None
        logits_buffer = hidden.new_empty(min(rows, chunk_rows), vocab_size)
        for start, end in row_chunks(rows, chunk_rows):
            hidden_chunk = hidden[start:end]  # [C, H]
            logits = torch.mm(hidden_chunk, weight.t(), out=logits_buffer[: end - start])  # [C, V], recomputed
            grad_logits = rows_grad_logits(engine, logits, targets[start:end], row_max[start:end],
                                           log_sum[start:end], grad_logprobs[start:end], temperature, ignore_index)
            if wants_hidden:
                torch.mm(grad_logits, weight, out=grad_hidden[start:end])  # [C, H]
            if wants_weight:
                grad_weight.addmm_(grad_logits.t(), hidden_chunk)  # [V, H] += [V, C] @ [C, H]
        return grad_hidden, grad_weight, None, None, None, None, None, None


def fused_linear_logprobs(hidden, weight, targets, temperature=1.0, chunk_size=None, ignore_index=-100,
                          return_entropy=False, backend=None):
    """log softmax(hidden @ weight.T / temperature)[target] per row, float32 [N], never holding N x V logits.

    hidden [N, H] and weight [V, H] of one float dtype and device; targets [N] integer in [0, V) or ignore_index.
    chunk_size rows are processed at a time (default: 256 on CPU, ~1 GiB of logits on a GPU). Gradients flow to
    hidden and weight, in their dtype.
    """
    name = "fused_linear_logprobs"
    for field, tensor in (("hidden", hidden), ("weight", weight)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2 or not tensor.is_floating_point():
            raise ValueError(f"kernels.{name}: {field} must be a 2-D floating-point tensor, got "
                             f"{describe(tensor)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"kernels.{name}: hidden is [N, H] = {list(hidden.shape)} but weight is [V, H] = "
                         f"{list(weight.shape)}; their H must agree")
    if hidden.dtype != weight.dtype or hidden.device != weight.device:
        raise ValueError(f"kernels.{name}: hidden ({hidden.dtype}, {hidden.device}) and weight ({weight.dtype}, "
                         f"{weight.device}) must share dtype and device")
    check_targets(name, hidden, targets, ignore_index, vocab_size=weight.shape[0])
    check_temperature(name, temperature)
    if chunk_size is None:
        chunk_size = default_chunk_rows(weight.shape[0], weight.dtype, weight.device)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"kernels.{name}: chunk_size must be a positive int, got {chunk_size!r}")
    engine = backend_for(hidden, backend)
    return FusedLinearLogprobs.apply(hidden, weight, targets.long().contiguous(), float(temperature), ignore_index,
                                     return_entropy, engine, chunk_size)


# ----------------------------------------------------------------------------------------------------------------
# Input checks: a clear message naming the function and argument instead of an error deep inside a kernel.


def describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {list(value.shape)}"
    return type(value).__name__


def check_targets(name, hidden, targets, ignore_index, vocab_size):
    if vocab_size < 1:
        raise ValueError(f"kernels.{name}: the vocabulary is empty (V = 0)")
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1 or targets.is_floating_point() \
            or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"kernels.{name}: targets must be a 1-D integer tensor, got {describe(targets)}")
    if targets.shape[0] != hidden.shape[0]:
        raise ValueError(f"kernels.{name}: hidden has N = {hidden.shape[0]} rows but targets has {targets.shape[0]}")
    if targets.device != hidden.device:
        raise ValueError(f"kernels.{name}: targets is on {targets.device} but hidden on {hidden.device}")
    out_of_range = ((targets < 0) | (targets >= vocab_size)) & (targets != ignore_index)
    if out_of_range.any():
        row = int(out_of_range.nonzero()[0, 0])
        raise ValueError(f"kernels.{name}: targets[{row}] = {int(targets[row])} is outside [0, {vocab_size}) "
                         f"and is not ignore_index = {ignore_index}")


def check_temperature(name, temperature):
    if not isinstance(temperature, (int, float)) or not 0.0 < float(temperature) < float("inf"):
        raise ValueError(f"kernels.{name}: temperature must be a finite number > 0, got {temperature!r}")
