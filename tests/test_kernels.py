"""kernels/: fused_linear_logprobs against float64 PyTorch math, on both engines.

The Triton engine runs compiled on CUDA tensors when a GPU is present, otherwise interpreted on CPU tensors, which
needs TRITON_INTERPRET=1 in the environment (`TRITON_INTERPRET=1 pytest tests/test_kernels.py`); without either,
the Triton-engine tests fail with a message saying so rather than being skipped.
The reference is log_softmax in float64 followed by gather, differentiated by autograd.

Tolerances follow from an error bound, not from what one machine gave: a float32 result must be within
FACTOR times the error that the plain path the kernels replace (upcast to float32, log_softmax, gather,
autograd) makes on the *same inputs* against the same float64 reference. That error depends on the CPU's
summation order and grows with the vocabulary (a sum over 151,936 terms), so a fixed number would pass on one
CPU and fail on another; the plain path measures it where the test runs. The floor is the unit roundoff of the
result's dtype (a float32 log-prob; a gradient in its parameter's dtype), below which no result stored in that
dtype can be asked to go.
"""
import os
import subprocess
import sys

import pytest
import torch

import kernels
from kernels import backend_for, fused_linear_logprobs


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ENGINES = ["triton", "torch"]
IGNORE = -100


@pytest.fixture(autouse=True)
def no_forced_backend(monkeypatch):
    monkeypatch.delenv("KERNELS_BACKEND", raising=False)


def reference_logprobs(logits64, targets, temperature=1.0):
    """float64 log softmax(logits / temperature)[target]; 0 for ignored targets."""
    log_probs = torch.log_softmax(logits64 / temperature, dim=1)
    picked = log_probs.gather(1, targets.clamp(min=0)[:, None])[:, 0]
    return torch.where(targets == IGNORE, torch.zeros_like(picked), picked)


def reference_entropy(logits64, temperature=1.0):
    log_probs = torch.log_softmax(logits64 / temperature, dim=1)
    return -(log_probs.exp() * log_probs).sum(dim=1)


def make_targets(rows, vocab_size, generator, ignored_rows=()):
    """Random targets that include 0 and V-1 (when there is room) and ignore_index at ignored_rows."""
    targets = torch.randint(0, vocab_size, (rows,), generator=generator)
    targets[0] = 0
    if rows > 1:
        targets[-1] = vocab_size - 1
    for row in ignored_rows:
        targets[row] = IGNORE
    return targets.to(DEVICE)


def float32_exact(values64):
    """float64 values that float32 represents exactly, on DEVICE: the reference sees what the kernel sees."""
    return values64.float().double().to(DEVICE)


def relative_error(actual, expected):
    """Largest |actual - expected| relative to each |expected|, with a floor of 1e-3 for values near 0."""
    difference = (actual.double() - expected).abs()
    return (difference / expected.abs().clamp(min=1e-3)).max().item()


def normalised_error(actual, expected):
    """Largest absolute error as a share of the largest reference entry (for gradients, which have many zeros)."""
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


FACTOR = 4


def bound(naive_error, dtype=torch.float32):
    """The most error a result may have: FACTOR times the plain path's error on the same inputs, or FACTOR
    unit roundoffs of the result's dtype (2^-24 for float32, 2^-8 for bfloat16) when that is larger."""
    return FACTOR * max(naive_error, torch.finfo(dtype).eps / 2)


def assert_within_bound(actual, naive, expected, error):
    """`actual` is as close to the float64 `expected` as the plain path `naive` is, up to FACTOR."""
    ours, theirs = error(actual, expected), error(naive, expected)
    limit = bound(theirs, actual.dtype)
    assert ours <= limit, f"error {ours:.3g}, plain path {theirs:.3g}, bound {limit:.3g}"


def naive_logprobs(logits, targets, temperature=1.0):
    """The plain path: log_softmax of the logits upcast to float32, then gather; 0 for ignored targets."""
    picked = torch.log_softmax(logits.float() / temperature, dim=1).gather(1, targets.clamp(min=0)[:, None])[:, 0]
    return torch.where(targets == IGNORE, torch.zeros_like(picked), picked)


def naive_entropy(logits, temperature=1.0):
    log_probs = torch.log_softmax(logits.float() / temperature, dim=1)
    return -(log_probs.exp() * log_probs.masked_fill(log_probs == float("-inf"), 0.0)).sum(dim=1)


def naive_logits_case(logits64, targets, temperature, upstream, dtype=torch.float32):
    """(log-probs, logits gradient) of the plain path on logits64 rounded to `dtype`."""
    logits = logits64.to(dtype).requires_grad_()
    logprobs = naive_logprobs(logits, targets, temperature)
    (logprobs.double() * upstream).sum().backward()
    return logprobs.detach(), logits.grad


