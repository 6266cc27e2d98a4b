"""The GRPO loop end to end: an update lowers the loss, resume is exact, two processes equal one.

These tests use a tiny random model, so its completions are gibberish; the composite reward would give
them all the same floor value (zero advantage, nothing to learn). To exercise the loop itself they swap
in a simple deterministic reward of the text (its share of the letter 'e'): resume and multi-process
equality do not depend on which reward is used, and reward.py has its own tests.
"""
import contextlib
import dataclasses
import json
import math
import os
import pickle
import shutil
import socket
import subprocess
import sys
from html import escape

import pytest
import torch
import torch.multiprocessing as mp

import calls_page
import grpo
from bounds import dot_bound
from config import Config, GRPOConfig
from corpus import load_corpus, render_call_text, write_corpus
from doga import ScriptLibrary
from files import fingerprint
from full_sequence import full_sequence_step
from model import Qwen2, Qwen2Config, load_pretrained, save_pretrained, sequence_logprobs
from reward import BEHAVIOUR_KEYS, REWARD_KEYS, TERMS
from runs import RunLock, RunLocked, recorded_config
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


def run(setup_, out, monkeypatch, resume=False, base=None, data=None, library=None, **overrides):
    root, config = setup_
    config = dataclasses.replace(config, grpo=dataclasses.replace(config.grpo, **overrides))
    monkeypatch.setattr(grpo, "CompositeReward", LetterReward)
    grpo.train(config, str(base or root / "base"), str(data or root), str(out), resume=resume, audit=True,
               library_dir=library and str(library))
    return out


