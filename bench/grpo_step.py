"""Benchmark: one GRPO step of the default recipe, the full-sequence path against the shared-prefix path.

The step is grpo.grpo_step on step 0's prompts (the config's groups of completions): sample, score with
the composite reward (its Bayesian pass included), the reference's log-probs for the KL, the policy's
forward + backward, the optimizer. It runs twice per repeat:
  full-sequence  tests/full_sequence.py: each group generated on its own, every pass over whole
                 prompt + completion sequences (the path the shared-prefix one replaced);
  shared-prefix  grpo.grpo_step as training runs it: all groups in one batch, each prompt run once per pass.
Both start each repeat from the same weights, fresh optimizer and the same seeds; which goes first
alternates, so drift in a shared machine's load hits both alike. The table gives each phase's median
seconds and the ratio ("other": advantages and bookkeeping; "step CPU": the process's CPU seconds,
which other jobs on a shared machine disturb less than wall time), the step's model FLOPs (every
matmul and attention, counted with torch.utils.flop_counter) and the utilisation: FLOPs / (median step
seconds x this machine's float32 matmul rate, measured here on 1024 x 1024 products). It also compares
the two paths' step metrics for the same seed: the same completions, every number within float32
rounding. The last line is the step speed-up: the median over repeats of full / shared step time, each
ratio taken within one repeat (adjacent runs), which follows a shared machine's changing load better
than the ratio of the two medians (also shown).

    .venv/bin/python bench/grpo_step.py [--model runs/default/base] [--data data] [--repeats 5]

--model is the trained tiny base of `make train`; when that folder does not exist the benchmark uses a
randomly initialised model of the config's shape with a tokenizer trained on the corpus, and says so
(the timing depends on the shapes, which are the same; its completions are gibberish, so most rewards sit
at their floor). --data needs the corpus of `make data`; --library, DOGA's script library of `make train`
(without it the prompts carry no outlines, and are shorter than in training; the output says so).
"""
import argparse
import contextlib
import copy
import os
import statistics
import sys
import time


# Idle OpenMP threads sleep instead of spinning (as the Makefile sets for every target): on a shared
# machine spinning threads slow everything several times over. The Triton interpreter is for tests only.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count  # noqa: E402


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
import grpo  # noqa: E402
from config import load_config  # noqa: E402
from corpus import load_corpus, render_call_text  # noqa: E402
from full_sequence import full_sequence_step  # noqa: E402
from model import Qwen2, Qwen2Config, load_pretrained, load_with_tokenizer  # noqa: E402
from reward import CompositeReward, fit_similarity_embedder  # noqa: E402
from tokenizer import ChatTokenizer  # noqa: E402
from training import learning_rate_at, make_optimizer  # noqa: E402


PHASES = ("generate", "reward", "ref_model", "policy forward + backward", "optimizer")
PATHS = {"full-sequence": False, "shared-prefix": True}
# Metrics that describe the step's outcome (not its speed), compared between the two paths.
COMPARED = ("reward_mean", "reward_std", "reward_bayes", "completion_len_mean", "kl", "entropy", "loss", "grad_norm")

# CPU attention runs as one fused op that torch's flop counter has no formula for: count it as the two
# products (and their backward) of plain attention, as the counter does for the GPU kernels.
aten = torch.ops.aten
CPU_ATTENTION_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu:
        lambda query, key, value, *args, out_shape=None, **kwargs: sdpa_flop_count(query, key, value),
    aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad_out, query, key, value, *args, out_shape=None, **kwargs:
            sdpa_backward_flop_count(grad_out, query, key, value),
}


def load_models(config, model_dir, data_dir):
    """(reference, policy, tokenizer, label): the trained base, or a random one of the config's shape."""
    if os.path.isdir(model_dir):
        reference, tokenizer = load_with_tokenizer(model_dir)
        return reference, load_pretrained(model_dir), tokenizer, f"trained base {model_dir}"
    calls = load_corpus(os.path.join(data_dir, "train.jsonl"))
    tokenizer = ChatTokenizer.train((render_call_text(call) for call in calls), config.tokenizer.vocab_size)
    torch.manual_seed(0)
    shape = Qwen2Config(vocab_size=tokenizer.vocab_size, **config.model)
    reference = Qwen2(shape)
    return reference, copy.deepcopy(reference), tokenizer, \
        f"RANDOMLY INITIALISED model of {config.source}'s shape ({model_dir} not found; timing only)"


