"""Evaluation of AI-Salesman (arXiv 2511.12133): capabilities turn by turn, whole calls against simulated
customers, the paper's ablations, and a report.

A *system* is a model with a prompting: `static` (doga.StaticAgent, one few-shot block), `doga`
(doga.DogaAgent, a fresh outline every turn) or `doga_noisy` (DOGA whose intent classifier's predictions
are flipped to another legal intent at rate `label_noise`, 20%). Every system is measured the same way:

* **Turn level** (`evaluate_turns`). On held-out test calls, the salesperson turns the Manager judged good
  (on-stage and faithful: a deliberate mistake of the noisy corpus is no reference to aim at), the same
  number per capability (the six stages of sales.STAGES, drawn with a seed). The system answers the call
  so far, greedily; the answer is scored with every term of the training reward (reward.CompositeReward,
  with the *frozen base model* as the Bayesian reference for every system, so that numbers compare), with
  **intent appropriateness** (sales.classify_sales_intent(reply) equals the reference turn's intent)
  and with its length in words. Aggregated per capability (the reference turn's stage) and overall.
  *The capability score* of the report's first table is intent appropriateness: the share of turns where
  the reply does what a good salesperson did at that moment. It is bounded, needs no weights and reads
  the same for every system; the mean total reward is the second table.
* **Closed loop** (`play_calls`). The system plays the salesperson in simulate.run_call against the
  simulated Customer, `calls_per_product` calls for every product, the same personas for every system:
  conversion and hang-up rates with Wilson 95% intervals; mean turns per call, faithfulness violations
  per call (salesperson turns the Manager labels unfaithful: an unsupported number, price or product, or a
  forbidden promise) and off-stage turns per call with Student-t 95% intervals.
* **Judge** (optional, `--judge DIR`). A local instruct checkpoint grades each turn-level reply from 1 to
  10 on the rubric of its capability (doga.STAGE_GOALS, plus faithfulness). Unparsable output is retried
  (sampled), then counted as missing, never guessed.
* **Ablations** (`run_ablations`, plan in configs/ablations.json): base, SFT, SFT then GRPO, direct GRPO,
  GRPO without the Bayesian reward, each with static and DOGA prompting; DOGA with flipped intent labels;
  and a domain held out of training (base and GRPO trained on the other domains, both it and the
  all-domain GRPO model evaluated on that domain's test calls and products).
* **Report** (`write_report`): report.md (tables, the paper's claims beside what we measured, a plot of
  the training curves and capability scores), report.json ({"systems": {"<model>/<prompting>":
  {"capabilities", "overall", "closed_loop"}}, ...}) and, per system, every scored turn and played call.

For speed, replies are generated in batches (model.generate with left padding): the agent's own prompt
assembly (`Agent.prompt`, what Agent.respond prompts with), then
one batched generation, ~10x faster on a CPU than one reply at a time. In the closed loop each call runs
in its own thread so that the replies of all live calls are generated as one batch (see `play_calls`).

Left out, and why: the paper's human evaluation and API-model judge (no network; the local judge is the
stand-in); paired significance tests and several seeds per arm (a CPU budget of one hour for all arms;
the intervals say how far one run can be trusted); sampling-based evaluation (greedy decoding makes
systems comparable turn by turn).

CLI:
    python evaluate.py run --config configs/tiny.json --run runs/default --data data --out reports/default
    python evaluate.py ablations --plan configs/ablations.json --data data --out reports/ablations
"""

import argparse
import io
import json
import math
import os
import random
import re
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from config import ConfigError, load_config
from corpus import load_corpus, split_calls, training_samples, write_corpus
from doga import STAGE_GOALS, DogaAgent, IntentClassifier, ScriptLibrary, StaticAgent, track_call
from files import read_jsonl, write_bytes, write_json, write_jsonl, write_text
from model import generate_completions, load_with_tokenizer
from retrieval import HashedTfidfEmbedder
from reward import REWARD_KEYS, CompositeReward
from sales import STAGES, classify_sales_intent, is_good_turn, load_world
from simulate import make_persona, run_call
from tokenizer import split_thought
from training import resolve_device

PROMPTINGS = ("static", "doga", "doga_noisy")


@dataclass
class EvalSettings:
    turns_per_stage: int = 16      # turn-level sample per capability (6 capabilities)
    calls_per_product: int = 2     # closed-loop calls per product (12 products)
    batch_size: int = 32           # replies generated together
    seed: int = 0                  # turns drawn, personas, the noisy classifier's flips
    label_noise: float = 0.2       # share of predicted intents flipped for the doga_noisy prompting
    judge_retries: int = 2         # extra (sampled) tries when the judge's answer has no score


# ----------------------------------------------------------------------------------------------
# Confidence intervals (95%).

Z95 = 1.959963984540054            # the 0.975 quantile of the standard normal


def wilson_interval(successes, n, z=Z95):
    """Wilson score interval of a proportion: the p whose normal test does not reject successes / n."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes == 0 else centre - half       # exactly 0 (1) at x = 0 (n), not a rounding error off
    high = 1.0 if successes == n else centre + half
    return low, high


def student_t_quantile(probability, df):
    """Quantile of Student's t with `df` degrees of freedom, for probability in (0.5, 1): bisection on the
    CDF, whose density is integrated with Simpson's rule (1e-6 accurate; no SciPy at run time)."""
    log_scale = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x):
        t = np.linspace(0.0, x, 4001)                                      # 4000 intervals, even
        density = np.exp(log_scale - (df + 1) / 2 * np.log1p(t * t / df))
        weights = np.ones_like(t)
        weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
        return 0.5 + (t[1] - t[0]) / 3 * float(weights @ density)

    low, high = 0.0, 1.0
    while cdf(high) < probability:
        high *= 2
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < probability else (low, middle)
    return (low + high) / 2