def metrics(path):
    with open(os.path.join(path, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in f]


def weights(path):
    return load_pretrained(os.path.join(path, "final")).state_dict()


def largest_move(trained, base):
    """The largest change of any weight between two state dicts."""
    return max((trained[k] - base[k]).abs().max().item() for k in trained)


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
    assert [("prompt" in a, "target_reply" in a) for a in audit] == [(i % 4 == 0,) * 2 for i in range(len(audit))]
    page = open(calls_page.write_audit_page(str(out)), encoding="utf-8").read()   # every completion on the page
    assert all(escape(a["prompt"]) in page for a in audit[::4]) and all(escape(a["completion"]) in page for a in audit)
    assert sorted(os.listdir(out / "checkpoints")) == ["step-000002", "step-000004"]
    assert sorted(os.listdir(out / "checkpoints" / "step-000002")) == [
        "config.json", "model.safetensors", "optimizer.safetensors", "run.json", "slots.json", "tokenizer.json",
        "trainer_state.json"]                                       # no pickle anywhere
    assert (out / "final" / "model.safetensors").exists()
    record = json.loads((out / "checkpoints" / "step-000004" / "run.json").read_text())
    root, config = setup
    assert record["config"]["grpo"] == dataclasses.asdict(config.grpo)
    assert record["base_model"] == {"path": str(root / "base"),
                                    "fingerprint": fingerprint(root / "base" / "model.safetensors")}
    assert record["data"] == {"path": str(root / "train.jsonl"), "fingerprint": fingerprint(root / "train.jsonl")}
    assert record["library"] is None                                # no outlines in the prompts
    assert json.loads((out / "run.json").read_text()) == record
    assert json.loads((out / "final" / "run.json").read_text()) == record   # the final model names its run
    assert recorded_config(out / "final").grpo == config.grpo        # what doga.py chat reads back


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
    # The equality means something: the steps after the checkpoint learnt (non-zero gradients), so a
    # resume that lost the optimizer state or the data position would have ended elsewhere.
    assert all(r["grad_norm"] > 0 for r in metrics(straight)[2:])
    assert largest_move(a, load_pretrained(str(straight / "checkpoints" / "step-000002")).state_dict()) > 0


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
    generated alone and every pass over whole sequences: tests/full_sequence.py), from the same weights and
    seeds. In float64 the sampling probabilities agree to ~1e-16, so the completions are the same
    (tests/test_shared_prefix.py); log-probs leave the kernel in float32 either way (compared at float32's
    tolerance), while the gradient and the updated weights are float64 and agree to 1e-10 (the kernel's
    float32 steps see inputs equal to ~1e-16 and round them alike)."""
    root, config = setup
    settings = config.grpo
    tokenizer = ChatTokenizer.load(str(root / "base"))
    samples, prompt_ids = grpo.load_prompt_pool(str(root / "train.jsonl"), tokenizer, settings)
    reference = load_pretrained(str(root / "base"), dtype=torch.float64).requires_grad_(False)
    steps = []
    for path in (contextlib.nullcontext, full_sequence_step):
        policy = load_pretrained(str(root / "base"), dtype=torch.float64)
        optimizer = make_optimizer(policy, settings.learning_rate, settings.weight_decay)
        with path():
            batch, _, loss, grad_norm = grpo.grpo_step(policy, reference, AsciiReward(), optimizer, tokenizer,
                                                       samples[:2], prompt_ids[:2], [11, 12], settings, lr=1e-3)
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
    # One process and two differ only in the order the gradient's terms are added. Adam's step does not
    # depend on the scale of the gradient, so a relative error e in it moves a weight by about e x lr per
    # step; a float32 sum of n terms errs by at most gamma_n (tests/bounds.py), and each weight's gradient
    # sums at most one term per token position of the step's batch.
    settings = setup[1].grpo
    positions = settings.prompts_per_step * settings.num_generations * (settings.max_prompt_length
                                                                        + settings.max_completion_length)
    limit = 2 * settings.learning_rate * dot_bound(positions)
    assert largest_move(a, b) <= limit
    assert largest_move(a, load_pretrained(str(setup[0] / "base")).state_dict()) > 100 * limit   # they moved


def test_several_iterations_per_batch(setup, tmp_path, monkeypatch):
    """num_iterations = 2: the second pass sees ratios != 1 (the policy moved), all finite."""
    out = run(setup, tmp_path / "iters", monkeypatch, steps=2, save_steps=0, num_iterations=2)
    with open(out / "audit.jsonl") as f:
        ratios = [json.loads(line)["ratio"] for line in f]
    moved = [r for r in ratios if r is not None and abs(r["mean"] - 1) > 1e-6]
    assert moved and all(all(map(lambda v: v == v and abs(v) < 1e6, r.values())) for r in moved)
    assert all(r["loss"] == r["loss"] for r in metrics(out))


# ----------------------------------------------------------------------------------------------
# Checkpoints hold no code, belong to one run, and one run at a time uses a folder.

class Payload:
    """Unpickling this runs `code`: what a tampered pickle file could do to whoever loads it."""

    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


@pytest.fixture(scope="module")
def finished(setup, tmp_path_factory):
    """A finished two-step run with a checkpoint at step 2; each test works on its own copy (`copy_of`)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return run(setup, tmp_path_factory.mktemp("finished") / "run", monkeypatch, steps=2, save_steps=2)


def copy_of(run_folder, tmp_path):
    return shutil.copytree(run_folder, tmp_path / "run")


def test_resume_never_runs_code_from_a_checkpoint(setup, finished, tmp_path, monkeypatch):
    out = copy_of(finished, tmp_path)
    checkpoint = out / "checkpoints" / "step-000002"
    marker = tmp_path / "payload-ran"
    (checkpoint / "trainer_state.pt").write_bytes(pickle.dumps(Payload(f"open({str(marker)!r}, 'w')")))
    run(setup, out, monkeypatch, resume=True, steps=4)               # a longer run, continued
    assert not marker.exists()
    assert [r["step"] for r in metrics(out)] == [0, 1, 2, 3]

    for name in ("optimizer.safetensors", "trainer_state.json"):    # the files resume does read
        shutil.copytree(checkpoint, tmp_path / "tampered" / "checkpoints" / "step-000002")
        shutil.copy(out / "run.json", tmp_path / "tampered")
        (tmp_path / "tampered" / "checkpoints" / "step-000002" / name).write_bytes(
            pickle.dumps(Payload(f"open({str(marker)!r}, 'w')")))
        with pytest.raises(grpo.CheckpointError, match=f"step-000002/{name}: unreadable"):
            run(setup, tmp_path / "tampered", monkeypatch, resume=True)
        assert not marker.exists()
        shutil.rmtree(tmp_path / "tampered")