# ---------------------------------------------------------------------------------------------------------------
# fused_linear_logprobs


def fused_case(rows, hidden_size, vocab_size, seed, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    hidden64 = torch.randn(rows, hidden_size, generator=generator, dtype=torch.float64)
    weight64 = torch.randn(vocab_size, hidden_size, generator=generator, dtype=torch.float64) / hidden_size**0.5 * 3
    # Round to the tested dtype first, so the reference sees exactly the numbers the kernel sees.
    hidden = hidden64.to(dtype).to(DEVICE)
    weight = weight64.to(dtype).to(DEVICE)
    return hidden, weight, generator


def fused_reference(hidden, weight, targets, temperature, upstream):
    hidden64 = hidden.detach().double().requires_grad_()
    weight64 = weight.detach().double().requires_grad_()
    logprobs = reference_logprobs(hidden64 @ weight64.t(), targets, temperature)
    (logprobs * upstream).sum().backward()
    return logprobs.detach(), hidden64.grad, weight64.grad


def naive_fused(hidden, weight, targets, temperature, upstream):
    """The plain path the fused kernel replaces, in the inputs' dtype: full logits, log_softmax, gather."""
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    logprobs = naive_logprobs(hidden @ weight.t(), targets, temperature)
    (logprobs.double() * upstream).sum().backward()
    return logprobs.detach(), hidden.grad, weight.grad


def assert_fused_within_bound(logprobs, hidden_grad, weight_grad, hidden, weight, targets, temperature, upstream):
    """Values and both gradients of a fused call against float64, within the plain path's bound."""
    reference, grad_hidden, grad_weight = fused_reference(hidden, weight, targets, temperature, upstream)
    naive, naive_hidden, naive_weight = naive_fused(hidden, weight, targets, temperature, upstream)
    assert_within_bound(logprobs, naive, reference, relative_error)
    assert_within_bound(hidden_grad, naive_hidden, grad_hidden, normalised_error)
    assert_within_bound(weight_grad, naive_weight, grad_weight, normalised_error)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "rows, vocab_size, chunk_size, temperature",
    [(9, 5000, 4, 1.0), (1, 1000, 3, 1.0), (8, 3000, 8, 0.6), (10, 777, 3, 1.3)],
)
def test_fused_linear_logprobs_float32_matches_float64(engine, rows, vocab_size, chunk_size, temperature):
    hidden, weight, generator = fused_case(rows, 48, vocab_size, seed=rows + vocab_size)
    targets = make_targets(rows, vocab_size, generator, ignored_rows=[2] if rows > 2 else [])
    upstream = torch.randn(rows, generator=generator, dtype=torch.float64).to(DEVICE)
    hidden.requires_grad_(), weight.requires_grad_()
    logprobs = fused_linear_logprobs(hidden, weight, targets, temperature=temperature, chunk_size=chunk_size,
                                     backend=engine)
    (logprobs.double() * upstream).sum().backward()
    assert logprobs.dtype == torch.float32 and logprobs.shape == (rows,)
    assert (logprobs <= 0).all()
    assert hidden.grad.dtype == weight.grad.dtype == torch.float32
    assert_fused_within_bound(logprobs, hidden.grad, weight.grad, hidden, weight, targets, temperature, upstream)


@pytest.mark.parametrize("engine", ENGINES)
def test_fused_linear_logprobs_bfloat16(engine):
    hidden, weight, generator = fused_case(10, 64, 5000, seed=7, dtype=torch.bfloat16)
    targets = make_targets(10, 5000, generator, ignored_rows=[4])
    upstream = torch.randn(10, generator=generator, dtype=torch.float64).to(DEVICE)
    hidden.requires_grad_(), weight.requires_grad_()
    logprobs = fused_linear_logprobs(hidden, weight, targets, temperature=0.9, chunk_size=4, backend=engine)
    (logprobs.double() * upstream).sum().backward()
    assert logprobs.dtype == torch.float32
    assert (logprobs <= 0).all()
    assert hidden.grad.dtype == weight.grad.dtype == torch.bfloat16
    # The plain path runs in bfloat16 too (bfloat16 logits and gradients), which sets the bound.
    assert_fused_within_bound(logprobs, hidden.grad, weight.grad, hidden, weight, targets, 0.9, upstream)


