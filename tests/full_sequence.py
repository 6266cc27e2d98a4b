"""The GRPO step's slow path, which the fast one replaced: kept here, outside the runtime code, to test the
fast path against (tests/test_grpo_train.py) and to time both (bench/grpo_step.py).

grpo.grpo_step samples every group of a step in one batch (model.generate_groups, each prompt prefilled
once) and runs each prompt once per pass over its group (model.continuation_logprobs). The slow path
samples each group on its own (model.generate_completions on num_generations copies of its prompt) and
runs every pass over whole prompt + completion sequences (continuation_logprobs with shared_prefix=False):
the same numbers up to rounding, at several times the cost.
"""
from contextlib import contextmanager

import torch

import grpo
from model import continuation_logprobs, generate_completions


def sample_groups_one_by_one(policy, prompt_ids, seeds, settings, eos_id, pad_id):
    """grpo.sample_groups with each group sampled on its own: generate_completions on G copies of its prompt,
    drawing from the generator its seed starts."""
    device = policy.lm_head_weight.device
    completions = []
    for prompt, seed in zip(prompt_ids, seeds):
        generator = torch.Generator(device=device).manual_seed(seed)
        completions += generate_completions(policy, [prompt] * settings.num_generations,
                                            settings.max_completion_length, eos_id, pad_id, settings.temperature,
                                            settings.top_p, generator)
    return [ids for ids, _ in completions], [truncated for _, truncated in completions]


def full_sequence_logprobs(model, sequences, target_mask, temperature=1.0, return_entropy=False):
    """continuation_logprobs over whole prompt + continuation sequences, each prompt repeated in its rows."""
    return continuation_logprobs(model, sequences, target_mask, temperature, shared_prefix=False,
                                 return_entropy=return_entropy)


@contextmanager
def full_sequence_step():
    """Within the block grpo's step takes the slow path: its two functions are swapped for the ones above.
    (The reward's Bayesian pass has its own switch: CompositeReward(..., shared_prefix=False).)"""
    saved = grpo.sample_groups, grpo.continuation_logprobs
    grpo.sample_groups, grpo.continuation_logprobs = sample_groups_one_by_one, full_sequence_logprobs
    try:
        yield
    finally:
        grpo.sample_groups, grpo.continuation_logprobs = saved
