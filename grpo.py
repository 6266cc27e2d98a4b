"""GRPO applied directly to a base model: AI-Salesman's training engine (docs/design.md, "GRPO").

One step, for each of `prompts_per_step` training prompts (a salesperson turn of a simulated call, drawn so
that every move is trained on equally often: `move_balance`, `move_weights`):

  1. sample a *group* of `num_generations` completions `<think>Th</think> reply` with the policy
     (model.generate_groups: KV-cached, temperature/top-p, every group of the step in one batch);
  2. score each with the composite reward of reward.py (format, similarity, faithfulness, bayes);
  3. advantage A_i = (r_i - mean(group)) / std, the std taken per group, over the batch, or not at all
     (`scale_rewards`);
  4. minimise, per completion token t,
         -min(rho_t A, clip(rho_t, 1 - epsilon, 1 + epsilon_high) A) + beta * k3_t,
         rho_t = pi(o_t) / pi_old(o_t),   k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1
     averaged as `loss_type` says: grpo (per sequence, then over sequences), dapo (over all tokens),
     dr_grpo (sum over tokens / (sequences x max_completion_length)).

Knob names follow TRL's GRPOConfig (config.GRPOConfig) so that results can be compared. Log-probs of
completions come from the fused kernel on the final hidden states (model.continuation_logprobs): the
[tokens x vocabulary] logits are never materialised for the training pass. Every pass over a group (the
policy's forward and backward, the ref_model's log-probs for the KL, the Bayesian reward's prior and
likelihood) runs its prompt once and lets the G completions attend to the prompt's keys and values:
the prompt is most of each sequence, so this cuts the work of a pass several times over, with the same
numbers and gradients up to float32 rounding (tests/test_shared_prefix.py; bench/grpo_step.py times it).

Several processes: `torchrun --nproc_per_node=K grpo.py ...` gives each rank its own prompts (a group
never spans ranks). Each rank's loss is its share of the *global* loss (global sequence and token counts
in the denominators), so gradients are summed across ranks and the update equals the single-process one.

Simplified, and why:
* pi_old: with num_iterations = 1 the old policy *is* the current one, so its log-probs are the detached
  log-probs of the training pass (ratio exactly 1, as in TRL). With num_iterations > 1 they are computed
  once right after generation.
* Each group draws from its own seeded generator over its own rows, exactly as it would sampled alone,
  so its samples do not depend on which rank or batch it lands in (up to float32 rounding of the
  probabilities, which padding can change; see model.generate_groups). This is what makes runs
  reproducible, resumable and identical across process counts.
* No vLLM-style serving, no gradient accumulation, no reward models: the lean loop of the method.

The run folder is runs.py's business: rank 0 locks it for the whole run and records what the run is made
of (`run.json`), also in every checkpoint and in the final model; a fresh run refuses a folder that already
holds a run, and `--resume` refuses a checkpoint recorded with other inputs. A checkpoint holds
safetensors and JSON only, never a pickle.
"""

import argparse
import json
import os
import random
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from config import ConfigError, load_config
from corpus import CorpusError, load_corpus, training_samples
from doga import DogaPlanner, ScriptLibrary
from files import MetricsLog, truncate_jsonl, write_json
from model import (
    CheckpointError,
    Continuations,
    continuation_logprobs,
    cut_at_eos,
    generate_groups,
    load_pretrained,
    load_with_tokenizer,
)
from reward import BEHAVIOUR_KEYS, REWARD_KEYS, CompositeReward, fit_similarity_embedder
from runs import (
    RunLock,
    RunLocked,
    claim_run_folder,
    interruption_note,
    on_main_process,
    run_identity,
    save_checkpoint,
)
from sales import is_good_turn
from training import learning_rate_at, load_trainer_state, make_optimizer, resolve_device


# ----------------------------------------------------------------------------------------------
# Prompts.