def test_a_fresh_run_refuses_a_used_folder_and_resume_refuses_other_inputs(setup, finished, tmp_path, monkeypatch):
    root, _ = setup
    out = copy_of(finished, tmp_path)
    with pytest.raises(grpo.CheckpointError, match=r"already holds a run \(run.json, metrics.jsonl, checkpoints, "
                                                   r"final\): continue it with --resume, or choose another --out"):
        run(setup, out, monkeypatch)
    # A kill during the save of step 4 left a staging folder: the next start removes it.
    leftover = out / "checkpoints" / f".step-000004.saving-{socket.gethostname()}-{dead_pid()}-x"
    leftover.mkdir()

    with pytest.raises(grpo.CheckpointError, match=r"grpo.learning_rate: 0.001 when recorded, 0.002 now"):
        run(setup, out, monkeypatch, resume=True, learning_rate=2e-3)
    assert not leftover.exists()

    data = tmp_path / "data"                                        # the same corpus less one call
    data.mkdir()
    lines = (root / "train.jsonl").read_text().splitlines(keepends=True)
    (data / "train.jsonl").write_text("".join(lines[:-1]))
    shutil.copy(root / "test.jsonl", data)
    with pytest.raises(grpo.CheckpointError, match=rf"training data: {root}/train.jsonl \(sha256:.*\) when "
                                                   rf"recorded, {data}/train.jsonl \(sha256:.*\) now"):
        run(setup, out, monkeypatch, resume=True, data=data)

    base = tmp_path / "base"                                        # the base model, one weight changed
    model = load_pretrained(str(root / "base"))
    with torch.no_grad():
        model.model.norm.weight[0] += 1
    save_pretrained(model, str(base))
    shutil.copy(root / "base" / "tokenizer.json", base)
    with pytest.raises(grpo.CheckpointError, match=r"base model weights: .*/base \(sha256:.*\) when recorded, "
                                                   r".*/base \(sha256:.*\) now"):
        run(setup, out, monkeypatch, resume=True, base=base)

    moved = tmp_path / "moved-base"                                 # the same weights elsewhere: accepted
    shutil.copytree(root / "base", moved)
    run(setup, out, monkeypatch, resume=True, base=moved, steps=3)
    assert [r["step"] for r in metrics(out)] == [0, 1, 2]


def test_the_script_library_is_part_of_what_a_run_is(setup, finished, tmp_path, monkeypatch):
    """With outline_share > 0 the prompts carry DOGA's outlines: the library is an input like the corpus."""
    root, _ = setup
    calls = load_corpus(str(root / "train.jsonl"))
    ScriptLibrary.build(calls, progress=False).save(str(tmp_path / "scripts"))
    with pytest.raises(grpo.CheckpointError, match=r"DOGA script library: none when recorded, .*scripts "
                                                   r"\(sha256:.*\) now"):
        run(setup, copy_of(finished, tmp_path), monkeypatch, resume=True, library=tmp_path / "scripts")

    out = run(setup, tmp_path / "outlined", monkeypatch, library=tmp_path / "scripts", steps=2, save_steps=2)
    ScriptLibrary.build(calls, progress=False).save(str(tmp_path / "scripts"))    # as every `make train` does
    run(setup, out, monkeypatch, resume=True, library=tmp_path / "scripts", steps=3)   # the same bytes: accepted
    assert [r["step"] for r in metrics(out)] == [0, 1, 2]
    ScriptLibrary.build(calls[:-2], progress=False).save(str(tmp_path / "scripts"))   # from other calls
    with pytest.raises(grpo.CheckpointError, match=r"DOGA script library: .*scripts \(sha256:.*\) when recorded"):
        run(setup, out, monkeypatch, resume=True, library=tmp_path / "scripts", steps=4)


def test_resume_refuses_a_run_that_recorded_nothing(setup, finished, tmp_path, monkeypatch):
    out = copy_of(finished, tmp_path)
    for record in (out / "run.json", out / "checkpoints" / "step-000002" / "run.json"):
        record.unlink()
    with pytest.raises(grpo.CheckpointError, match=r"step-000002/run.json: missing, so nothing says which config"):
        run(setup, out, monkeypatch, resume=True)