def rate(successes, n):
    """A proportion with its Wilson 95% interval, as stored in report.json."""
    low, high = wilson_interval(successes, n)
    return {"value": successes / n if n else None, "low": _finite(low), "high": _finite(high), "n": n,
            "method": "wilson"}


def mean_with_interval(values):
    """A mean with its Student-t 95% interval (mean +- t(0.975, n-1) * s / sqrt(n)); no interval for n < 2."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return {"value": None, "low": None, "high": None, "n": 0, "method": "student_t"}
    mean = sum(values) / n
    if n < 2:
        return {"value": mean, "low": None, "high": None, "n": n, "method": "student_t"}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = student_t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    return {"value": mean, "low": mean - half, "high": mean + half, "n": n, "method": "student_t"}


def _finite(x):
    return None if x is None or math.isnan(x) else x


# ----------------------------------------------------------------------------------------------
# Systems: a model with a prompting, answering many calls at once.

def make_agent(model, tokenizer, library, prompting, config, settings):
    """The doga.py agent of a prompting, generating greedily with the config's prompt/answer lengths."""
    generation = {"max_prompt_length": config.grpo.max_prompt_length,
                  "max_new_tokens": config.grpo.max_completion_length, "temperature": 0.0}
    if prompting == "static":
        return StaticAgent(model, tokenizer, library, **generation)
    if prompting == "doga":
        return DogaAgent(model, tokenizer, library, **generation)
    if prompting == "doga_noisy":
        noisy = IntentClassifier(library, label_noise=settings.label_noise, seed=settings.seed)
        return DogaAgent(model, tokenizer, library, classifier=noisy, **generation)
    raise ValueError(f"unknown prompting {prompting!r} (known: {', '.join(PROMPTINGS)})")


def generate_batch(model, tokenizer, prompts, max_new_tokens, batch_size, temperature=0.0, generator=None):
    """Continue token-id prompts in batches of similar length (model.generate_completions) -> [(text,
    truncated)]: text is the decoded completion up to its EOS (special tokens dropped); truncated means
    no EOS came within max_new_tokens."""
    results = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        completions = generate_completions(model, [prompts[i] for i in rows], max_new_tokens, tokenizer.eos_id,
                                           tokenizer.pad_id, temperature, generator=generator)
        for i, (completion, truncated) in zip(rows, completions):
            results[i] = (tokenizer.decode(completion, skip_special_tokens=True), truncated)
    return results


def agent_answers(agent, views, batch_size):
    """The agent's raw answers [(text, truncated)] for many calls so far, generated in batches."""
    prompts = [agent.prompt(view)[0] for view in views]
    return generate_batch(agent.model, agent.tokenizer, prompts, agent.max_new_tokens, batch_size)


# ----------------------------------------------------------------------------------------------
# Turn level: held-out turns, answered and scored.

def call_so_far(call, turn_index):
    """The view of a call just before its turn `turn_index`, as simulate.run_call shows it to a salesperson."""
    return {"id": call["id"], "domain": call["domain"], "product": call["product"],
            "customer": {"visible": call["customer"]["visible"]}, "turns": call["turns"][:turn_index]}


def select_turns(calls, per_stage, seed, fits=lambda sample: True):
    """Up to `per_stage` good salesperson turns (on-stage and faithful) per capability, drawn with `seed`
    from `calls`, for which fits(sample) holds -> [(call, corpus.Sample)], capabilities in order."""
    by_stage = {stage: [] for stage in STAGES}
    for call in calls:
        for sample in training_samples(call):
            if is_good_turn(sample.labels) and fits(sample):
                by_stage[sample.stage].append((call, sample))
    rng = random.Random(seed)
    chosen = []
    for stage in STAGES:
        rng.shuffle(by_stage[stage])
        chosen += by_stage[stage][:per_stage]
    return chosen


def score_turns(selected, answers, reward_fn, batch_size=16):
    """One record per turn: the answer, every reward term, intent appropriateness and length.

    selected: [(call, Sample)]; answers: [(text, truncated)] in the same order; reward_fn: a
    reward.CompositeReward (its tokenizer encodes the plain prompt, without any guidance, for `bayes`)."""
    samples = [sample for _, sample in selected]
    terms = {key: [] for key in REWARD_KEYS}
    for start in range(0, len(samples), batch_size):
        chunk = slice(start, start + batch_size)
        prompt_ids = [reward_fn.tokenizer.encode(s.prompt) for s in samples[chunk]]
        scored = reward_fn(samples[chunk], prompt_ids, [a[0] for a in answers[chunk]], [a[1] for a in answers[chunk]])
        for key in REWARD_KEYS:
            terms[key] += scored[key].tolist()
    records = []
    for row, ((call, sample), (text, truncated)) in enumerate(zip(selected, answers)):
        answer = split_thought(text)
        stage_before, _ = track_call(call["turns"][:sample.turn_index])
        reply_intent = classify_sales_intent(answer.reply, stage_before)
        records.append({"call_id": sample.call_id, "turn_index": sample.turn_index, "stage": sample.stage,
                        "reference_intent": sample.intent, "reply_intent": reply_intent,
                        "intent_appropriate": reply_intent == sample.intent,
                        "thought": answer.thought, "reply": answer.reply, "reference": sample.reference,
                        "truncated": truncated, "reply_words": len(answer.reply.split()),
                        "reference_words": len(sample.reference.split()),
                        **{key: terms[key][row] for key in REWARD_KEYS}})
    return records