def load_prompt_pool(path, tokenizer, settings, library_dir=None):
    """Training samples from a corpus file, with their prompt token ids.

    `turn_filter = "good"` keeps turns the Manager labelled on-stage and faithful: the Bayesian
    likelihood should reward thoughts that explain *good* replies, not the corpus's deliberate mistakes.
    With a DOGA script library, `outline_share` of the calls (each chosen by a hash of its id) are prompted as
    the DOGA agent prompts at inference, its outline before every salesperson turn: train as it infers.
    Prompts longer than max_prompt_length are left out (cutting one would cut its system prompt). Prompts and
    target replies write values as the model does (`tokenizer.slots`, see tokenizer.py).
    """
    calls = load_corpus(path)
    outlines = [None] * len(calls)
    if library_dir and settings.outline_share > 0:
        chosen = [n for n, call in enumerate(calls)
                  if random.Random(f"{settings.seed}:{call['id']}").random() < settings.outline_share]
        planned = DogaPlanner(ScriptLibrary.load(library_dir), slots=tokenizer.slots).outline_messages(
            [(calls[n]["product"], calls[n]["customer"]["visible"], calls[n]["turns"]) for n in chosen],
            next_turn=False)
        for n, call_outlines in zip(chosen, planned):
            outlines[n] = call_outlines
    samples = [s for call, call_outlines in zip(calls, outlines)
               for s in training_samples(call, call_outlines, tokenizer.slots)]
    if settings.turn_filter == "good":
        samples = [s for s in samples if is_good_turn(s.labels)]
    if not calls:
        raise ValueError(f"{path}: the corpus is empty (no calls)")
    if not samples:
        raise ValueError(f"{path}: none of its {len(calls)} calls has a salesperson turn to train on"
                         + (" (grpo.turn_filter = 'good' keeps only turns labelled on-stage and faithful)"
                            if settings.turn_filter == "good" else ""))
    ids = tokenizer.encode_batch(s.prompt for s in samples)
    kept = [(s, p) for s, p in zip(samples, ids) if len(p) <= settings.max_prompt_length]
    if not kept:
        raise ValueError(f"{path}: no prompt fits max_prompt_length={settings.max_prompt_length}")
    print(f"{path}: {len(kept)} prompts ({len(samples) - len(kept)} longer than "
          f"max_prompt_length={settings.max_prompt_length} left out)")
    return [s for s, _ in kept], [p for _, p in kept]


def prompts_for_step(step, pool_size, per_step, seed, weights=None):
    """Global prompt indices of a step: consecutive slices of a per-epoch shuffled order, or with `weights`
    (a probability per prompt, `move_weights`) a draw without replacement from its own generator.

    A pure function of the step, so the data position needs no saving: resuming at step s picks up
    exactly the prompts an uninterrupted run would have used.
    """
    if weights is not None:
        return np.random.default_rng([seed, step]).choice(pool_size, size=per_step, replace=False,
                                                           p=weights).tolist()
    indices = []
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(position, pool_size)
        indices.append(int(np.random.default_rng([seed, epoch]).permutation(pool_size)[offset]))
    return indices


def move_weights(samples, balance):
    """Probability of drawing each prompt so that a move with n prompts is drawn in proportion to n^balance:
    each prompt weighs n^(balance - 1). None for balance 1 (every prompt alike: the corpus's own mix)."""
    if balance == 1.0:
        return None
    counts = Counter(s.intent for s in samples)
    weights = np.array([counts[s.intent] ** (balance - 1.0) for s in samples], dtype=np.float64)
    return weights / weights.sum()


# ----------------------------------------------------------------------------------------------
# Rollouts: generate, score, compute advantages.

@dataclass
class Rollout:
    sequences: Continuations       # each prompt once [P, Lp], its G completions [B = P x G, Lc] right-padded
    loss_mask: torch.Tensor        # [B, Lc] 1 on completion tokens that get a gradient
    old_logprobs: torch.Tensor     # [B, Lc] (only when num_iterations > 1)
    ref_logprobs: torch.Tensor     # [B, Lc] (only when beta > 0)
    rewards: dict                  # term -> float32 [B], plus "total"
    advantages: torch.Tensor       # [B]
    completions: list              # decoded text, [B]
    truncated: torch.Tensor        # [B] bool
    completion_lengths: torch.Tensor  # [B]


