"""Each prompt run once: model.continuation_logprobs against the full pass over prompt + continuation, and
model.generate_groups (every group of a step in one batch) against each group sampled on its own.

The full pass (model.sequence_logprobs over the concatenated, right-padded sequences) is the reference.
In float64 the two passes differ only by rounding (~1e-15 on log-probs of order 1), so they must agree to
1e-10, far below what any real mistake (a wrong position, mask or key) changes (order 1e-2 and more).
In float32 the tolerance follows from float32's own error, measured on the same inputs, as in
tests/test_kernels.py: the shared-prefix pass must be within FACTOR times the error that the float32 full
pass makes against the float64 full pass. Both add the same terms in different orders, so their errors
are of the same size and their ratio scatters around 1; FACTOR = 8 leaves room for other CPUs' summation
orders, not for a different result: a wrong position, mask or key moves the result by order 1e-2, orders
of magnitude above float32's error.
"""
import pytest
import torch

from full_sequence import full_sequence_logprobs
from model import (
    Continuations,
    PrefillCache,
    Qwen2,
    Qwen2Config,
    _RecordKeysValues,
    continuation_logprobs,
    generate,
    generate_completions,
    generate_groups,
    pad_left,
    pad_right,
    sequence_logprobs,
)
from tiny import move_weights_off_init_


VOCAB = 61
# (query heads, key/value heads, tied lm_head): GQA with 2 and 4 queries per key/value head, and plain MHA.
SHAPES = [(4, 2, True), (4, 2, False), (4, 1, False), (4, 4, True)]
SHAPE_IDS = ["gqa2-tied", "gqa2-untied", "gqa4-untied", "mha-tied"]
FACTOR = 8


def random_model(heads, kv_heads, tied, seed=0):
    """A float32 Qwen2 with every weight (biases and norms too) away from its init, so attention matters."""
    torch.manual_seed(seed)
    model = Qwen2(Qwen2Config(vocab_size=VOCAB, hidden_size=heads * 8, intermediate_size=40, num_hidden_layers=2,
                              num_attention_heads=heads, num_key_value_heads=kv_heads, rope_theta=1e4,
                              tie_word_embeddings=tied))
    return move_weights_off_init_(model, 0.3)


def random_batch(prompt_lengths, continuation_lengths, seed=1):
    """Token lists: prompts and continuations of the given lengths."""
    generator = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in prompt_lengths]
    continuations = [torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in continuation_lengths]
    return prompts, continuations


def as_continuations(prompts, rows, continuations):
    """What the training loops build: Continuations.from_lists on each continuation's own prompt."""
    return Continuations.from_lists([prompts[row] for row in rows], continuations, 0)


def full_sequences(prompts, rows, continuations):
    """Each prompt + continuation as one right-padded row, and where each continuation token sits in it:
    ids, mask [B, T]; columns [B, Lc] (a continuation's pads point at its last token; they are masked)."""
    ids, mask = pad_right([prompts[r] + c for r, c in zip(rows, continuations)], 0)
    width = max(len(c) for c in continuations)
    columns = torch.stack([len(prompts[r]) + torch.arange(width).clamp(max=len(c) - 1)
                           for r, c in zip(rows, continuations)])
    return ids, mask, columns


def float64_logprobs(model, hidden, targets, mask):
    """log softmax(hidden @ lm_head.T)[target] in float64, 0 on pads: no float32 kernel in the way."""
    logits = torch.nn.functional.linear(hidden, model.lm_head_weight).double()      # [B, Lc, V]
    return torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0] * mask


def with_gradient(model, logprobs_of, weights):
    """(log-probs, gradient of sum(weights * log-probs) for every parameter) of one pass."""
    model.zero_grad(set_to_none=True)
    logprobs = logprobs_of()
    (logprobs * weights).sum().backward()
    return logprobs.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def shared_hidden(model, prompts, rows, continuations):
    s = as_continuations(prompts, rows, continuations)
    return model.continuation_hidden_states(s.prompt_ids, s.prompt_mask, s.rows, s.ids, s.mask, s.lengths)


def full_hidden(model, prompts, rows, continuations):
    """The state that predicts each continuation token, taken from one pass over prompt + continuation."""
    ids, mask, columns = full_sequences(prompts, rows, continuations)
    hidden = model.hidden_states(ids, mask)                                          # [B, T, H]
    return hidden.gather(1, (columns - 1)[..., None].expand(-1, -1, hidden.shape[-1]))  # [B, Lc, H]


def exact(model, hidden_of, prompts, rows, continuations, weights):
    """Float64 log-probs over the states `hidden_of` gives, and their gradient."""
    targets, mask = pad_right(continuations, 0)
    return with_gradient(model, lambda: float64_logprobs(
        model, hidden_of(model, prompts, rows, continuations), targets, mask), weights)


def shared_logprobs(model, prompts, rows, continuations):
    """What GRPO calls: the shared-prefix pass through the fused kernel, float32 [B, Lc]."""
    sequences = as_continuations(prompts, rows, continuations)
    return continuation_logprobs(model, sequences, sequences.mask)


