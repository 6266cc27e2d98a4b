"""The GRPO loop end to end: an update lowers the loss, resume is exact, two processes equal one.

These tests use a tiny random model, so its completions are gibberish; the composite reward would give
them all the same floor value (zero advantage, nothing to learn). To exercise the loop itself they swap
in a simple deterministic reward of the text (its share of the letter 'e'): resume and multi-process
equality do not depend on which reward is used, and reward.py has its own tests.
"""
import dataclasses
import json
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import grpo
from config import Config, GRPOConfig
from corpus import render_call_text, write_corpus
from model import Qwen2, Qwen2Config, load_pretrained, save_pretrained, sequence_logprobs
from reward import BEHAVIOUR_KEYS, REWARD_KEYS, TERMS
from simulate import simulate_call
from tokenizer import ChatTokenizer
from training import make_optimizer


class LetterReward:
    """total = share of 'e' in the completion; every other term is a copy, so metrics have all keys."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, samples, prompt_ids, completions, truncated):
        total = torch.tensor([t.count("e") / max(len(t), 1) for t in completions])
        return {term: total.clone() for term in REWARD_KEYS + BEHAVIOUR_KEYS}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    calls = [simulate_call(i, seed=5) for i in range(24)]
    write_corpus(str(root / "train.jsonl"), calls[:20])
    write_corpus(str(root / "test.jsonl"), calls[20:])
    tokenizer = ChatTokenizer.train([render_call_text(c) for c in calls], vocab_size=300)
    torch.manual_seed(0)
    model = Qwen2(Qwen2Config(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              rope_theta=1e4, tie_word_embeddings=True))
    save_pretrained(model, str(root / "base"))
    tokenizer.save(str(root / "base"))
    settings = GRPOConfig(steps=4, prompts_per_step=2, num_generations=4, max_completion_length=10,
                          mask_truncated_completions=False, learning_rate=1e-3, warmup_steps=1,
                          save_steps=2, log_completion_steps=0, max_prompt_length=2048, beta=0.04)
    return root, Config(grpo=settings, source="test")


def run(setup_, out, monkeypatch, **overrides):
    root, config = setup_
    config = dataclasses.replace(config, grpo=dataclasses.replace(config.grpo, **overrides))
    monkeypatch.setattr(grpo, "CompositeReward", LetterReward)
    grpo.train(config, str(root / "base"), str(root), str(out), audit=True)
    return out


def metrics(path):
    with open(os.path.join(path, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in f]


def weights(path):
    return load_pretrained(os.path.join(path, "final")).state_dict()


def test_metrics_audit_and_checkpoints(setup, tmp_path, monkeypatch):
    out = run(setup, tmp_path / "run", monkeypatch)
    records = metrics(out)
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    for key in ["reward_mean", "reward_std", "zero_std_groups", "completion_len_mean", "truncated_fraction",
                "kl", "clip_fraction", "entropy", "loss", "grad_norm", "lr"] + [f"reward_{t}" for t in TERMS] \
            + [f"reply_{key}" for key in BEHAVIOUR_KEYS]:
        assert key in records[0]
    vocab_size = load_pretrained(os.path.join(setup[0], "base")).config.vocab_size
    assert all(0 < r["entropy"] <= math.log(vocab_size) for r in records)   # nats, at most uniform
    assert records[0]["kl"] == 0.0 and records[-1]["kl"] > 0        # the policy moved away from the reference
    with open(out / "audit.jsonl") as f:
        audit = [json.loads(line) for line in f]
    assert len(audit) == 4 * 2 * 4                                  # steps x groups x generations
    assert {"prompt_id", "completion", "rewards", "advantage", "ratio"} <= set(audit[0])
    group = [a["advantage"] for a in audit[:4]]
    assert sum(group) == pytest.approx(0, abs=1e-5)                 # advantages are centred per group
    assert sorted(os.listdir(out / "checkpoints")) == ["step-000002", "step-000004"]
    assert (out / "final" / "model.safetensors").exists()


def test_resume_continues_exactly(setup, tmp_path, monkeypatch):
    straight = run(setup, tmp_path / "straight", monkeypatch)

    # Crash in the middle of step 3: its metrics and audit lines are written, the step-4 checkpoint is
    # not. Resuming from step 2 must drop those lines and redo step 3 exactly.
    real_audit = grpo.write_audit

    def audit_then_crash(audit_file, step, *args):
        real_audit(audit_file, step, *args)
        if step == 2:
            raise KeyboardInterrupt("simulated crash during step 3")
    monkeypatch.setattr(grpo, "write_audit", audit_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run(setup, tmp_path / "resumed", monkeypatch)
    assert [r["step"] for r in metrics(tmp_path / "resumed")] == [0, 1, 2]
    monkeypatch.setattr(grpo, "write_audit", real_audit)
    root, config = setup
    grpo.train(config, str(root / "base"), str(root), str(tmp_path / "resumed"), resume=True, audit=True)

    assert metrics(tmp_path / "resumed") == metrics(straight)
    assert (tmp_path / "resumed" / "audit.jsonl").read_text() == (straight / "audit.jsonl").read_text()
    a, b = weights(straight), weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_one_update_lowers_the_loss_on_a_fixed_batch(setup):
    root, config = setup
    policy = load_pretrained(str(root / "base"))
    settings = dataclasses.replace(config.grpo, beta=0.0)
    ids = torch.randint(0, policy.config.vocab_size, (4, 12), generator=torch.Generator().manual_seed(1))
    attention = torch.ones_like(ids)
    completion = torch.zeros_like(ids)
    completion[:, 6:] = 1
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    old = sequence_logprobs(policy, ids, attention, completion).detach()

    def loss():
        logprobs = sequence_logprobs(policy, ids, attention, completion)
        return grpo.grpo_loss(logprobs, old, None, advantages, completion, settings, 4, int(completion.sum()))[0]

    before = loss()
    before.backward()
    optimizer.step()
    assert loss().item() < before.item() - 1e-4


class AsciiReward:
    """total = share of ASCII characters: gibberish completions differ in it, so every advantage moves."""

    def __call__(self, samples, prompt_ids, completions, truncated):
        total = torch.tensor([sum(c.isascii() for c in t) / max(len(t), 1) for t in completions])
        return {term: total.clone() for term in REWARD_KEYS + BEHAVIOUR_KEYS}


def test_shared_prefix_step_equals_the_full_sequence_step(setup):
    """One step through both paths (groups in one batch and each prompt run once per pass, or each group
    generated alone and every pass over whole sequences), from the same weights and seeds. In float64 the
    sampling probabilities agree to ~1e-16, so the completions are the same (tests/test_shared_prefix.py);
    log-probs leave the kernel in float32 either way (compared at float32's tolerance), while the
    gradient and the updated weights are float64 and agree to 1e-10 (the kernel's float32 steps see
    inputs equal to ~1e-16 and round them alike)."""
    root, config = setup
    settings = config.grpo
    tokenizer = ChatTokenizer.load(str(root / "base"))
    samples, prompt_ids = grpo.load_prompt_pool(str(root / "train.jsonl"), tokenizer, settings)
    reference = load_pretrained(str(root / "base"), dtype=torch.float64).requires_grad_(False)
    steps = []
    for shared_prefix in (True, False):
        policy = load_pretrained(str(root / "base"), dtype=torch.float64)
        optimizer = make_optimizer(policy, settings.learning_rate, settings.weight_decay)
        batch, _, loss, grad_norm = grpo.grpo_step(policy, reference, AsciiReward(), optimizer, tokenizer,
                                                   samples[:2], prompt_ids[:2], [11, 12], settings, lr=1e-3,
                                                   shared_prefix=shared_prefix)
        steps.append((batch, loss, grad_norm, policy.state_dict()))
    (shared, shared_loss, shared_norm, shared_weights), (full, full_loss, full_norm, full_weights) = steps
    assert shared.completions == full.completions and torch.equal(shared.loss_mask, full.loss_mask)
    assert shared.ref_logprobs.abs().sum() > 0 and shared.advantages.abs().min() > 0
    torch.testing.assert_close(shared.ref_logprobs, full.ref_logprobs)
    torch.testing.assert_close(shared.advantages, full.advantages)
    torch.testing.assert_close(shared_loss, full_loss)
    torch.testing.assert_close(shared_norm, full_norm, rtol=1e-10, atol=0)
    for name, weight in full_weights.items():
        torch.testing.assert_close(shared_weights[name], weight, rtol=1e-10, atol=1e-12, msg=name)


def _rank_worker(rank, world_size, port, setup_, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    grpo.CompositeReward = LetterReward
    root, config = setup_
    config = dataclasses.replace(config, grpo=dataclasses.replace(config.grpo, steps=2, save_steps=0))
    grpo.train(config, str(root / "base"), str(root), out)
    torch.distributed.destroy_process_group()


def test_two_processes_update_like_one(setup, tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_worker, args=(2, port, setup, str(tmp_path / "two")), nprocs=2, join=True)
    run(setup, tmp_path / "one", monkeypatch, steps=2, save_steps=0)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a[k], load_pretrained(str(setup[0] / "base")).state_dict()[k]) for k in a)


def test_several_iterations_per_batch(setup, tmp_path, monkeypatch):
    """num_iterations = 2: the second pass sees ratios != 1 (the policy moved), all finite."""
    out = run(setup, tmp_path / "iters", monkeypatch, steps=2, save_steps=0, num_iterations=2)
    with open(out / "audit.jsonl") as f:
        ratios = [json.loads(line)["ratio"] for line in f]
    moved = [r for r in ratios if r is not None and abs(r["mean"] - 1) > 1e-6]
    assert moved and all(all(map(lambda v: v == v and abs(v) < 1e6, r.values())) for r in moved)
    assert all(r["loss"] == r["loss"] for r in metrics(out))