def sample_groups(policy, prompt_ids, seeds, settings, eos_id, pad_id):
    """`num_generations` completions of each prompt, group g sampled with its own generator seeded by
    seeds[g], all groups in one model.generate_groups call (each prompt prefilled once). Returns token
    lists (EOS kept) and truncation flags, group after group. A group's samples depend on its seed alone,
    up to float32 rounding (see generate_groups), not on the rank or batch it lands in.
    """
    device = policy.lm_head_weight.device
    generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
    ids = generate_groups(policy, prompt_ids, settings.num_generations, generators, settings.max_completion_length,
                          settings.temperature, settings.top_p, eos_id, pad_id)           # [groups x G, n]
    completions = cut_at_eos(ids, eos_id)
    return [ids for ids, _ in completions], [truncated for _, truncated in completions]


def compute_advantages(rewards, scale_rewards, batch_std=None):
    """rewards [groups, G] -> advantages [groups, G] (TRL's definition; unbiased std, +1e-4)."""
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if scale_rewards == "group":
        return centered / (rewards.std(dim=1, keepdim=True) + 1e-4)
    if scale_rewards == "batch":
        return centered / ((rewards.std() if batch_std is None else batch_std) + 1e-4)
    return centered


@contextmanager
def timed(timings, phase):
    """Add the seconds the block takes to timings[phase]; nothing when timings is None. On a GPU it first
    waits for queued work, so that each phase is charged its own."""
    if timings is None:
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    yield
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - started


@torch.no_grad()
def rollout(policy, ref_model, reward_fn, tokenizer, samples, prompt_ids, group_seeds, settings, timings=None):
    """Generate and score one group per prompt; everything the loss needs, batched [B = groups x G].
    timings: phase -> seconds, added to (bench/grpo_step.py reads them)."""
    G = settings.num_generations
    with timed(timings, "generate"):
        completion_tokens, truncated = sample_groups(policy, prompt_ids, group_seeds, settings, tokenizer.eos_id,
                                                     tokenizer.pad_id)
    device = policy.lm_head_weight.device
    expanded_prompts = [p for p in prompt_ids for _ in range(G)]
    sequences = Continuations.from_lists(expanded_prompts, completion_tokens, tokenizer.pad_id, device)
    truncated = torch.tensor(truncated)
    loss_mask = sequences.mask.clone()                                      # [B, Lc]
    if settings.mask_truncated_completions:
        loss_mask[truncated.to(device)] = 0

    with timed(timings, "reward"):
        texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completion_tokens]
        expanded = [s for s in samples for _ in range(G)]
        rewards = reward_fn(expanded, expanded_prompts, texts, truncated.tolist())

    total = rewards["total"].view(-1, G)                                    # [groups, G]
    batch_std = None
    if settings.scale_rewards == "batch" and dist.is_initialized():
        everything = [None] * dist.get_world_size()
        dist.all_gather_object(everything, rewards["total"].tolist())
        batch_std = torch.tensor(sum(everything, [])).std()
    advantages = compute_advantages(total, settings.scale_rewards, batch_std).flatten()

    with timed(timings, "policy forward + backward"):
        old = (continuation_logprobs(policy, sequences, loss_mask, settings.temperature)
               if settings.num_iterations > 1 else None)
    with timed(timings, "ref_model"):
        ref = (continuation_logprobs(ref_model, sequences, loss_mask, settings.temperature)
               if settings.beta > 0 else None)
    return Rollout(sequences, loss_mask, old, ref, rewards, advantages, texts, truncated,
                   sequences.mask.sum(1).cpu())


# ----------------------------------------------------------------------------------------------
# The objective.

