"""The GRPO step's slow path, which the fast one replaced: kept here, outside the runtime code, to test the
fast path against (tests/test_grpo_train.py) and to time both (bench/grpo_step.py).

grpo.grpo_step samples every group of a step in one batch (model.generate_groups, each prompt prefilled
once) and runs each prompt once per pass over its group (model.continuation_logprobs). The slow path
samples each group on its own (model.generate_completions on num_generations copies of its prompt) and
runs every pass over whole prompt + completion sequences (sequence_logprobs, each prompt repeated in its
rows): the same numbers up to rounding, at several times the cost.
"""
from contextlib import contextmanager

import torch

import grpo
import reward
from model import Continuations, generate_completions, sequence_logprobs


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


def full_sequence_logprobs(model, sequences: Continuations, target_mask, temperature=1.0, return_entropy=False):
    """model.continuation_logprobs through sequence_logprobs: each prompt (the first lengths[b] tokens of its
    stored row) + continuation as one right-padded row, each prompt repeated in its rows."""
    starts = sequences.prompt_ids.shape[1] - sequences.prompt_mask.sum(1)[sequences.rows]   # [B]: first real column
    ids, mask, targets = [], [], []
    for b, (row, start, length) in enumerate(zip(sequences.rows.tolist(), starts.tolist(), sequences.lengths.tolist())):
        prompt = sequences.prompt_ids[row, start:start + length]
        ids.append(torch.cat((prompt, sequences.ids[b])))
        mask.append(torch.cat((torch.ones_like(prompt), sequences.mask[b])))
        targets.append(torch.cat((torch.zeros_like(prompt), target_mask[b].long())))
    # Row b: [prompt, continuation, pads], right-padded to the longest.
    ids, mask, targets = (torch.nn.utils.rnn.pad_sequence(rows, batch_first=True) for rows in (ids, mask, targets))
    full = sequence_logprobs(model, ids, mask, targets, temperature, return_entropy)  # [B, T] (each)
    # Continuation token t of row b sits at column lengths[b] + t (pads clamped, then zeroed).
    at = (sequences.lengths[:, None] + torch.arange(sequences.ids.shape[1], device=ids.device)).clamp(
        max=ids.shape[1] - 1)
    if not return_entropy:
        return full.gather(1, at) * target_mask                                        # [B, Lc]
    return tuple(values.gather(1, at) * target_mask for values in full)


@contextmanager
def full_sequence_step():
    """Within the block grpo's step and the reward's Bayesian pass take the slow path: their functions are
    swapped for the ones above."""
    saved = grpo.sample_groups, grpo.continuation_logprobs, reward.continuation_logprobs
    grpo.sample_groups, grpo.continuation_logprobs = sample_groups_one_by_one, full_sequence_logprobs
    reward.continuation_logprobs = full_sequence_logprobs
    try:
        yield
    finally:
        grpo.sample_groups, grpo.continuation_logprobs, reward.continuation_logprobs = saved
