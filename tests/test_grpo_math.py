"""GRPO advantages and every loss_type against hand-computed float64 references."""
import math

import pytest
import torch

from config import GRPOConfig
from grpo import compute_advantages, grpo_loss


def test_advantages_group_batch_none():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    group = compute_advantages(rewards, "group")
    # group means (2, 0), unbiased stds (1, 0): the second group teaches nothing
    torch.testing.assert_close(group, torch.tensor([[-1 / 1.0001, 0, 1 / 1.0001], [0, 0, 0]]))
    batch_std = math.sqrt(8 / 5)  # values 1,2,3,0,0,0: mean 1, squared deviations sum to 8, n - 1 = 5
    torch.testing.assert_close(compute_advantages(rewards, "batch"),
                               torch.tensor([[-1, 0, 1], [0, 0, 0]]) / (batch_std + 1e-4))
    torch.testing.assert_close(compute_advantages(rewards, "none"), torch.tensor([[-1.0, 0, 1], [0, 0, 0]]))


def reference_loss(logp, old, ref, adv, mask, s):
    """The objective written out token by token in float64."""
    per_seq, total, tokens = [], 0.0, 0
    for b in range(len(logp)):
        seq_sum, seq_tokens = 0.0, 0
        for t in range(len(logp[b])):
            if not mask[b][t]:
                continue
            ratio = math.exp(logp[b][t] - old[b][t])
            clipped = min(max(ratio, 1 - s.epsilon), 1 + s.epsilon_high)
            value = -min(ratio * adv[b], clipped * adv[b])
            delta = ref[b][t] - logp[b][t]
            value += s.beta * (math.exp(delta) - delta - 1)
            seq_sum += value
            seq_tokens += 1
        per_seq.append(seq_sum / max(seq_tokens, 1))
        total += seq_sum
        tokens += seq_tokens
    return {"grpo": sum(per_seq) / len(logp), "dapo": total / tokens,
            "dr_grpo": total / (len(logp) * s.max_completion_length)}


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_loss_types_match_hand_computation(loss_type):
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 3
    old = logp + (torch.rand(3, 5, generator=g, dtype=torch.float64) - 0.5)  # ratios on both sides of the clip
    ref = logp + (torch.rand(3, 5, generator=g, dtype=torch.float64) - 0.5)
    adv = torch.tensor([1.5, -0.7, 0.2], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    s = GRPOConfig(loss_type=loss_type, beta=0.04, epsilon=0.2, epsilon_high=0.28, max_completion_length=5)
    loss, stats = grpo_loss(logp, old, ref, adv, mask, s, num_sequences=3, num_tokens=int(mask.sum()))
    expected = reference_loss(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), s)
    assert loss.item() == pytest.approx(expected[loss_type], rel=1e-12)
    assert 0 < stats["clipped"][mask.bool()].mean() < 1  # the case exercises the clip


def test_no_kl_term_when_beta_is_zero():
    logp = torch.tensor([[-1.0, -2.0]])
    s = GRPOConfig(beta=0.0, loss_type="dapo")
    loss, _ = grpo_loss(logp, logp, None, torch.tensor([2.0]), torch.ones(1, 2), s, 1, 2)
    assert loss.item() == pytest.approx(-2.0)  # ratio 1: the loss is minus the advantage