def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, settings, num_sequences, num_tokens):
    """The clipped GRPO objective with k3 KL, aggregated by `loss_type`.

    logprobs, old_logprobs, ref_logprobs, mask: [B, T]; advantages: [B]. `num_sequences` and
    `num_tokens` are the *global* counts (all ranks), so that per-rank losses add up to the global loss.
    Returns (loss, stats) where stats hold the per-token kl, ratio and clipped indicator [B, T].
    """
    mask = mask.float()
    ratio = torch.exp(logprobs - old_logprobs)
    clipped_ratio = torch.clamp(ratio, 1 - settings.epsilon, 1 + settings.epsilon_high)
    advantages = advantages[:, None]
    per_token = -torch.min(ratio * advantages, clipped_ratio * advantages)
    kl = torch.zeros_like(logprobs)
    if settings.beta > 0:
        delta = ref_logprobs - logprobs
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + settings.beta * kl
    if settings.loss_type == "grpo":
        per_sequence = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
        loss = per_sequence.sum() / num_sequences
    elif settings.loss_type == "dapo":
        loss = (per_token * mask).sum() / max(num_tokens, 1)
    else:  # dr_grpo: a constant denominator, free of length bias
        loss = (per_token * mask).sum() / (num_sequences * settings.max_completion_length)
    is_clipped = ((ratio < 1 - settings.epsilon) & (advantages < 0)) | \
                 ((ratio > 1 + settings.epsilon_high) & (advantages > 0))
    return loss, {"kl": kl.detach(), "ratio": ratio.detach(), "clipped": is_clipped.float()}


# ----------------------------------------------------------------------------------------------
# Several processes: each rank takes its share of a step's groups.

def init_processes():
    """(rank, world_size), starting torch.distributed when torchrun launched us.

    On GPUs each process first binds to its own card (LOCAL_RANK), so that NCCL's collectives and
    everything allocated on "cuda" land on it.
    """
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return 0, 1
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def global_sum(value):
    """Sum a number over all processes (NCCL reduces GPU tensors only, gloo CPU ones)."""
    if not dist.is_initialized():
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item()


# ----------------------------------------------------------------------------------------------
# Training.

def grpo_step(policy, ref_model, reward_fn, optimizer, tokenizer, samples, prompt_ids, group_seeds, settings, lr,
              timings=None):
    """One GRPO step on this process's groups: a rollout, then num_iterations updates at learning rate lr.

    Returns (rollout, stats, loss, grad_norm) of the last update. With several processes each rank's loss
    is its share of the global loss, and gradients are summed over ranks before clipping. timings as in
    `rollout` (the update's phases are "policy forward + backward" and "optimizer").
    """
    policy.eval()
    batch = rollout(policy, ref_model, reward_fn, tokenizer, samples, prompt_ids, group_seeds, settings, timings)
    num_sequences = global_sum(len(batch.advantages))
    num_tokens = global_sum(batch.loss_mask.sum().item())
    for group in optimizer.param_groups:
        group["lr"] = lr

    policy.train()
    for _ in range(settings.num_iterations):
        with timed(timings, "policy forward + backward"):
            logprobs, entropy = continuation_logprobs(policy, batch.sequences, batch.loss_mask, settings.temperature,
                                                      return_entropy=True)
            old = batch.old_logprobs if batch.old_logprobs is not None else logprobs.detach()
            loss, stats = grpo_loss(logprobs, old, batch.ref_logprobs, batch.advantages.to(logprobs.device),
                                    batch.loss_mask, settings, num_sequences, num_tokens)
            stats["entropy"] = entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with timed(timings, "optimizer"):
            if dist.is_initialized():  # each rank holds its share of the global loss: gradients add up
                for p in policy.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), settings.max_grad_norm)
            optimizer.step()
    return batch, stats, loss, grad_norm


def train(config, model_dir, data_dir, out_dir, resume=False, audit=False, library_dir=None):
    """GRPO from the model in `model_dir` on `data_dir`/train.jsonl into `out_dir` (with `library_dir`, a DOGA
    script library whose outlines some prompts carry). Rank 0 holds the lock on `out_dir` (runs.RunLock) for
    the whole run; a second run into the same folder is refused."""
    rank, world_size = init_processes()
    if config.grpo.prompts_per_step % world_size:
        raise ConfigError(f"{config.source}: grpo.prompts_per_step ({config.grpo.prompts_per_step}) must be "
                          f"divisible by the number of processes ({world_size})")
    lock = RunLock(out_dir)
    on_main_process(lambda: lock.acquire() and None, rank == 0)   # nothing to hand to the other ranks
    try:
        return _train(config, model_dir, data_dir, out_dir, resume, audit, library_dir, rank, world_size)
    finally:
        lock.release()