def full_logprobs(model, prompts, rows, continuations):
    """The full-sequence pass through the fused kernel (model.sequence_logprobs), as float32 [B, Lc]."""
    ids, mask, columns = full_sequences(prompts, rows, continuations)
    targets = torch.zeros_like(ids).scatter(1, columns, 1)
    return sequence_logprobs(model, ids, mask, targets).gather(1, columns) * pad_right(continuations, 0)[1]


# (prompt lengths, prompt of each continuation, continuation lengths): three prompts of different lengths
# (left padding), used by uneven numbers of continuations in any order, of different lengths (right padding);
# one unpadded prompt shared by all; and a played call: prompts 1 and 2 are the first 5 and 9 tokens of prompt 0
# (stored only as prompt 0's beginning), prompt 3 stands alone.
CASES = {
    "padded": ([7, 12, 3], [0, 0, 1, 2, 2, 2, 1, 0], [5, 1, 6, 2, 4, 6, 3, 6]),
    "one-prompt": ([9], [0, 0, 0, 0], [4, 4, 2, 5]),
    "call": ([12, 5, 9, 4], [1, 0, 2, 2, 3, 1], [3, 6, 2, 5, 4, 1]),
}


def case(name, dtype=torch.float64):
    prompt_lengths, rows, continuation_lengths = CASES[name]
    prompts, continuations = random_batch(prompt_lengths, continuation_lengths)
    if name == "call":
        prompts[1], prompts[2] = prompts[0][:5], prompts[0][:9]
    weights = torch.randn(len(rows), max(continuation_lengths), generator=torch.Generator().manual_seed(2),
                          dtype=dtype)
    return prompts, rows, continuations, weights


@pytest.mark.parametrize("layout", list(CASES))
@pytest.mark.parametrize("heads,kv_heads,tied", SHAPES, ids=SHAPE_IDS)
def test_shared_prefix_equals_full_pass_in_float64(heads, kv_heads, tied, layout):
    model = random_model(heads, kv_heads, tied).double()
    prompts, rows, continuations, weights = case(layout)
    shared, shared_grads = exact(model, shared_hidden, prompts, rows, continuations, weights)
    full, full_grads = exact(model, full_hidden, prompts, rows, continuations, weights)
    assert (full != 0).sum() == sum(map(len, continuations))
    torch.testing.assert_close(shared, full, rtol=1e-10, atol=1e-10)
    for name, grad in full_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-10, atol=1e-10, msg=name)


def error(actual, expected):
    """Largest absolute error as a share of the largest reference entry (gradients have many near-zeros)."""
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("layout", list(CASES))
@pytest.mark.parametrize("heads,kv_heads,tied", SHAPES, ids=SHAPE_IDS)
def test_shared_prefix_float32_within_float32_error(heads, kv_heads, tied, layout):
    model32 = random_model(heads, kv_heads, tied)
    model64 = random_model(heads, kv_heads, tied).double()   # the very same weights, exactly, in float64
    prompts, rows, continuations, weights = case(layout)
    truth, truth_grads = exact(model64, full_hidden, prompts, rows, continuations, weights)
    weights = weights.float()
    full, full_grads = with_gradient(model32, lambda: full_logprobs(model32, prompts, rows, continuations), weights)
    shared, shared_grads = with_gradient(model32, lambda: shared_logprobs(model32, prompts, rows, continuations),
                                         weights)

    def check(what, ours, theirs):
        limit = FACTOR * max(theirs, torch.finfo(torch.float32).eps / 2)
        assert ours <= limit, f"{what}: error {ours:.3g}, float32 full pass {theirs:.3g}, bound {limit:.3g}"

    check("log-probs", error(shared, truth), error(full, truth))
    # A gradient tensor's float32 error depends on how much its terms cancel (a key bias's gradient almost
    # vanishes, so its relative error is large and varies from one summation order to another); the error
    # level of this model is the full pass's largest one over all tensors.
    full_level = max(error(full_grads[name], truth_grads[name]) for name in truth_grads)
    for name in truth_grads:
        check(name, error(shared_grads[name], truth_grads[name]), full_level)


@pytest.mark.parametrize("layout,stored", [("padded", 3), ("one-prompt", 1), ("call", 2)])
def test_a_prompt_is_stored_once_and_a_beginning_of_another_not_at_all(layout, stored):
    prompts, rows, continuations, _ = case(layout)
    sequences = as_continuations(prompts, rows, continuations)
    assert sequences.prompt_ids.shape[0] == stored
    for b, row in enumerate(rows):        # each continuation's prompt: the first lengths[b] tokens of its row
        stored_row = sequences.rows[b]
        real = sequences.prompt_ids[stored_row][sequences.prompt_mask[stored_row].bool()]   # the row's tokens
        length = int(sequences.lengths[b])
        assert length == len(prompts[row]) and real[:length].tolist() == prompts[row]


