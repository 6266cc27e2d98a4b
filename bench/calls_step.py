"""Benchmark: one step of GRPO over whole calls (calls_grpo.calls_step), 32 calls by default.

The step plays the config's groups of calls (4 groups of 8 calls: 32 calls) against simulated training customers,
every live call answered in one batched generation per round, rewards them and makes one update. It prints
calls per second and where the step's time goes:
  DOGA                       the prompts: outlines planned and the chat assembled for every live call
  generate                   the batched generation of every round
  customer                   the reply parsed, the Manager's label and the customer's answer (simulate.Call.step)
  reward                     session and turn rewards, advantages
  ref_model                  the frozen reference's log-probs for the KL
  policy forward + backward  the training pass over every answer (whole calls, about answers_per_pass at a time)
  optimizer                  gradient clipping and the AdamW step

Each step is timed twice from the same weights, played on the same customers: as built (a call's prompts share
its prefill in generation, model.PrefillCache, and one pass in the update, model.Continuations), and the
baseline, every answer's prompt prefilled and run on its own. The ratio of the two is the speed-up of sharing.

    .venv/bin/python bench/calls_step.py [--model runs/default/final] [--library runs/default/scripts] \
        [--data data] [--repeats 1]

--model is the GRPO policy of `make train` (the stage's starting point); when that folder does not exist the
benchmark uses a randomly initialised model of the config's shape with a tokenizer trained on the corpus and
says so: the shapes are the same, but its gibberish makes customers hang up within a few turns, so its calls
are shorter than a trained policy's and the timing is a lower bound on a trained policy's step. --library is
DOGA's script library (built from --data's train.jsonl when the folder does not exist). On a shared machine
run it under `nice`: its numbers are then upper bounds on the step's time.
"""
import argparse
import copy
import os
import statistics
import sys
import time
from contextlib import contextmanager


# Idle OpenMP threads sleep instead of spinning (as the Makefile sets for every target).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
from grpo_step import load_models  # noqa: E402  (bench/grpo_step.py: the trained model, or a random one of its shape)

import calls_grpo  # noqa: E402
from config import load_config  # noqa: E402
from corpus import load_corpus  # noqa: E402
from doga import ScriptLibrary  # noqa: E402
from model import Continuations, PrefillCache, pad_left, pad_right  # noqa: E402
from sales import classify_sales_intent  # noqa: E402
from training import make_optimizer  # noqa: E402


PHASES = ("DOGA", "generate", "customer", "reward", "ref_model", "policy forward + backward", "optimizer")


class NothingKept(PrefillCache):
    """A PrefillCache that knows no beginning: every prompt is prefilled whole."""

    def beginning(self, key, ids):
        return None


def each_answer_alone(answers, pad_id, device=None):
    """calls_grpo.answer_batch with every answer's prompt stored as its own row (none shared)."""
    prompt_ids, prompt_mask = pad_left([a.prompt_ids for a in answers], pad_id, device)
    ids, mask = pad_right([a.completion_ids for a in answers], pad_id, device)
    return Continuations(prompt_ids, prompt_mask, torch.arange(len(answers), device=device), ids, mask)


@contextmanager
def baseline():
    """Within the block calls_grpo's step shares nothing between a call's prompts."""
    saved = calls_grpo.PrefillCache, calls_grpo.answer_batch
    calls_grpo.PrefillCache, calls_grpo.answer_batch = NothingKept, each_answer_alone
    try:
        yield
    finally:
        calls_grpo.PrefillCache, calls_grpo.answer_batch = saved


def timed_step(policy, reference, optimizer, agent, tokenizer, config, step):
    timings = {}
    started = time.perf_counter()
    result = calls_grpo.calls_step(policy, reference, optimizer, agent, tokenizer, config, step,
                                   config.calls.learning_rate, timings)
    return time.perf_counter() - started, timings, result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a config file; default: config.py's defaults (its calls section)")
    parser.add_argument("--model", default="runs/default/final")
    parser.add_argument("--library", default="runs/default/scripts")
    parser.add_argument("--data", default="data")
    parser.add_argument("--repeats", type=int, default=1, help="steps timed (each on its own step's customers)")
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.data, "train.jsonl")):
        raise SystemExit(f"error: {args.data}/train.jsonl not found: run `make data` first")

    config = load_config(args.config)
    settings = config.calls
    reference, policy, tokenizer, label = load_models(config, args.model, args.data)
    reference.eval().requires_grad_(False)
    if os.path.isdir(args.library):
        library = ScriptLibrary.load(args.library)
    else:
        library = ScriptLibrary.build(load_corpus(os.path.join(args.data, "train.jsonl")), progress=False)
        label += f"; DOGA library built from {args.data}/train.jsonl ({args.library} not found)"
    agent = calls_grpo.stage_agent(policy, tokenizer, library, settings)
    optimizer = make_optimizer(policy, settings.learning_rate, settings.weight_decay)
    classify_sales_intent("Good morning, is this a good moment?")   # the world's speech models, trained once
    print(f"model: {label}")
    print(f"{settings.groups_per_step} groups x {settings.calls_per_group} calls, max_turns {settings.max_turns}, "
          f"max_completion_length {settings.max_completion_length}, answers_per_pass {settings.answers_per_pass}, "
          f"torch threads {torch.get_num_threads()}")

    start = copy.deepcopy(policy.state_dict()), copy.deepcopy(optimizer.state_dict())
    rows, baseline_seconds = [], []
    for step in range(args.repeats):
        for shared in (True, False):
            policy.load_state_dict(start[0])                 # both timings of a step from the same weights
            optimizer.load_state_dict(start[1])
            if shared:
                seconds, timings, result = timed_step(policy, reference, optimizer, agent, tokenizer, config, step)
                rows.append((seconds, timings))
            else:
                with baseline():
                    seconds, _, result = timed_step(policy, reference, optimizer, agent, tokenizer, config, step)
                baseline_seconds.append(seconds)
            turns = [len(record["turns"]) for record in result.records]
            replaced = sum(bool(t.get("from_outline")) for record in result.records for t in record["turns"])
            print(f"step {step} {'shared' if shared else 'baseline'}: {len(result.records)} calls, "
                  f"{len(result.answers)} answers (and {replaced} turns said from the outline, which have none), "
                  f"{statistics.mean(turns):.1f} turns per call, {seconds:.1f} s: "
                  f"{len(result.records) / seconds:.2f} calls/s, {len(result.answers) / seconds:.1f} answers/s")
    seconds = statistics.median(s for s, _ in rows)
    calls = settings.groups_per_step * settings.calls_per_group
    print(f"\nmedian step {seconds:.1f} s, {calls / seconds:.2f} calls/s; baseline (every prompt on its own) "
          f"{statistics.median(baseline_seconds):.1f} s: {statistics.median(baseline_seconds) / seconds:.2f}x")
    print(f"{'phase':<28}{'seconds':>10}{'share':>8}")
    for phase in PHASES:
        value = statistics.median(t.get(phase, 0.0) for _, t in rows)
        print(f"{phase:<28}{value:>10.2f}{value / seconds:>8.0%}")
    other = seconds - sum(statistics.median(t.get(p, 0.0) for _, t in rows) for p in PHASES)
    print(f"{'other':<28}{other:>10.2f}{other / seconds:>8.0%}")


if __name__ == "__main__":
    main()