def _train(config, model_dir, data_dir, out_dir, resume, audit, library_dir, rank, world_size):
    settings = config.grpo
    device = resolve_device(settings.device)
    if device == "cuda" and world_size > 1:
        device = f"cuda:{torch.cuda.current_device()}"   # bound to LOCAL_RANK by init_processes()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[settings.dtype]
    torch.manual_seed(settings.seed)
    main_process = rank == 0

    def claim():          # what the run is made of, and the checkpoint it resumes from (runs.py)
        identity = run_identity(config, model_dir, data_dir, library_dir)
        return identity, claim_run_folder(out_dir, identity, resume)

    identity, checkpoint = on_main_process(claim, main_process)
    ref_model, tokenizer = load_with_tokenizer(model_dir, dtype=dtype, device=device)
    ref_model.eval().requires_grad_(False)
    policy = load_pretrained(checkpoint or model_dir, dtype=dtype, device=device)
    optimizer = make_optimizer(policy, settings.learning_rate, settings.weight_decay)
    start_step = 0
    if checkpoint:
        start_step = load_trainer_state(checkpoint, optimizer)
        if main_process:
            print(f"resuming from {checkpoint} at step {start_step}")
    if resume and not checkpoint and main_process:
        print(f"--resume: no checkpoint under {out_dir}/checkpoints, starting from {model_dir}")

    samples, prompt_ids = load_prompt_pool(os.path.join(data_dir, "train.jsonl"), tokenizer, settings, library_dir)
    reward_fn = CompositeReward(config.reward, ref_model, tokenizer, fit_similarity_embedder(samples))
    weights = move_weights(samples, settings.move_balance)

    log = MetricsLog(os.path.join(out_dir, "metrics.jsonl"), resume_step=start_step - 1 if checkpoint else None) \
        if main_process else None
    audit_path = os.path.join(out_dir, "audit.jsonl")
    if audit and main_process and checkpoint:
        truncate_jsonl(audit_path, start_step - 1)
    audit_file = open(audit_path, "a" if checkpoint else "w") if audit and main_process else None
    per_rank = settings.prompts_per_step // world_size
    progress = tqdm(range(start_step, settings.steps), desc="grpo", disable=not main_process,
                    initial=start_step, total=settings.steps)
    for step in progress:
        started = time.time()
        global_indices = prompts_for_step(step, len(samples), settings.prompts_per_step, settings.seed, weights)
        mine = range(rank * per_rank, (rank + 1) * per_rank)   # positions in the step's global batch
        lr = learning_rate_at(step, settings.steps, settings.learning_rate, settings.warmup_steps, 1.0)
        batch, stats, loss, grad_norm = grpo_step(
            policy, ref_model, reward_fn, optimizer, tokenizer, [samples[global_indices[g]] for g in mine],
            [prompt_ids[global_indices[g]] for g in mine],
            [settings.seed * 1_000_003 + step * 1000 + g for g in mine], settings, lr)
        record = step_metrics(step, batch, stats, loss, grad_norm, lr, settings, started)
        if main_process:
            log.write(record)
            progress.set_postfix(reward=f"{record['reward_mean']:.3f}", kl=f"{record['kl']:.4f}")
            warn_if_degenerate(record, settings, progress, per_rank)
            if settings.log_completion_steps and step % settings.log_completion_steps == 0:
                progress.write(f"[step {step}] reward {batch.rewards['total'][0]:.3f}: {batch.completions[0]!r}")
            if audit_file:
                write_audit(audit_file, step, batch, stats, [samples[global_indices[g]] for g in mine],
                            settings.num_generations)
            if settings.save_steps and (step + 1) % settings.save_steps == 0:
                save_checkpoint(os.path.join(out_dir, "checkpoints", f"step-{step + 1:06d}"),
                                policy, tokenizer, identity, optimizer, step + 1)
        if world_size > 1:
            dist.barrier()
    if audit_file:
        audit_file.close()
    if main_process:
        save_checkpoint(os.path.join(out_dir, "final"), policy, tokenizer, identity)
    return policy, ref_model, reward_fn, tokenizer


