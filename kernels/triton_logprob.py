"""The Triton kernels behind kernels.fused_linear_logprobs.

AI-Salesman (arXiv 2511.12133) needs per-token log-probabilities log p(y_t | context) twice per GRPO step: for the
policy's clipped objective and for the Bayesian reward R_bayes = log P(Th | c) + log P(A* | c, Th) under the frozen
reference model. With a 151,936-token vocabulary the obvious log_softmax-then-gather materialises and stores an
N x V float32 matrix per pass. These two kernels never store more than the logits they are given:

  forward   one program per row streams over the vocabulary in blocks of BLOCK_V, keeping an online
            (running-max rescaled) log-sum-exp in float32, with z = logits / temperature:
            m_new = max(m, max(block));  s = s * exp(m - m_new) + sum(exp(block - m_new));  lse = m + log(s).
            It writes log p(target) = (z_target - m) - log(s), the row's log-sum-exp in two parts, m and log(s)
            (all the backward needs) and, on request, the row's entropy  H = lse - sum_j p_j z_j.
  backward  one program per row recomputes p_j = exp((z_j - m) - log(s)) block by block and writes
            dlogits_j = g * (onehot_j - p_j) / temperature. No softmax is stored.

Why keep lse as m and log(s) instead of one number: with logits near 1e4 a float32 lse is only good to ~1e-3
(its spacing there), which would become a 1e-3 relative error in every probability; z - m is exact near the max.

Rows sit on grid axis 0 (limit 2^31 - 1), not on axes 1/2 (limit 65,535), so any realistic N launches; the row
offset row * row_stride is computed in int64 because N * V passes 2^31 already at 14k rows of Qwen's vocabulary.

Triton compiles these kernels for CUDA tensors. With TRITON_INTERPRET=1 in the environment when triton is first
imported, @triton.jit instead hands them to Triton's interpreter, which runs the very same source with NumPy on CPU
tensors: that is how the tests check the kernels on a machine without a GPU. The choice is made once, at import
(Triton's own library functions such as tl.max are decorated then too), and INTERPRETED records it.
Left out: a fused matmul (the logits of a chunk come from torch's matmul, which is already near peak), autotuning
(one block size serves; it is a constant below) and half-precision accumulation (everything accumulates in float32).
"""
import triton
import triton.language as tl


INTERPRETED = bool(triton.knobs.runtime.interpret)  # read now: it is what @triton.jit below acts on

# Vocabulary entries each program handles per step. 4096 float32 lanes spread over 8 warps is 16 per thread; the
# interpreter also likes it big (fewer Python-level loop turns).
BLOCK_V = 4096
NUM_WARPS = 8