def aggregate_turns(records):
    """{"capabilities": {stage: summary}, "overall": summary}; a summary holds n, the mean of every reward
    term, intent appropriateness (Wilson interval), total reward (t interval), reply and reference words,
    the share of truncated answers and, when a judge ran, its mean score and how many replies it could not score."""
    def summarize(rows):
        n = len(rows)
        if n == 0:
            return {"n": 0}
        summary = {"n": n, "intent_appropriateness": rate(sum(r["intent_appropriate"] for r in rows), n),
                   "total_reward": mean_with_interval([r["total"] for r in rows])}
        for key in REWARD_KEYS:
            summary[key] = sum(r[key] for r in rows) / n
        summary["reply_words"] = sum(r["reply_words"] for r in rows) / n
        summary["reference_words"] = sum(r["reference_words"] for r in rows) / n
        summary["truncated"] = sum(r["truncated"] for r in rows) / n
        if any("judge" in r for r in rows):
            scores = [r["judge"] for r in rows if r.get("judge") is not None]
            summary["judge"] = sum(scores) / len(scores) if scores else None
            summary["judge_missing"] = n - len(scores)
        return summary
    return {"capabilities": {stage: summarize([r for r in records if r["stage"] == stage]) for stage in STAGES},
            "overall": summarize(records)}


# ----------------------------------------------------------------------------------------------
# Closed loop: whole calls against the simulated customers.

def closed_loop_jobs(products, calls_per_product, seed):
    """(call id, product, persona, rng) per call; the persona and the customer's randomness depend only
    on the seed, the product and the call number, so every system meets the same customers."""
    jobs = []
    for product in products:
        for number in range(calls_per_product):
            rng = random.Random(f"eval:{seed}:{product['id']}:{number}")
            persona = make_persona(product["domain"], product, rng)
            jobs.append((f"eval-{product['id']}-{number}", product, persona, rng))
    return jobs


def play_calls(answer, jobs, desc="calls"):
    """Play every job with simulate.run_call, all calls at once -> the played calls, in job order.

    run_call asks for one salesperson turn at a time through a callback. So that the turns of many calls
    are generated as one batch, each call runs in its own thread, and its callback posts the call so far
    and waits. Once every live call waits, this thread answers them all with one answer(views) ->
    [(thought, reply)] and wakes them. A round holds exactly the calls still live at that turn, so the
    result does not depend on thread timing."""
    condition = threading.Condition()
    waiting, replies = {}, {}         # job index -> call so far; job index -> (thought, reply)
    played, errors = [None] * len(jobs), []
    live = len(jobs)

    def salesperson(index):
        def speak(view):
            with condition:
                waiting[index] = view
                condition.notify_all()
                condition.wait_for(lambda: index in replies)
                return replies.pop(index)
        return speak

    def play(index, call_id, product, persona, rng):
        nonlocal live
        try:
            played[index] = run_call(product, persona, salesperson(index), rng, call_id=call_id)
        except BaseException as error:  # re-raised below, in this thread
            errors.append(error)
        finally:
            with condition:
                live -= 1
                condition.notify_all()

    threads = [threading.Thread(target=play, args=(index, *job), daemon=True) for index, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    with tqdm(total=len(jobs), desc=desc, unit="call") as progress:
        while True:
            with condition:
                condition.wait_for(lambda: len(waiting) == live)
                batch = sorted(waiting.items())
                waiting.clear()
                progress.update(len(jobs) - live - progress.n)
            if not batch:
                break
            answers = answer([view for _, view in batch])
            with condition:
                replies.update({index: reply for (index, _), reply in zip(batch, answers)})
                condition.notify_all()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return played


def closed_loop_metrics(calls):
    """Conversion and hang-up rates (Wilson) and per-call means (Student t) of played calls."""
    n = len(calls)
    sales = [[t for t in call["turns"] if t["role"] == "sales"] for call in calls]
    return {"calls": n,
            "conversion": rate(sum(c["outcome"] == "converted" for c in calls), n),
            "hang_up": rate(sum(c["outcome"] == "hung_up" for c in calls), n),
            "turns": mean_with_interval([len(c["turns"]) for c in calls]),
            "violations_per_call": mean_with_interval([sum(not t["labels"]["faithful"] for t in s) for s in sales]),
            "off_stage_per_call": mean_with_interval([sum(not t["labels"]["on_stage"] for t in s) for s in sales])}


# ----------------------------------------------------------------------------------------------
# The optional judge: a local instruct checkpoint grades replies 1 to 10 on a rubric per capability.

JUDGE_SYSTEM = ("You are a strict telesales coach. You grade one reply of a sales call on a rubric and "
                "answer with 'Score: N', N an integer from 1 (poor) to 10 (excellent).")
SCORE = re.compile(r"score\s*(?:is|:|=)?\s*\**\s*(10|[1-9])(?!\d|\.\d)", re.IGNORECASE)
OUT_OF_TEN = re.compile(r"(?<![\d.])(10|[1-9])\s*/\s*10\b")


def judge_messages(sample, reply):
    """The judge's chat: the rubric of the turn's capability, the facts, the customer's words, the reply."""
    customer = next((m["content"] for m in reversed(sample.messages) if m["role"] == "user"), "(the call starts)")
    rubric = (f"Capability: {sample.stage.replace('_', ' ')}. A good reply: {STAGE_GOALS[sample.stage]} "
              "It states only facts from the sheet and profile below, and is one or two sentences.")
    system = sample.messages[0]["content"]
    facts = system[system.find("Product:"):]                  # the sheet and profile, not the agent's instructions
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"{rubric}\n\n{facts}\n\nCustomer: {customer}\nSalesperson: {reply}\n\n"
                                        "Grade the salesperson's reply. Answer 'Score: N'."}]