def step_metrics(step, batch, stats, loss, grad_norm, lr, settings, started):
    """The per-step record of metrics.jsonl. With several processes it describes rank 0's rollouts
    (its share of the groups, and its share of the global loss); grad_norm is the global one. `entropy` is
    the policy's mean per-token entropy over the completion tokens of the training pass, as TRL logs it:
    a fall towards 0 shows the policy collapsing onto a few answers."""
    G = settings.num_generations
    total = batch.rewards["total"]
    mask = batch.loss_mask.bool()
    record = {"step": step, "reward_mean": total.mean().item(), "reward_std": total.std().item()}
    for term in REWARD_KEYS[1:]:
        record[f"reward_{term}"] = batch.rewards[term].mean().item()
    for key in BEHAVIOUR_KEYS:                  # what the sampled replies do (reward.BEHAVIOUR_KEYS)
        record[f"reply_{key}"] = batch.rewards[key].mean().item()
    record.update({
        "zero_std_groups": int((total.view(-1, G).std(dim=1) < 1e-6).sum()),
        "completion_len_mean": batch.completion_lengths.float().mean().item(),
        "truncated_fraction": batch.truncated.float().mean().item(),
        "kl": (stats["kl"][mask].mean().item() if mask.any() else 0.0),
        "clip_fraction": (stats["clipped"][mask].mean().item() if mask.any() else 0.0),
        "entropy": (stats["entropy"][mask].mean().item() if mask.any() else 0.0),
        "loss": loss.item(),
        "grad_norm": grad_norm.item(),
        "lr": lr,
        "tokens_per_s": batch.sequences.token_count() / (time.time() - started),
    })
    return record


def warn_if_degenerate(record, settings, progress, groups):
    if record["truncated_fraction"] > 0.5:
        progress.write(f"warning: step {record['step']}: {record['truncated_fraction']:.0%} of completions hit "
                       f"max_completion_length={settings.max_completion_length} (no gradient when masked)")
    if record["zero_std_groups"] > groups / 2:
        progress.write(f"warning: step {record['step']}: {record['zero_std_groups']} groups have zero reward "
                       "spread, so zero advantage: they teach nothing")