def test_a_second_run_into_a_locked_folder_is_refused(setup, tmp_path, monkeypatch):
    with RunLock(str(tmp_path / "run")):
        with pytest.raises(RunLocked, match=rf"another run is using this folder \(pid {os.getpid()} on "):
            run(setup, tmp_path / "run", monkeypatch)
        root, _ = setup
        monkeypatch.setattr(sys, "argv", ["grpo.py", "--model", str(root / "base"), "--data", str(root),
                                          "--out", str(tmp_path / "run")])
        with pytest.raises(SystemExit, match=r"^error: .*another run is using this folder"):
            grpo.main()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_ctrl_c_ends_with_one_line_naming_the_step_and_resume(setup, tmp_path, monkeypatch, capsys):
    root, _ = setup
    real_audit = grpo.write_audit

    def interrupted_in_step_3(audit_file, step, *args):
        real_audit(audit_file, step, *args)
        if step == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(grpo, "write_audit", interrupted_in_step_3)
    monkeypatch.setattr(grpo, "CompositeReward", LetterReward)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"grpo": {"steps": 4, "prompts_per_step": 2, "num_generations": 4,
                                           "max_completion_length": 10, "mask_truncated_completions": False,
                                           "max_prompt_length": 2048, "save_steps": 2, "log_completion_steps": 0}}))
    monkeypatch.setattr(sys, "argv", ["grpo.py", "--config", str(config), "--model", str(root / "base"), "--data",
                                      str(root), "--out", str(tmp_path / "run"), "--audit", "--no-summary"])
    with pytest.raises(SystemExit) as exit_:
        grpo.main()
    assert exit_.value.code == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"interrupted after 3 of 4 steps: run the same command with --resume to continue from its latest "
        f"checkpoint, {tmp_path / 'run'}/checkpoints/step-000002")
    RunLock(str(tmp_path / "run")).acquire().release()             # the lock went with the run


def test_an_empty_corpus_says_so(setup, tmp_path):
    root, config = setup
    (tmp_path / "train.jsonl").write_text("")
    tokenizer = ChatTokenizer.load(str(root / "base"))
    with pytest.raises(ValueError, match=r"train.jsonl: the corpus is empty \(no calls\)"):
        grpo.load_prompt_pool(str(tmp_path / "train.jsonl"), tokenizer, config.grpo)


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_move_balance_weighs_each_move_by_its_count_to_the_balance():
    """Hand-computed: three prompts of move a, one of b. balance 0 gives each move half the draws; 0.5 gives
    moves shares in proportion to sqrt(count); 1 draws prompts as they come (no weights)."""
    samples = [dataclasses.make_dataclass("S", ["intent"])(i) for i in "aaab"]
    assert grpo.move_weights(samples, 1.0) is None
    assert grpo.move_weights(samples, 0.0).tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 2], abs=1e-15)
    share_a = math.sqrt(3) / (math.sqrt(3) + 1)
    assert grpo.move_weights(samples, 0.5).tolist() == pytest.approx([share_a / 3] * 3 + [1 - share_a], abs=1e-15)


def test_weighted_prompts_follow_their_weights_and_are_a_function_of_the_step():
    """900 prompts of a common move, 100 of a rare one, balance 0: half the draws are of the rare move (within
    six binomial standard deviations of 8,000 draws), no prompt twice in a step, and a step's prompts are the
    same however often it is asked for (what exact resume needs)."""
    samples = [dataclasses.make_dataclass("S", ["intent"])(i) for i in ["common"] * 900 + ["rare"] * 100]
    weights = grpo.move_weights(samples, 0.0)
    draws = [grpo.prompts_for_step(step, len(samples), 4, 7, weights) for step in range(2000)]
    assert all(len(set(step)) == 4 for step in draws)
    rare = sum(samples[i].intent == "rare" for step in draws for i in step) / 8000
    assert abs(rare - 0.5) <= 6 * math.sqrt(0.25 / 8000)
    assert draws[123] == grpo.prompts_for_step(123, len(samples), 4, 7, weights)
    assert draws[123] != grpo.prompts_for_step(123, len(samples), 4, 8, weights)