@pytest.mark.parametrize("engine", ENGINES)
def test_fused_linear_logprobs_ignored_rows_pass_no_gradient(engine):
    hidden, weight, generator = fused_case(6, 32, 900, seed=8)
    targets = torch.tensor([IGNORE, 3, IGNORE, 0, 899, IGNORE], device=DEVICE)
    hidden.requires_grad_(), weight.requires_grad_()
    logprobs = fused_linear_logprobs(hidden, weight, targets, chunk_size=4, backend=engine)
    assert (logprobs[[0, 2, 5]] == 0).all() and (logprobs[[1, 3, 4]] < 0).all()
    logprobs.sum().backward()
    assert (hidden.grad[[0, 2, 5]] == 0).all()
    # grad_weight must equal the gradient of the kept rows alone.
    kept = [1, 3, 4]
    ones = torch.ones(3, dtype=torch.float64, device=DEVICE)
    _, _, kept_grad = fused_reference(hidden[kept], weight, targets[kept], 1.0, ones)
    _, _, naive_kept_grad = naive_fused(hidden[kept], weight, targets[kept], 1.0, ones)
    assert_within_bound(weight.grad, naive_kept_grad, kept_grad, normalised_error)


@pytest.mark.parametrize("engine", ENGINES)
def test_fused_linear_logprobs_non_contiguous_inputs(engine):
    hidden_t, weight_t, generator = fused_case(40, 9, 1500, seed=9)  # hidden_t [40, 9], weight_t [1500, 9]
    hidden = hidden_t.t().contiguous().t()[::5]  # [8, 9], row stride 5, column stride 40
    weight = weight_t.t().contiguous().t()  # [1500, 9], column stride 1500
    assert not hidden.is_contiguous() and not weight.is_contiguous()
    targets = make_targets(16, 1500, generator)[::2]
    upstream = torch.randn(8, generator=generator, dtype=torch.float64).to(DEVICE)
    hidden.requires_grad_(), weight.requires_grad_()
    logprobs = fused_linear_logprobs(hidden, weight, targets, chunk_size=3, backend=engine)
    (logprobs.double() * upstream).sum().backward()
    assert_fused_within_bound(logprobs, hidden.grad, weight.grad, hidden, weight, targets, 1.0, upstream)


def test_fused_linear_logprobs_qwen_vocabulary_and_engines_agree():
    """V = 151,936 on three rows: values, gradients and entropy, Triton engine vs torch engine vs float64."""
    hidden, weight, generator = fused_case(3, 16, 151_936, seed=10)
    targets = torch.tensor([0, 151_935, 4242], device=DEVICE)
    upstream = torch.randn(3, generator=generator, dtype=torch.float64).to(DEVICE)
    expected_entropy = reference_entropy(hidden.double() @ weight.double().t(), 1.2)
    for engine in ENGINES:
        hidden_leaf = hidden.clone().requires_grad_()
        weight_leaf = weight.clone().requires_grad_()
        logprobs, entropy = fused_linear_logprobs(hidden_leaf, weight_leaf, targets, temperature=1.2, chunk_size=2,
                                                  return_entropy=True, backend=engine)
        (logprobs.double() * upstream).sum().backward()
        # Each engine within the bound of float64, so the two agree within twice the bound.
        assert_fused_within_bound(logprobs, hidden_leaf.grad, weight_leaf.grad, hidden, weight, targets, 1.2,
                                  upstream)
        assert_within_bound(entropy, naive_entropy(hidden @ weight.t(), 1.2), expected_entropy, relative_error)


@pytest.mark.parametrize("engine", ENGINES)
def test_fused_linear_logprobs_extreme_logits(engine):
    """Logits of +-1e4 overflow a naive exp in any precision; the running max keeps them finite. With an identity
    weight the hidden states are the logits, so the gradient of hidden is the gradient of the logits."""
    vocab_size = 5000
    logits64 = torch.full((4, vocab_size), -1e4, dtype=torch.float64)
    logits64[0, 17] = 1e4  # one huge winner: its log-prob is 0, the others' -2e4
    logits64[1, ::2] = 1e4  # many tied winners
    logits64[2] = torch.linspace(-1e4, 1e4, vocab_size, dtype=torch.float64)
    logits64 = float32_exact(logits64)
    targets = torch.tensor([17, 0, vocab_size - 1, 3], device=DEVICE)
    hidden = logits64.float().requires_grad_()
    logprobs = fused_linear_logprobs(hidden, torch.eye(vocab_size, device=DEVICE), targets, chunk_size=3,
                                     backend=engine)
    reference_input = logits64.clone().requires_grad_()
    reference = reference_logprobs(reference_input, targets)
    assert torch.isfinite(logprobs).all()
    assert (logprobs <= 0).all()
    logprobs.sum().backward()
    reference.sum().backward()
    assert torch.isfinite(hidden.grad).all()
    naive, naive_grad = naive_logits_case(logits64, targets, 1.0, torch.ones(4, dtype=torch.float64, device=DEVICE))
    assert_within_bound(logprobs, naive, reference.detach(), relative_error)
    assert_within_bound(hidden.grad, naive_grad, reference_input.grad, normalised_error)


