"""Benchmark: one step of GRPO over whole calls (calls_grpo.calls_step), 32 calls by default.

The step plays the config's groups of calls (4 groups of 8 calls: 32 calls) against simulated training customers,
every live call answered in one batched generation per round, rewards them and makes one update. It prints
calls per second and where the step's time goes:
  DOGA                       the prompts: outlines planned and the chat assembled for every live call
  generate                   the batched generation of every round
  customer                   the reply parsed, the Manager's label and the customer's answer (simulate.Call.step)
  reward                     session and turn rewards, advantages
  ref_model                  the frozen reference's log-probs for the KL
  policy forward + backward  the training pass over every answer (answers_per_pass at a time)
  optimizer                  gradient clipping and the AdamW step

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
import os
import statistics
import sys
import time


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
from doga import DogaAgent, ScriptLibrary  # noqa: E402
from sales import classify_sales_intent  # noqa: E402
from training import make_optimizer  # noqa: E402


PHASES = ("DOGA", "generate", "customer", "reward", "ref_model", "policy forward + backward", "optimizer")


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
    agent = DogaAgent(policy, tokenizer, library, max_prompt_length=settings.max_prompt_length,
                      max_new_tokens=settings.max_completion_length)
    optimizer = make_optimizer(policy, settings.learning_rate, settings.weight_decay)
    classify_sales_intent("Good morning, is this a good moment?")   # the world's speech models, trained once
    print(f"model: {label}")
    print(f"{settings.groups_per_step} groups x {settings.calls_per_group} calls, max_turns {settings.max_turns}, "
          f"max_completion_length {settings.max_completion_length}, answers_per_pass {settings.answers_per_pass}, "
          f"torch threads {torch.get_num_threads()}")

    rows = []
    for step in range(args.repeats):
        timings = {}
        started = time.perf_counter()
        result = calls_grpo.calls_step(policy, reference, optimizer, agent, tokenizer, config, step,
                                       settings.learning_rate, timings)
        seconds = time.perf_counter() - started
        turns = [len(record["turns"]) for record in result.records]
        rows.append((seconds, timings))
        print(f"step {step}: {len(result.records)} calls, {len(result.answers)} answers, "
              f"{statistics.mean(turns):.1f} turns per call, {seconds:.1f} s: "
              f"{len(result.records) / seconds:.2f} calls/s, {len(result.answers) / seconds:.1f} answers/s")
    seconds = statistics.median(s for s, _ in rows)
    print(f"\nmedian step {seconds:.1f} s, {settings.groups_per_step * settings.calls_per_group / seconds:.2f} calls/s")
    print(f"{'phase':<28}{'seconds':>10}{'share':>8}")
    for phase in PHASES:
        value = statistics.median(t.get(phase, 0.0) for _, t in rows)
        print(f"{phase:<28}{value:>10.2f}{value / seconds:>8.0%}")
    other = seconds - sum(statistics.median(t.get(p, 0.0) for _, t in rows) for p in PHASES)
    print(f"{'other':<28}{other:>10.2f}{other / seconds:>8.0%}")


if __name__ == "__main__":
    main()