@pytest.mark.parametrize("layout", list(CASES))
def test_the_full_sequence_path_is_sequence_logprobs_on_each_prompt_plus_continuation(layout):
    """tests/full_sequence.py's path, which bench/grpo_step.py times, is the plain full pass."""
    model = random_model(4, 2, False)
    prompts, rows, continuations, _ = case(layout)
    sequences = as_continuations(prompts, rows, continuations)
    with torch.no_grad():
        assert torch.equal(full_sequence_logprobs(model, sequences, sequences.mask),
                           full_logprobs(model, prompts, rows, continuations))


# ------------------------------------------------------------------------------------------- generation

def sampled(model, prompts, seeds, eos, group_size=4):
    """generate_groups with one seeded generator per prompt: temperature 1, top-p 0.9, 12 new tokens."""
    return generate_groups(model, prompts, group_size, [torch.Generator().manual_seed(s) for s in seeds],
                           max_new_tokens=12, temperature=1.0, top_p=0.9, eos_token_id=eos, pad_token_id=0)


def test_a_group_samples_the_same_alone_and_in_a_batch():
    """In float64 the probabilities in a batch equal those alone to ~1e-16, so a draw could only differ if it
    fell that close to the boundary between two tokens: the completions are the same, token for token."""
    model = random_model(4, 2, False, seed=3).double().eval()
    prompts, _ = random_batch([5, 11, 8], [], seed=4)
    seeds = [101, 202, 303]
    free = sampled(model, prompts, seeds, eos=None)
    eos = int(free[:, :6].flatten().mode().values)      # a token common early on: rows end at different times
    batched = sampled(model, prompts, seeds, eos).view(3, 4, -1)                     # [groups, G, n]
    reordered = sampled(model, prompts[::-1], seeds[::-1], eos).view(3, 4, -1).flip(0)
    ends = []
    for g, (prompt, seed) in enumerate(zip(prompts, seeds)):
        alone = sampled(model, [prompt], [seed], eos)                                 # [G, n_g]
        # What GRPO ran before batching: generate() on group_size copies of the prompt.
        copies = generate(model, torch.tensor([prompt] * 4), max_new_tokens=12, temperature=1.0, top_p=0.9,
                          eos_token_id=eos, pad_token_id=0,
                          generator=torch.Generator().manual_seed(seed))[:, len(prompt):]
        assert torch.equal(alone, copies)
        width = alone.shape[1]
        for group in (batched[g], reordered[g]):
            assert torch.equal(group[:, :width], alone)
            assert (group[:, width:] == 0).all()                                     # only pads after its end
        ends.append(width)
    assert (batched == eos).any(dim=-1).any() and len(set(ends)) > 1                # groups ended at different steps


def test_generate_groups_is_greedy_decoding_of_each_prompt_at_temperature_0():
    model = random_model(4, 2, True, seed=5).double().eval()
    prompts, _ = random_batch([6, 2, 9], [], seed=6)
    grouped = generate_groups(model, prompts, 2, [None] * 3, max_new_tokens=8)           # [3 * 2, 8]
    input_ids, attention_mask = pad_left(prompts, 0)
    expected = generate(model, input_ids, attention_mask, max_new_tokens=8)[:, input_ids.shape[1]:]
    assert torch.equal(grouped, expected.repeat_interleave(2, dim=0))


def test_a_prompt_prefilled_after_its_last_one_samples_as_one_prefilled_whole():
    """PrefillCache: of the second round's prompts, keys 0 and 1 begin with their first-round prompts, key 2's
    does not and key 3 is new. In float64 the samples are token for token those of a plain prefill (as in the
    test above, a draw could only differ within ~1e-16 of a boundary), and the keys/values stored for the next
    round are those of one pass over the whole prompt."""
    model = random_model(4, 2, False, seed=7).double().eval()
    first, _ = random_batch([6, 9, 4], [], seed=8)
    extra, _ = random_batch([5, 3, 7, 2], [], seed=9)
    second = [first[0] + extra[0], first[1] + extra[1], extra[2] + first[2], extra[3]]
    cache = PrefillCache()

    def sample(prompts, keys=None):
        return generate_completions(model, prompts, 10, 7, 0, 1.0, 0.9, torch.Generator().manual_seed(5),
                                    cache if keys else None, keys)

    assert sample(first, [0, 1, 2]) == sample(first)
    assert [cache.beginning(key, prompt) is not None for key, prompt in enumerate(second)] == [True, True, False, False]
    assert sample(second, [0, 1, 2, 3]) == sample(second)
    for key, prompt in enumerate(second):
        whole = _RecordKeysValues()
        with torch.no_grad():
            model.model(torch.tensor([prompt]), torch.arange(len(prompt))[None], None, whole)
        stored_ids, stored = cache.prompts[key]
        assert stored_ids == prompt
        for layer in range(len(whole.keys)):
            torch.testing.assert_close(stored.keys[layer], whole.keys[layer], rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(stored.values[layer], whole.values[layer], rtol=1e-10, atol=1e-10)
    cache.keep([1, 3, 4])                                 # calls 0 and 2 ended; 4 never spoke
    assert sorted(cache.prompts) == [1, 3]