@pytest.mark.parametrize("engine", ENGINES)
def test_fused_linear_logprobs_entropy(engine):
    """The entropy of each row's distribution, on request; asking for it leaves the log-probs bit for bit."""
    hidden, weight, generator = fused_case(5, 32, 5000, seed=5)
    targets = make_targets(5, 5000, generator, ignored_rows=[3])
    logprobs, entropy = fused_linear_logprobs(hidden, weight, targets, temperature=0.8, chunk_size=2,
                                              return_entropy=True, backend=engine)
    expected = reference_entropy(hidden.double() @ weight.double().t(), 0.8)
    assert_within_bound(entropy, naive_entropy(hidden @ weight.t(), 0.8), expected, relative_error)
    assert torch.equal(logprobs, fused_linear_logprobs(hidden, weight, targets, temperature=0.8, chunk_size=2,
                                                       backend=engine))


def test_fused_linear_logprobs_without_gradients_needs_no_backward_state():
    """A frozen reference model (the Bayesian reward) runs under no_grad: the result carries no graph."""
    hidden, weight, generator = fused_case(4, 16, 600, seed=12)
    with torch.no_grad():
        logprobs = fused_linear_logprobs(hidden, weight, make_targets(4, 600, generator), chunk_size=2)
    assert logprobs.grad_fn is None and (logprobs <= 0).all()


# ---------------------------------------------------------------------------------------------------------------
# Dispatch and input checks


def test_dispatch_rules(monkeypatch):
    logits = torch.zeros(2, 3, device=DEVICE)
    assert backend_for(logits) == ("triton" if kernels.TRITON_AVAILABLE else "torch")
    assert backend_for(logits, "torch") == "torch"
    monkeypatch.setenv("KERNELS_BACKEND", "torch")
    assert backend_for(logits) == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        backend_for(logits, "cuda")


def test_cpu_without_interpreter_uses_the_torch_path():
    """A fresh process without TRITON_INTERPRET: CPU tensors take the PyTorch path; forcing Triton says why not."""
    script = (
        "import torch, kernels\n"
        "assert kernels.backend_for(torch.zeros(2, 3)) == 'torch'\n"
        "try:\n"
        "    kernels.backend_for(torch.zeros(2, 3), 'triton')\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
    )
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("TRITON_INTERPRET", "KERNELS_BACKEND")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", script], cwd=root, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "backend 'triton' was requested but cannot run here" in result.stdout


def test_clear_errors_for_bad_inputs():
    hidden, weight = torch.zeros(3, 4, device=DEVICE), torch.zeros(10, 4, device=DEVICE)
    with pytest.raises(ValueError, match=r"targets\[1\] = 10 is outside \[0, 10\)"):
        fused_linear_logprobs(hidden, weight, torch.tensor([0, 10, 2], device=DEVICE))
    with pytest.raises(ValueError, match=r"targets\[0\] = -1"):
        fused_linear_logprobs(hidden, weight, torch.tensor([-1, 1, 2], device=DEVICE))
    with pytest.raises(ValueError, match="hidden has N = 3 rows but targets has 2"):
        fused_linear_logprobs(hidden, weight, torch.tensor([0, 1], device=DEVICE))
    with pytest.raises(ValueError, match="targets must be a 1-D integer tensor"):
        fused_linear_logprobs(hidden, weight, torch.zeros(3, device=DEVICE))
    with pytest.raises(ValueError, match="hidden must be a 2-D"):
        fused_linear_logprobs(hidden[0], weight, torch.tensor([1], device=DEVICE))
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        fused_linear_logprobs(hidden, weight, torch.tensor([0, 1, 2], device=DEVICE), temperature=0.0)
    weight = torch.zeros(10, 5, device=DEVICE)
    with pytest.raises(ValueError, match="their H must agree"):
        fused_linear_logprobs(hidden, weight, torch.tensor([0, 1, 2], device=DEVICE))
    with pytest.raises(ValueError, match="must share dtype and device"):
        fused_linear_logprobs(hidden, weight[:, :4].double(), torch.tensor([0, 1, 2], device=DEVICE))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        fused_linear_logprobs(hidden, weight[:, :4], torch.tensor([0, 1, 2], device=DEVICE), chunk_size=0)


@pytest.mark.parametrize("engine", ENGINES)
def test_empty_batch(engine):
    hidden = torch.zeros(0, 8, device=DEVICE, requires_grad=True)
    weight = torch.randn(50, 8, device=DEVICE, requires_grad=True)
    targets = torch.zeros(0, dtype=torch.long, device=DEVICE)
    logprobs = fused_linear_logprobs(hidden, weight, targets, backend=engine)
    assert logprobs.shape == (0,)
    logprobs.sum().backward()
    assert (weight.grad == 0).all()