def parse_judge_score(text):
    """The score in the judge's answer: 'Score: 7', '7/10', or a bare '7'; None when there is none."""
    match = SCORE.search(text) or OUT_OF_TEN.search(text)
    if match:
        return int(match.group(1))
    bare = text.strip().rstrip(".")
    return int(bare) if re.fullmatch(r"10|[1-9]", bare) else None


class Judge:
    """Grades replies with a local checkpoint (HF folder with tokenizer.json), greedily first, then with
    `retries` sampled tries for the answers that held no score; still none: missing (None)."""

    def __init__(self, folder, retries=2, max_new_tokens=16, batch_size=16, seed=0):
        self.model, self.tokenizer = load_with_tokenizer(folder)
        self.model.eval()
        self.retries, self.max_new_tokens, self.batch_size = retries, max_new_tokens, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def score(self, samples, replies):
        """-> (scores [int or None], attempts [how many generations each reply took])."""
        prompts = [self.tokenizer.encode_chat(judge_messages(s, r)) for s, r in zip(samples, replies)]
        scores, attempts = [None] * len(prompts), [0] * len(prompts)
        for attempt in range(1 + self.retries):
            todo = [i for i, score in enumerate(scores) if score is None]
            if not todo:
                break
            texts = generate_batch(self.model, self.tokenizer, [prompts[i] for i in todo], self.max_new_tokens,
                                   self.batch_size, temperature=0.0 if attempt == 0 else 0.7,
                                   generator=self.generator)
            for i, (text, _) in zip(todo, texts):
                scores[i], attempts[i] = parse_judge_score(text), attempts[i] + 1
        return scores, attempts


# ----------------------------------------------------------------------------------------------
# One system, measured both ways.

@dataclass
class Bench:
    """What every system of one evaluation is measured on, built once."""
    config: object             # config.Config: reward weights, prompt and answer lengths
    settings: EvalSettings
    turns: list                # [(call, Sample)] held-out turns
    products: list             # product sheets of the closed loop
    reward_fn: CompositeReward  # frozen base model as the Bayesian reference
    judge: object = None       # Judge or None


def make_bench(config, settings, train_calls, test_calls, base_dir, domain=None, judge_dir=None):
    """Turns, products, reward and judge for one evaluation; `domain` restricts turns and products to it.

    The similarity embedder is fitted on the good reference replies of the training calls (as GRPO's is);
    turns whose plain prompt exceeds max_prompt_length under the base tokenizer are left out (as in GRPO)."""
    device = resolve_device(config.grpo.device)
    base, tokenizer = load_with_tokenizer(base_dir, device=device)
    base.eval().requires_grad_(False)
    references = [s.reference for call in train_calls for s in training_samples(call) if is_good_turn(s.labels)]
    reward_fn = CompositeReward(config.reward, base, tokenizer, HashedTfidfEmbedder().fit(references))
    calls = [c for c in test_calls if domain in (None, c["domain"])]
    turns = select_turns(calls, settings.turns_per_stage, settings.seed,
                         lambda s: len(tokenizer.encode(s.prompt)) <= config.grpo.max_prompt_length)
    if not turns:
        raise ValueError(f"no good held-out turn fits max_prompt_length={config.grpo.max_prompt_length} in the "
                         f"test calls{'' if domain is None else ' of domain ' + repr(domain)}")
    products = [p for d, ps in sorted(load_world().products.items()) if domain in (None, d) for p in ps]
    judge = Judge(judge_dir, settings.judge_retries, seed=settings.seed) if judge_dir else None
    return Bench(config, settings, turns, products, reward_fn, judge)


def evaluate_system(name, model_dir, library, prompting, bench, out_dir):
    """Turn level, judge and closed loop of one system; writes out_dir/systems/<name>/{turns,calls}.jsonl.
    Returns its report.json entry."""
    started = time.time()
    device = resolve_device(bench.config.grpo.device)
    model, tokenizer = load_with_tokenizer(model_dir, device=device)
    agent = make_agent(model.eval(), tokenizer, library, prompting, bench.config, bench.settings)
    batch_size = bench.settings.batch_size
    print(f"\n== {name}: {len(bench.turns)} turns, {len(bench.products)} products x "
          f"{bench.settings.calls_per_product} calls")

    views = [call_so_far(call, sample.turn_index) for call, sample in bench.turns]
    answers = []
    for start in tqdm(range(0, len(views), batch_size), desc=f"{name} turns", unit="batch"):
        answers += agent_answers(agent, views[start:start + batch_size], batch_size)
    records = score_turns(bench.turns, answers, bench.reward_fn)
    if bench.judge:
        scores, attempts = bench.judge.score([s for _, s in bench.turns], [r["reply"] for r in records])
        for record, score, tries in zip(records, scores, attempts):
            record["judge"], record["judge_attempts"] = score, tries

    def speak(call_views):
        return [(a.thought, a.reply) for a in
                (split_thought(text) for text, _ in agent_answers(agent, call_views, batch_size))]

    jobs = closed_loop_jobs(bench.products, bench.settings.calls_per_product, bench.settings.seed)
    calls = play_calls(speak, jobs, desc=f"{name} calls")

    folder = os.path.join(out_dir, "systems", name.replace("/", "__"))
    write_jsonl(os.path.join(folder, "turns.jsonl"), records)
    write_jsonl(os.path.join(folder, "calls.jsonl"), calls)
    result = {**aggregate_turns(records), "closed_loop": closed_loop_metrics(calls), "model": model_dir,
              "prompting": prompting, "seconds": round(time.time() - started, 1)}
    overall, loop = result["overall"], result["closed_loop"]
    print(f"{name}: intent appropriateness {overall['intent_appropriateness']['value']:.3f}, total reward "
          f"{overall['total']:.3f}, conversion {loop['conversion']['value']:.3f} ({result['seconds']} s)")
    return result