def matmul_rate(size=1024, repeats=20):
    """float32 FLOP/s of a size x size matrix product on this machine, now (median of repeats)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return 2 * size ** 3 / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a config file; default: config.py's defaults, the default recipe")
    parser.add_argument("--model", default="runs/default/base")
    parser.add_argument("--data", default="data")
    parser.add_argument("--library", default="runs/default/scripts",
                        help="DOGA script library: grpo.outline_share of the prompts carry its outlines, as in "
                             "`make train`")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.data, "train.jsonl")):
        raise SystemExit(f"error: {args.data}/train.jsonl not found: run `make data` first")

    config = load_config(args.config)
    settings = config.grpo
    reference, policy, tokenizer, label = load_models(config, args.model, args.data)
    reference.eval().requires_grad_(False)
    library = args.library if os.path.isdir(args.library) else None
    samples, prompt_ids = grpo.load_prompt_pool(os.path.join(args.data, "train.jsonl"), tokenizer, settings,
                                                library)
    embedder = fit_similarity_embedder(samples)
    chosen = grpo.prompts_for_step(0, len(samples), settings.prompts_per_step, settings.seed)
    step_samples, step_prompts = [samples[i] for i in chosen], [prompt_ids[i] for i in chosen]
    seeds = [settings.seed * 1_000_003 + g for g in range(len(chosen))]
    lr = learning_rate_at(0, settings.steps, settings.learning_rate, settings.warmup_steps, 1.0)
    start_weights = copy.deepcopy(policy.state_dict())

    def run_step(shared_prefix, timings=None):
        """One step from the same starting point: weights, a fresh optimizer, the seeds."""
        policy.load_state_dict(start_weights)
        optimizer = make_optimizer(policy, settings.learning_rate, settings.weight_decay)
        reward_fn = CompositeReward(config.reward, reference, tokenizer, embedder)
        started, cpu_started = time.perf_counter(), time.process_time()
        with contextlib.nullcontext() if shared_prefix else full_sequence_step():
            batch, stats, loss, grad_norm = grpo.grpo_step(policy, reference, reward_fn, optimizer, tokenizer,
                                                           step_samples, step_prompts, seeds, settings, lr,
                                                           timings=timings)
        if timings is not None:
            timings["step CPU (all threads)"] = time.process_time() - cpu_started
            timings["step"] = time.perf_counter() - started
        return batch, grpo.step_metrics(0, batch, stats, loss, grad_norm, lr, settings, time.time())

    load_before = os.getloadavg()
    print(f"{label}; {config.source}: {len(chosen)} prompts of {[len(p) for p in step_prompts]} tokens, "
          f"{settings.num_generations} completions each of up to {settings.max_completion_length} tokens; "
          + (f"outlines from {library}" if library else f"no outlines ({args.library} not found)"))
    print(f"CPU, {torch.get_num_threads()} threads, float32; load average before: "
          + " ".join(f"{x:.2f}" for x in load_before) + f" ({os.cpu_count()} cores)")

    # Warm-up, and the outcome of each path for the same seed: what is compared below.
    outcomes = {name: run_step(shared) for name, shared in PATHS.items()}
    flops = {}
    for name, shared in PATHS.items():
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
            run_step(shared)
        flops[name] = counter.get_total_flops()

    rows = PHASES + ("other", "step", "step CPU (all threads)")
    times = {name: {row: [] for row in rows} for name in PATHS}
    for repeat in range(args.repeats):
        order = list(PATHS) if repeat % 2 == 0 else list(PATHS)[::-1]
        for name in order:
            timings = {}
            run_step(PATHS[name], timings)
            timings["other"] = timings["step"] - sum(timings.get(phase, 0.0) for phase in PHASES)
            for row in rows:
                times[name][row].append(timings.get(row, 0.0))
    rate = matmul_rate()
    load_after = os.getloadavg()

    median = {name: {phase: statistics.median(values) for phase, values in phases.items()}
              for name, phases in times.items()}
    full, shared = median["full-sequence"], median["shared-prefix"]
    print(f"\nmedian seconds of {args.repeats} repeats per path (runs alternating)")
    print("| phase | full-sequence s | shared-prefix s | speed-up |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row} | {full[row]:.3f} | {shared[row]:.3f} | {full[row] / shared[row]:.2f}x |")
    print(f"| model GFLOP per step | {flops['full-sequence'] / 1e9:.2f} | {flops['shared-prefix'] / 1e9:.2f} | "
          f"{flops['full-sequence'] / flops['shared-prefix']:.2f}x fewer |")
    print(f"| utilisation of {rate / 1e9:.1f} GFLOP/s (1024^3 float32 matmul) | "
          f"{flops['full-sequence'] / (full['step'] * rate):.1%} | "
          f"{flops['shared-prefix'] / (shared['step'] * rate):.1%} | |")

    (full_batch, full_record), (shared_batch, shared_record) = outcomes["full-sequence"], outcomes["shared-prefix"]
    same_completions = full_batch.completions == shared_batch.completions
    print(f"\nsame seed, both paths: completions {'identical' if same_completions else 'DIFFER'}")
    worst = 0.0
    for key in COMPARED:
        a, b = full_record[key], shared_record[key]
        difference = abs(a - b) / max(abs(a), abs(b), 1e-12)
        worst = max(worst, difference)
        print(f"  {key:<20} {a:>14.7g} {b:>14.7g}   relative difference {difference:.1e}")
    # float32 keeps ~7 significant digits; sums over thousands of terms in another order lose a few more.
    verdict = "within" if same_completions and worst < 1e-4 else "NOT within"
    print(f"metrics {verdict} float32 tolerance (largest relative difference {worst:.1e}, bound 1e-4)")
    print("load average after: " + " ".join(f"{x:.2f}" for x in load_after))
    paired = sorted(a / b for a, b in zip(times["full-sequence"]["step"], times["shared-prefix"]["step"]))
    print(f"per-repeat step ratios {paired[0]:.2f}x to {paired[-1]:.2f}x; ratio of the medians "
          f"{full['step'] / shared['step']:.2f}x")
    print(f"step speed-up: {statistics.median(paired):.2f}x")


if __name__ == "__main__":
    main()