def write_audit(audit_file, step, batch, stats, samples, G):
    """One line per completion: what it said, every reward term, its advantage and its ratios. The first line of
    each group also holds the group's prompt (as the policy saw it) and target reply A*: once per group, as
    the prompt is most of a line's size (`calls_page.py audit` shows each with its group)."""
    for row, text in enumerate(batch.completions):
        sample = samples[row // G]
        tokens = batch.loss_mask[row].bool()
        ratios = stats["ratio"][row][tokens]
        record = {
            "step": step, "prompt_id": f"{sample.call_id}:{sample.turn_index}", "group": row // G,
            "completion": text, "truncated": bool(batch.truncated[row]),
            "rewards": {k: round(v[row].item(), 6) for k, v in batch.rewards.items()},
            "advantage": round(batch.advantages[row].item(), 6),
            "ratio": ({"mean": ratios.mean().item(), "min": ratios.min().item(), "max": ratios.max().item()}
                      if tokens.any() else None),
        }
        if row % G == 0:
            record.update(prompt=sample.prompt, target_reply=sample.target_reply)
        audit_file.write(json.dumps(record) + "\n")
    audit_file.flush()


@torch.no_grad()
def held_out_reward(model, reward_fn, tokenizer, samples, prompt_ids, settings):
    """Mean of each reward term over `num_generations` sampled completions of each held-out prompt,
    sampled `prompts_per_step` groups at a time as in training."""
    model.eval()
    seeds = [10_000_000 + settings.seed * 1000 + i for i in range(len(samples))]
    G = settings.num_generations
    sums = {}
    for start in range(0, len(samples), settings.prompts_per_step):
        chunk = slice(start, start + settings.prompts_per_step)
        completions, truncated = sample_groups(model, prompt_ids[chunk], seeds[chunk], settings, tokenizer.eos_id,
                                               tokenizer.pad_id)
        texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
        terms = reward_fn([s for s in samples[chunk] for _ in range(G)],
                          [p for p in prompt_ids[chunk] for _ in range(G)], texts, truncated)
        for name, values in terms.items():
            sums[name] = sums.get(name, 0.0) + values.sum().item()
    return {name: total / (len(samples) * G) for name, total in sums.items()}


def summarize(config, policy, ref_model, reward_fn, tokenizer, data_dir, out_dir):
    """Held-out mean reward of the base (the frozen ref_model) and of the trained policy."""
    settings = config.grpo
    samples, prompt_ids = load_prompt_pool(os.path.join(data_dir, "test.jsonl"), tokenizer, settings)
    chosen = prompts_for_step(0, len(samples), min(settings.eval_prompts, len(samples)), settings.seed + 1)
    samples, prompt_ids = [samples[i] for i in chosen], [prompt_ids[i] for i in chosen]
    before = held_out_reward(ref_model, reward_fn, tokenizer, samples, prompt_ids, settings)
    after = held_out_reward(policy, reward_fn, tokenizer, samples, prompt_ids, settings)
    print(f"\nheld-out reward, {len(samples)} test prompts x {settings.num_generations} samples each")
    print(f"{'term':<18}{'base':>10}{'GRPO':>10}")
    for term in REWARD_KEYS + BEHAVIOUR_KEYS:
        print(f"{term:<18}{before[term]:>10.3f}{after[term]:>10.3f}")
    write_json(os.path.join(out_dir, "summary.json"), {"prompts": len(samples), "base": before, "grpo": after},
               indent=2)


def main():
    parser = argparse.ArgumentParser(description="GRPO directly on a base model (AI-Salesman).")
    parser.add_argument("--config", help="a config file (configs/); default: config.py's defaults, the default recipe")
    parser.add_argument("--model", required=True, help="base model folder (HF layout, with tokenizer.json)")
    parser.add_argument("--data", default="data", help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--out", required=True, help="run folder: metrics.jsonl, checkpoints/, final/")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--audit", action="store_true", help="write every sample, reward term, advantage "
                                                             "and ratio to <out>/audit.jsonl")
    parser.add_argument("--no-summary", action="store_true", help="skip the held-out before/after summary")
    parser.add_argument("--library", help="DOGA script library (doga.py build): grpo.outline_share of the "
                                          "training prompts carry its outlines, as the agent prompts at inference")
    parser.add_argument("--seed", type=int, help="grpo.seed instead of the config's (another seed of the same "
                                                 "recipe: make seeds); recorded in the run record like any knob")
    args = parser.parse_args()
    config, trained = None, False
    try:
        config = load_config(args.config)
        if args.seed is not None:
            if args.seed < 0:
                raise ConfigError(f"--seed must be >= 0, got {args.seed}")
            config.grpo.seed = args.seed
        policy, ref_model, reward_fn, tokenizer = train(config, args.model, args.data, args.out,
                                                        resume=args.resume, audit=args.audit,
                                                        library_dir=args.library)
        trained = True
        if not args.no_summary and (not dist.is_initialized() or dist.get_rank() == 0):
            summarize(config, policy, ref_model, reward_fn, tokenizer, args.data, args.out)
    except (ConfigError, CorpusError, CheckpointError, RunLocked, ValueError, OSError) as error:
        raise SystemExit(f"error: {error}")
    except KeyboardInterrupt:
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"\n{interruption_note(args.out, config and config.grpo.steps, trained)}", file=sys.stderr)
        raise SystemExit(130) from None   # 128 + SIGINT, what a shell reports for Ctrl-C
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