# ----------------------------------------------------------------------------------------------
# The paper's claims, and what we measured for each.

def paper_claims(systems):
    """(claim, the system it is about, the system it is compared with, the direction the paper reports):
    "higher": the first should score higher; "close": the first should not fall clearly below the second."""
    models = sorted({name.split("/")[0] for name in systems})
    claims = [("DOGA beats static prompting", f"{m}/doga", f"{m}/static", "higher") for m in models]
    claims += [("GRPO improves on the base model (implied by the paper's main result)", "grpo/doga", "base/doga",
                "higher"),
               ("Direct GRPO beats SFT then GRPO", "grpo/doga", "sft_grpo/doga", "higher"),
               ("Direct GRPO beats SFT alone (implied by the paper's main result)", "grpo/doga", "sft/doga", "higher"),
               ("Removing the Bayesian reward hurts", "grpo/doga", "grpo_no_bayes/doga", "higher"),
               ("Intent-label noise degrades DOGA", "grpo/doga", "grpo/doga_noisy", "higher")]
    claims += [("Transfers to a domain held out of training", name, name.replace("holdout_grpo", "grpo"), "close")
               for name in systems if name.startswith("holdout_grpo")]
    return claims


def judge_claim(first, second, direction):
    """Measured difference of the capability score (intent appropriateness) and of conversion, and a
    verdict: the sign against the paper's direction, 'within noise' when the 95% intervals overlap."""
    a, b = first["overall"]["intent_appropriateness"], second["overall"]["intent_appropriateness"]
    ca, cb = first["closed_loop"]["conversion"], second["closed_loop"]["conversion"]
    difference = a["value"] - b["value"]
    overlap = a["low"] <= b["high"] and b["low"] <= a["high"]
    if direction == "close":
        verdict = "agrees" if overlap or difference >= 0 else "disagrees"
    elif difference == 0:
        verdict = "no difference"
    elif difference > 0:
        verdict = "agrees in direction, within noise" if overlap else "agrees"
    else:
        verdict = "disagrees in direction, within noise" if overlap else "disagrees"
    measured = (f"capability {a['value']:.0%} vs {b['value']:.0%} ({difference:+.0%}); total reward "
                f"{first['overall']['total']:.3f} vs {second['overall']['total']:.3f}; conversion "
                f"{ca['value']:.0%} vs {cb['value']:.0%}")
    return measured, verdict


def claims_table(systems):
    rows = []
    for claim, first, second, direction in paper_claims(systems):
        if first in systems and second in systems:
            measured, verdict = judge_claim(systems[first], systems[second], direction)
        else:
            measured, verdict = "not run here (make ablations runs it)", "not measured"
        rows.append({"claim": claim, "systems": f"{first} vs {second}", "measured": measured, "verdict": verdict})
    return rows


# ----------------------------------------------------------------------------------------------
# The report: markdown, JSON and a plot.