@triton.jit
def logprob_forward_kernel(
    logits_ptr,  # [N, V] any float dtype, unit stride along V
    targets_ptr,  # [N] int64
    logprobs_ptr,  # [N] float32 out
    row_max_ptr,  # [N] float32 out: m = max_j z_j
    log_sum_ptr,  # [N] float32 out: log(s) = log sum_j exp(z_j - m); lse = m + log(s)
    entropy_ptr,  # [N] float32 out (written only when WITH_ENTROPY)
    row_stride,  # elements between consecutive rows of logits
    vocab_size,
    temperature,
    ignore_index,
    BLOCK_V: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_logits_ptr = logits_ptr + row * row_stride
    columns = tl.arange(0, BLOCK_V)

    running_max = float("-inf")  # m: largest z seen so far
    running_sum = 0.0  # s: sum of exp(z - m) over the columns seen so far
    running_weighted = 0.0  # t: sum of exp(z - m) * z, for the entropy
    for block_start in range(0, vocab_size, BLOCK_V):
        in_vocab = block_start + columns < vocab_size
        z = tl.load(row_logits_ptr + block_start + columns, mask=in_vocab, other=float("-inf")).to(tl.float32)
        z = z / temperature  # [BLOCK_V]
        new_max = tl.maximum(running_max, tl.max(z, axis=0))
        # A row whose columns so far are all -inf (masked vocabulary) keeps m = -inf; shift by 0 to avoid -inf - -inf.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        rescale = tl.exp(running_max - shift)
        exp_z = tl.exp(z - shift)  # [BLOCK_V], 0 for masked columns
        running_sum = running_sum * rescale + tl.sum(exp_z, axis=0)
        if WITH_ENTROPY:
            finite_z = tl.where(exp_z > 0, z, 0.0)  # exp_z * z would be 0 * -inf = nan for masked columns
            running_weighted = running_weighted * rescale + tl.sum(exp_z * finite_z, axis=0)
        running_max = new_max

    log_sum = tl.log(running_sum)
    target = tl.load(targets_ptr + row)
    ignored = target == ignore_index
    safe_target = tl.where(ignored, 0, target)
    target_z = tl.load(row_logits_ptr + safe_target).to(tl.float32) / temperature
    tl.store(logprobs_ptr + row, tl.where(ignored, 0.0, (target_z - running_max) - log_sum))
    tl.store(row_max_ptr + row, running_max)
    tl.store(log_sum_ptr + row, log_sum)
    if WITH_ENTROPY:  # logging-grade: m - t/s cancels to ~1e-3 absolute when logits are near 1e4
        tl.store(entropy_ptr + row, (running_max - running_weighted / running_sum) + log_sum)


@triton.jit
def logprob_backward_kernel(
    logits_ptr,  # [N, V] the forward's logits (or a recomputation of them)
    targets_ptr,  # [N] int64
    row_max_ptr,  # [N] float32 from the forward
    log_sum_ptr,  # [N] float32 from the forward
    grad_logprobs_ptr,  # [N] float32: dLoss / dlogprob
    grad_logits_ptr,  # [N, V] out, logits' dtype; may be logits_ptr itself (each element is read before written)
    row_stride,
    grad_row_stride,
    vocab_size,
    temperature,
    ignore_index,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_logits_ptr = logits_ptr + row * row_stride
    row_grad_ptr = grad_logits_ptr + row * grad_row_stride
    columns = tl.arange(0, BLOCK_V)

    target = tl.load(targets_ptr + row)
    row_max = tl.load(row_max_ptr + row)
    log_sum = tl.load(log_sum_ptr + row)
    # d logprob / d logits = (onehot - softmax) / temperature; an ignored row passes no gradient.
    scale = tl.where(target == ignore_index, 0.0, tl.load(grad_logprobs_ptr + row)) / temperature
    for block_start in range(0, vocab_size, BLOCK_V):
        vocab_index = block_start + columns
        in_vocab = vocab_index < vocab_size
        z = tl.load(row_logits_ptr + vocab_index, mask=in_vocab, other=float("-inf")).to(tl.float32) / temperature
        probability = tl.exp((z - row_max) - log_sum)
        onehot = tl.where(vocab_index == target, 1.0, 0.0)
        grad = scale * (onehot - probability)
        tl.store(row_grad_ptr + vocab_index, grad.to(grad_logits_ptr.dtype.element_ty), mask=in_vocab)


def launch_forward(logits, targets, temperature, ignore_index, logprobs, row_max, log_sum, entropy):
    """Fill logprobs, row_max, log_sum (and entropy unless None), each float32 [N], from logits [N, V]."""
    rows, vocab_size = logits.shape
    with_entropy = entropy is not None
    logprob_forward_kernel[(rows,)](
        logits, targets, logprobs, row_max, log_sum, entropy if with_entropy else logprobs,
        logits.stride(0), vocab_size, float(temperature), ignore_index,
        BLOCK_V=min(BLOCK_V, triton.next_power_of_2(vocab_size)), WITH_ENTROPY=with_entropy, num_warps=NUM_WARPS,
    )


def launch_backward(logits, targets, row_max, log_sum, grad_logprobs, temperature, ignore_index, grad_logits):
    """Write dlogprob/dlogits * grad_logprobs into grad_logits [N, V] (which may be logits itself)."""
    rows, vocab_size = logits.shape
    logprob_backward_kernel[(rows,)](
        logits, targets, row_max, log_sum, grad_logprobs, grad_logits,
        logits.stride(0), grad_logits.stride(0), vocab_size, float(temperature), ignore_index,
        BLOCK_V=min(BLOCK_V, triton.next_power_of_2(vocab_size)), num_warps=NUM_WARPS,
    )