def plot(path, curves, systems):
    """Three panels: GRPO reward per step, pretraining/SFT loss per step, capability score per system."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rewards, losses, scores) = plt.subplots(1, 3, figsize=(18, 5))
    for label, rows in curves.get("grpo", {}).items():
        rewards.plot([r["step"] for r in rows], [r["reward_mean"] for r in rows], label=label)
    rewards.set(title="GRPO: mean reward per step (each run's own weights)", xlabel="step", ylabel="reward")
    for label, rows in curves.get("pretrain", {}).items():
        losses.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=label)
    losses.set(title="Pretraining / SFT loss", xlabel="step", ylabel="cross-entropy")
    columns = list(STAGES) + ["overall"]
    width = 0.8 / max(1, len(systems))
    for k, (name, result) in enumerate(systems.items()):
        values = [result["capabilities"][s].get("intent_appropriateness", {}).get("value") or 0.0 for s in STAGES]
        values.append(result["overall"]["intent_appropriateness"]["value"])
        scores.bar(np.arange(len(columns)) + k * width, values, width, label=name)
    scores.set_xticks(np.arange(len(columns)) + 0.4 - width / 2, [c.replace("_", "\n") for c in columns], fontsize=7)
    scores.set(title="Capability score (intent appropriateness)", ylim=(0, 1))
    for axes in (rewards, losses, scores):
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7)
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    plt.close(figure)
    write_bytes(path, image.getvalue())


def _percent(entry):
    return "-" if not entry or entry.get("value") is None else f"{entry['value']:.0%}"


def _interval(entry, fmt):
    if entry.get("value") is None:
        return "-"
    if entry.get("low") is None:
        return format(entry["value"], fmt)
    return f"{format(entry['value'], fmt)} [{format(entry['low'], fmt)}, {format(entry['high'], fmt)}]"


def capability_table(systems, cell):
    header = ["system"] + list(STAGES) + ["overall", "conversion"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in systems.items():
        cells = [cell(result["capabilities"][s]) for s in STAGES] + [cell(result["overall"])]
        cells.append(_percent(result["closed_loop"]["conversion"]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def write_report(out_dir, title, systems, curves, meta):
    """reports/<run>/report.md, report.json and training_and_capabilities.png."""
    claims = claims_table(systems)
    write_json(os.path.join(out_dir, "report.json"), {"systems": systems, "claims": claims, "meta": meta}, indent=1)
    plot(os.path.join(out_dir, "training_and_capabilities.png"), curves, systems)

    def mean(key, fmt=".3f"):
        return lambda summary: "-" if summary.get("n", 0) == 0 else format(summary[key], fmt)

    some = next(iter(systems.values()))
    lines = [f"# {title}", "",
             f"{meta['turns']} held-out turns ({meta['turns_per_stage']} per capability at most, good reference "
             f"turns only); closed loop: {meta['calls_per_product']} calls per product ({some['closed_loop']['calls']} "
             f"per system on all domains). Greedy decoding; one seed ({meta['seed']}). "
             "Bayesian reward terms are under the frozen base model for every system.", "",
             "## Capability score: intent appropriateness",
             "Share of held-out turns where the reply does what the reference salesperson did "
             "(sales.classify_sales_intent of the reply = the reference intent). Conversion: closed loop.", ""]
    lines += capability_table(systems, lambda s: _percent(s.get("intent_appropriateness")))
    lines += ["", "## Mean total reward (the training reward's weights)", ""]
    lines += capability_table(systems, mean("total"))
    if any("judge" in result["overall"] for result in systems.values()):
        lines += ["", "## Judge score (1-10, missing = unparsable after retries)", ""]
        lines += capability_table(systems, lambda s: "-" if "judge_missing" not in s else
                                  f"{'-' if s['judge'] is None else format(s['judge'], '.1f')} "
                                  f"({s['judge_missing']} missing)")
    lines += ["", "## Turn level, overall", "",
              "| system | intent appropriateness | total reward | format | similarity | faithfulness | bayes "
              "(prior + likelihood) | words (reference) | truncated |", "|" + "---|" * 9]
    for name, result in systems.items():
        o = result["overall"]
        lines.append(f"| {name} | {_interval(o['intent_appropriateness'], '.2f')} | {_interval(o['total_reward'], '.3f')} "
                     f"| {o['format']:.2f} | {o['similarity']:.3f} | {o['faithfulness']:.3f} | {o['bayes']:.2f} "
                     f"({o['bayes_prior']:.2f} + {o['bayes_likelihood']:.2f}) | {o['reply_words']:.1f} ({o['reference_words']:.1f}) | "
                     f"{o['truncated']:.0%} |")
    lines += ["", "## Closed loop against simulated customers",
              "Rates with Wilson 95% intervals; per-call means with Student-t 95% intervals.", "",
              "| system | calls | conversion | hang-up | turns per call | faithfulness violations per call | "
              "off-stage turns per call |", "|" + "---|" * 7]
    for name, result in systems.items():
        c = result["closed_loop"]
        lines.append(f"| {name} | {c['calls']} | {_interval(c['conversion'], '.2f')} | {_interval(c['hang_up'], '.2f')} "
                     f"| {_interval(c['turns'], '.1f')} | {_interval(c['violations_per_call'], '.2f')} | "
                     f"{_interval(c['off_stage_per_call'], '.2f')} |")
    lines += ["", "## The paper's claims beside what we measured",
              "The paper's findings are stated qualitatively (no numbers copied). Verdict: the sign of the "
              "capability-score difference against the paper's direction; 'within noise' when the two 95% "
              "intervals overlap.", "", "| claim (paper) | systems | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['systems']} | {c['measured']} | {c['verdict']} |" for c in claims]
    lines += ["", "## Training curves and capability scores", "", "![training curves and capability scores]"
              "(training_and_capabilities.png)", "", "## Provenance", "", "```", json.dumps(meta, indent=1), "```", ""]
    write_text(os.path.join(out_dir, "report.md"), "\n".join(lines))
    print(f"\nwrote {out_dir}/report.md, report.json, training_and_capabilities.png")


# ----------------------------------------------------------------------------------------------
# `make eval`: one trained run, base vs GRPO, each static and DOGA.

def evaluate_run(config_path, run_dir, data_dir, out_dir, settings, base_dir=None, judge_dir=None,
                 promptings=("static", "doga")):
    started = time.time()
    config = load_config(config_path)
    base_dir = base_dir or os.path.join(run_dir, "base")
    for folder in (base_dir, os.path.join(run_dir, "final"), os.path.join(run_dir, "scripts")):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder}: missing (run `make train` first)")
    train_calls = load_corpus(os.path.join(data_dir, "train.jsonl"))
    test_calls = load_corpus(os.path.join(data_dir, "test.jsonl"))
    bench = make_bench(config, settings, train_calls, test_calls, base_dir, judge_dir=judge_dir)
    library = ScriptLibrary.load(os.path.join(run_dir, "scripts"))
    systems = {}
    for model_name, model_dir in (("base", base_dir), ("grpo", os.path.join(run_dir, "final"))):
        for prompting in promptings:
            systems[f"{model_name}/{prompting}"] = evaluate_system(f"{model_name}/{prompting}", model_dir, library,
                                                                   prompting, bench, out_dir)
    curves = {"grpo": {"grpo": read_jsonl(os.path.join(run_dir, "metrics.jsonl"))},
              "pretrain": {"base": read_jsonl(os.path.join(base_dir, "metrics.jsonl"))}}
    meta = {"run": run_dir, "config": config_path, "data": data_dir, **asdict(settings),
            "turns": len(bench.turns), "judge": judge_dir, "wall_seconds": round(time.time() - started, 1)}
    write_report(out_dir, f"AI-Salesman evaluation of {run_dir}", systems, curves, meta)
    return systems


# ----------------------------------------------------------------------------------------------
# `make ablations`: train every arm of the paper's comparisons, then evaluate them all.

def load_plan(path):
    """configs/ablations.json: base_config, overrides (config sections for every trained arm), sft
    (pretrain overrides of the SFT stage), holdout_domain, eval (EvalSettings fields)."""
    try:
        with open(path) as handle:
            plan = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: unreadable ablation plan ({error})") from None
    known = {"comment", "base_config", "overrides", "sft", "holdout_domain", "eval"}
    if set(plan) - known:
        raise ConfigError(f"{path}: unknown key(s) {sorted(set(plan) - known)} (known: {sorted(known)})")
    for key in ("base_config", "holdout_domain"):
        if not isinstance(plan.get(key), str):
            raise ConfigError(f"{path}: '{key}' must be a string")
    fields = set(EvalSettings.__dataclass_fields__)
    if set(plan.get("eval", {})) - fields:
        raise ConfigError(f"{path}: eval.{sorted(set(plan['eval']) - fields)[0]} is not a known key "
                          f"(known: {sorted(fields)})")
    return plan


def arm_config(plan, work_dir, name, extra=None):
    """The base config with the plan's overrides and this arm's `extra` sections, written to
    <work>/configs/<name>.json and validated by config.load_config (which names a bad key)."""
    with open(plan["base_config"]) as handle:
        raw = json.load(handle)
    for overrides in (plan.get("overrides", {}), extra or {}):
        for section, values in overrides.items():
            raw[section] = {**raw.get(section, {}), **values}
    path = os.path.join(work_dir, "configs", f"{name}.json")
    write_json(path, raw, indent=1)
    return load_config(path)


def train_once(model_dir, recipe, train):
    """Run train() unless model_dir already holds a model made by the same recipe (a JSON dict of
    config sections, starting model and data), so that a rerun of make ablations resumes by arm."""
    stamp = os.path.join(model_dir, "recipe.json")
    if os.path.exists(stamp) and os.path.exists(os.path.join(model_dir, "config.json")):
        with open(stamp) as handle:
            if json.load(handle) == recipe:
                print(f"{model_dir}: already trained by this recipe, reused")
                return model_dir
    train()
    write_json(stamp, recipe, indent=1)
    return model_dir


def default_base_matches(base_dir, config):
    """runs/default/base is reused when it was pretrained as this config says: the same architecture and a
    pretraining log of the same number of steps (its data is the same DATA folder, as the Makefile passes)."""
    try:
        with open(os.path.join(base_dir, "config.json")) as handle:
            saved = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return False
    return (all(saved.get(key) == value for key, value in config.model.items())
            and len(read_jsonl(os.path.join(base_dir, "metrics.jsonl"))) == config.pretrain.steps)


def run_ablations(plan_path, data_dir, default_run, work_dir, out_dir, judge_dir=None):
    import grpo
    import pretrain

    started = time.time()
    plan = load_plan(plan_path)
    settings = EvalSettings(**plan.get("eval", {}))
    config = arm_config(plan, work_dir, "common")
    sft_config = arm_config(plan, work_dir, "sft", {"pretrain": plan.get("sft", {})})
    no_bayes_config = arm_config(plan, work_dir, "grpo_no_bayes", {"reward": {"bayes": 0.0}})
    train_file = os.path.join(data_dir, "train.jsonl")
    train_calls = load_corpus(train_file)
    test_calls = load_corpus(os.path.join(data_dir, "test.jsonl"))
    data_id = {"train": os.path.abspath(train_file), "bytes": os.path.getsize(train_file)}

    def recipe(cfg, init, *sections, data=data_id):
        return {"init": init, "data": data, **{s: asdict(getattr(cfg, s)) if s != "model" else cfg.model
                                                for s in sections}}

    # The held-out domain: its calls leave the training split (split_calls puts them all in "test").
    domain = plan["holdout_domain"]
    holdout_data = os.path.join(work_dir, "holdout", "data")
    holdout_train, _ = split_calls(train_calls, test_fraction=0.0, holdout_domain=domain)
    write_corpus(os.path.join(holdout_data, "train.jsonl"), holdout_train)
    write_corpus(os.path.join(holdout_data, "test.jsonl"), [c for c in test_calls if c["domain"] == domain])
    holdout_id = {"train": os.path.abspath(holdout_data), "calls": len(holdout_train), "without": domain}

    # Script libraries (DOGA) from the training calls each model saw.
    library_dir = os.path.join(default_run, "scripts")
    if not os.path.isdir(library_dir):
        library_dir = os.path.join(work_dir, "scripts")
        ScriptLibrary.build(train_calls).save(library_dir)
    holdout_library_dir = os.path.join(work_dir, "holdout", "scripts")
    ScriptLibrary.build(holdout_train).save(holdout_library_dir)

    # Models. Every trained arm's checkpoints live under work_dir (gitignored runs/).
    pretrain_sections = ("tokenizer", "model", "pretrain")
    if default_base_matches(os.path.join(default_run, "base"), config):
        base = os.path.join(default_run, "base")
        print(f"base: reusing {base}")
    else:
        base = os.path.join(work_dir, "base")
        train_once(base, recipe(config, None, *pretrain_sections),
                   lambda: pretrain.train(config, data_dir, base))
    models = {"base": base}
    models["sft"] = train_once(os.path.join(work_dir, "sft"), recipe(sft_config, base, "pretrain"),
                               lambda: pretrain.train(sft_config, data_dir, os.path.join(work_dir, "sft"),
                                                      sft=True, init=base))
    for name, cfg, init in (("grpo", config, base), ("sft_grpo", config, models["sft"]),
                            ("grpo_no_bayes", no_bayes_config, base)):
        out = os.path.join(work_dir, name)
        models[name] = train_once(os.path.join(out, "final"), recipe(cfg, init, "grpo", "reward"),
                                  lambda cfg=cfg, init=init, out=out: grpo.train(cfg, init, data_dir, out))
    holdout_base = os.path.join(work_dir, "holdout", "base")
    train_once(holdout_base, recipe(config, None, *pretrain_sections, data=holdout_id),
               lambda: pretrain.train(config, holdout_data, holdout_base))
    holdout_out = os.path.join(work_dir, "holdout", "grpo")
    models["holdout_grpo"] = train_once(os.path.join(holdout_out, "final"),
                                        recipe(config, holdout_base, "grpo", "reward", data=holdout_id),
                                        lambda: grpo.train(config, holdout_base, holdout_data, holdout_out))
    trained_at = time.time()

    # Evaluation: every system under the same reward (the common config's weights, bayes included).
    library, holdout_library = ScriptLibrary.load(library_dir), ScriptLibrary.load(holdout_library_dir)
    bench = make_bench(config, settings, train_calls, test_calls, base, judge_dir=judge_dir)
    systems = {}
    for model_name in ("base", "sft", "sft_grpo", "grpo", "grpo_no_bayes"):
        for prompting in ("static", "doga"):
            name = f"{model_name}/{prompting}"
            systems[name] = evaluate_system(name, models[model_name], library, prompting, bench, out_dir)
    systems["grpo/doga_noisy"] = evaluate_system("grpo/doga_noisy", models["grpo"], library, "doga_noisy",
                                                 bench, out_dir)
    domain_bench = make_bench(config, settings, train_calls, test_calls, base, domain=domain, judge_dir=judge_dir)
    for model_name, model_library in (("grpo", library), ("holdout_grpo", holdout_library)):
        for prompting in ("static", "doga"):
            name = f"{model_name}@{domain}/{prompting}"
            systems[name] = evaluate_system(name, models[model_name], model_library, prompting, domain_bench, out_dir)
            systems[name]["eval_domain"] = domain

    curves = {"grpo": {name: read_jsonl(os.path.join(work_dir, *path, "metrics.jsonl"))
                       for name, path in (("grpo", ("grpo",)), ("sft_grpo", ("sft_grpo",)),
                                          ("grpo_no_bayes", ("grpo_no_bayes",)), ("holdout_grpo", ("holdout", "grpo")))},
              "pretrain": {"base": read_jsonl(os.path.join(base, "metrics.jsonl")),
                           "sft": read_jsonl(os.path.join(models["sft"], "metrics.jsonl")),
                           "holdout base": read_jsonl(os.path.join(holdout_base, "metrics.jsonl"))}}
    meta = {"plan": plan_path, "plan_contents": plan, "data": data_dir, "work": work_dir, "models": models,
            **asdict(settings), "turns": len(bench.turns), "holdout_turns": len(domain_bench.turns),
            "judge": judge_dir, "training_seconds": round(trained_at - started, 1),
            "wall_seconds": round(time.time() - started, 1)}
    write_report(out_dir, "AI-Salesman ablations", systems, curves, meta)
    return systems


# ----------------------------------------------------------------------------------------------
# CLI

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="evaluate one trained run: base vs GRPO, each static and DOGA")
    run.add_argument("--config", default="configs/tiny.json")
    run.add_argument("--run", default="runs/default", help="run folder with base/, final/ and scripts/")
    run.add_argument("--base", default=None, help="base model folder (default: <run>/base)")
    run.add_argument("--data", default="data", help="folder with train.jsonl and test.jsonl")
    run.add_argument("--out", default="reports/default")
    ablations = commands.add_parser("ablations", help="train and evaluate every arm of the paper's ablations")
    ablations.add_argument("--plan", default="configs/ablations.json")
    ablations.add_argument("--data", default="data")
    ablations.add_argument("--default-run", default="runs/default", help="its base/ and scripts/ are reused "
                                                                          "when they match the plan")
    ablations.add_argument("--work", default="runs/ablations", help="trained arms (checkpoints) go here")
    ablations.add_argument("--out", default="reports/ablations")
    for command in (run, ablations):
        command.add_argument("--judge", default=None, help="local instruct checkpoint folder grading replies 1-10")
    for field in EvalSettings.__dataclass_fields__.values():
        run.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            settings = EvalSettings(**{f: getattr(args, f) for f in EvalSettings.__dataclass_fields__})
            evaluate_run(args.config, args.run, args.data, args.out, settings, args.base, args.judge)
        else:
            run_ablations(args.plan, args.data, args.default_run, args.work, args.out, args.judge)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}")


if __name__ == "__main__":
    main()
