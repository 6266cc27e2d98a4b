"""Evaluation of AI-Salesman (arXiv 2511.12133): capabilities turn by turn and whole calls against simulated
customers, for each system of `make eval`.

A *system* is a model with a prompting: `static` (doga.StaticAgent, one few-shot block), `doga`
(doga.DogaAgent, a fresh outline every turn), `doga_planned` (DOGA whose outline names the move the best
scripted plan, plans.BEST_PLAN, asks for, instead of the move its classifier predicts: ours, not the paper's)
or `doga_noisy` (DOGA whose intent classifier's predictions are flipped to another legal intent at rate
`label_noise`, 20%). A model that writes values as slots
(tokenizer.py) is measured on what the customer hears: its replies are said with the call's values
(doga.Agent.hear) before anything scores them; in the closed loop the agent says them (doga.Agent.say: a DOGA
agent never says a reply twice in a call, the outline's next line instead). Every system is measured the same
way, on one of two sets of customers (`EvalSettings.customers`): **validation** customers, on which recipe
choices and research arms are measured (ablations.py), or **test** customers, on which no choice was made
(`make eval`, the headline). Both are drawn from the evaluation pool of names (world/personas.json's
"evaluation" section), so no evaluation customer shares a name, a business name or a profile with a training call:

* **Turn level** (`select_turns`, `score_turns`). On held-out test calls, the salesperson turns the
  Manager labelled good (on-stage and faithful: a deliberate mistake of the noisy corpus is no target
  to aim at), the same number per capability (the six stages of sales.STAGES, drawn with a seed). The
  system answers the call so far, greedily; the answer is scored with every term of the training reward
  (reward.CompositeReward, with the *frozen base model* as the ref_model for every system, so
  that numbers compare), with **intent appropriateness** (sales.classify_sales_intent(reply) equals the
  target turn's intent) and with its length in words. Aggregated per capability (the target turn's
  stage) and overall. *The capability score* of the report's first table is intent appropriateness: the
  share of turns where the reply does what a good salesperson did at that moment. It is bounded, needs no
  weights and reads the same for every system; the mean total reward is the second table. The held-out
  calls are split in two halves by their id (`held_out_half`): validation turns come from one, test turns
  from the other.
* **Closed loop** (`closed_loop_jobs`, `play_calls`). The system plays the salesperson of simulate.Call
  against the simulated Customer, `calls_per_product` calls for every product, the same personas for every
  system (from the evaluation pool, their random streams keyed by the customers, validation or test):
  conversion and hang-up rates with Wilson 95% intervals; mean turns per call, faithfulness violations
  per call (salesperson turns the Manager labels unfaithful: an unsupported number, price or product, or a
  forbidden promise) and off-stage turns per call with Student-t 95% intervals; how the salesperson speaks: the
  calls with a reply said twice word for word, and the replies a DOGA agent said from the outline in place of a
  repeat.
* **Judge** (optional, `--judge DIR`). A local instruct checkpoint grades each turn-level reply from 1 to
  10 on the rubric of its capability (doga.STAGE_GOALS, plus faithfulness). Unparsable output is retried
  (sampled), then counted as missing, never guessed.

`make eval` (`evaluate_run`) measures one trained run: the base model and the GRPO policy, each with
static, DOGA and planned DOGA prompting, the whole-call stage after it (calls_grpo.py) with the prompting it
trained with, and both for every other seed of the run (`make seeds`).
Per system it writes every scored turn and played call under <out>/systems/; report.py writes the report
(tables, the paper's claims beside what we measured, the mean over seeds, a plot); ablations.py trains and
measures every arm of the paper's comparisons the same way.

For speed, replies are generated in batches (model.generate_completions, left-padded): the agent's own
prompt assembly (`Agent.prompt`, what Agent.respond prompts with), then one batched generation, many times
faster on a CPU than one reply at a time. In the closed loop each call is a simulate.Call, stepped a turn
at a time, so that the replies of all live calls are generated as one batch (see `play_calls`).

Left out, and why: the paper's human evaluation and API-model judge (no network; the local judge is the
stand-in); paired significance tests and several seeds per arm (a CPU budget of one hour for all arms;
the intervals say how far one run can be trusted); sampling-based evaluation (greedy decoding makes
systems comparable turn by turn). See docs/design.md, "Evaluation".

CLI:
    python evaluate.py --run runs/default --data data --out reports/default [--customers test|validation]
                       [--judge DIR] [--seed-runs runs/default-seed1 runs/default-seed2]
    python evaluate.py --search-plans [--calls-per-product 32] [--seed 0]   (plans.py: choose the best scripted
                       plans on validation customers; their conversion on validation and test customers)
"""

import argparse
import json
import math
import os
import random
import re
import time
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from config import ConfigError, load_config
from corpus import load_corpus, training_samples
from doga import (
    STAGE_GOALS,
    Agent,
    DogaAgent,
    DogaPlanner,
    IntentClassifier,
    ScriptLibrary,
    StaticAgent,
    track_call,
)
from files import read_jsonl, write_jsonl
from model import PrefillCache, generate_completions, load_with_tokenizer, weights_fingerprint
from plans import BEST_PLAN, salesperson, search_plans
from report import write_report
from reward import REWARD_KEYS, CompositeReward, fit_similarity_embedder, heard_target
from runs import RUN_RECORD, recorded_config
from sales import STAGES, check_claims, classify_sales_intent, is_good_turn, load_world
from simulate import DEFAULT_NOISE, Call, Salesperson, make_persona, run_call
from training import resolve_device


PROMPTINGS = ("static", "doga", "doga_planned", "doga_noisy")
# Which customers a measurement is made on: recipe choices and research arms on validation customers
# (ablations.py), the headline on test customers that no choice was made on (`make eval`).
CUSTOMERS = ("validation", "test")


@dataclass
class EvalSettings:
    turns_per_stage: int = 16      # turn-level sample per capability (6 capabilities)
    calls_per_product: int = 8     # closed-loop calls per product (12 products: 96 calls per system)
    batch_size: int = 32           # replies generated together
    seed: int = 0                  # turns drawn, personas, the noisy classifier's flips
    label_noise: float = 0.2       # share of predicted intents flipped for the doga_noisy prompting
    judge_retries: int = 2         # extra (sampled) tries when the judge's answer has no score
    customers: str = "test"        # "test" (the headline) or "validation" (choices and research arms)

    def __post_init__(self):
        if self.customers not in CUSTOMERS:
            raise ValueError(f"customers: {self.customers!r} is not one of {', '.join(CUSTOMERS)}")


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
    if prompting == "doga_planned":
        return DogaAgent(model, tokenizer, library, moves=BEST_PLAN, **generation)
    if prompting == "doga_noisy":
        noisy = IntentClassifier(library, label_noise=settings.label_noise, seed=settings.seed)
        return DogaAgent(model, tokenizer, library, classifier=noisy, **generation)
    raise ValueError(f"unknown prompting {prompting!r} (known: {', '.join(PROMPTINGS)})")


def generate_batch(model, tokenizer, prompts, max_new_tokens, batch_size, temperature=0.0, generator=None,
                   cache=None, keys=None):
    """Continue token-id prompts in batches of similar length (model.generate_completions) -> [(text,
    truncated)]: text is the decoded completion up to its EOS (special tokens dropped); truncated means
    no EOS came within max_new_tokens. cache, keys: a model.PrefillCache and a key per prompt (a played call's
    prompt is prefilled after its last one)."""
    results = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        completions = generate_completions(model, [prompts[i] for i in rows], max_new_tokens, tokenizer.eos_id,
                                           tokenizer.pad_id, temperature, generator=generator, cache=cache,
                                           keys=None if keys is None else [keys[i] for i in rows])
        for i, (completion, truncated) in zip(rows, completions):
            results[i] = (tokenizer.decode(completion, skip_special_tokens=True), truncated)
    return results


def agent_answers(agent, views, batch_size, cache=None):
    """The agent's answers [(text, truncated)] for many calls so far, generated in batches: text as the model
    wrote it (Agent.hear says it as the customer hears it). cache: a model.PrefillCache keyed by call id, for
    calls played round by round."""
    prompts = [agent.prompt(view)[0] for view in views]
    keys = [view["id"] for view in views] if cache is not None else None
    return generate_batch(agent.model, agent.tokenizer, prompts, agent.max_new_tokens, batch_size, cache=cache,
                          keys=keys)


# ----------------------------------------------------------------------------------------------
# Turn level: held-out turns, answered and scored.

def call_so_far(call, turn_index):
    """The view of a call just before its turn `turn_index`, as simulate.run_call shows it to a salesperson."""
    return {"id": call["id"], "domain": call["domain"], "product": call["product"],
            "customer": {"visible": call["customer"]["visible"]}, "turns": call["turns"][:turn_index]}


def select_turns(calls, per_stage, seed, fits=lambda sample: True, slots=False):
    """Up to `per_stage` good salesperson turns (on-stage and faithful) per capability, drawn with `seed`
    from `calls`, for which fits(sample) holds -> [(call, corpus.Sample)], capabilities in order. The samples
    write values as the reward's reference model does (`slots`): its Bayesian terms read them."""
    by_stage = {stage: [] for stage in STAGES}
    for call in calls:
        for sample in training_samples(call, slots=slots):
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
        thought, reply = Agent.hear(text, sample)                             # as the customer would hear it
        target = heard_target(sample)
        stage_before, _ = track_call(call["turns"][:sample.turn_index])
        reply_intent = classify_sales_intent(reply, stage_before)
        records.append({"call_id": sample.call_id, "turn_index": sample.turn_index, "stage": sample.stage,
                        "target_intent": sample.intent, "reply_intent": reply_intent,
                        "intent_appropriate": reply_intent == sample.intent,
                        "thought": thought, "reply": reply, "target_reply": target,
                        "truncated": truncated, "reply_words": len(reply.split()),
                        "target_words": len(target.split()),
                        **{key: terms[key][row] for key in REWARD_KEYS}})
    return records


def aggregate_turns(records):
    """{"capabilities": {stage: summary}, "overall": summary}; a summary holds n, the mean of every reward
    term, intent appropriateness (Wilson interval), total reward (t interval), reply and target words,
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
        summary["target_words"] = sum(r["target_words"] for r in rows) / n
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

def closed_loop_jobs(products, calls_per_product, seed, customers="test"):
    """(call id, product, persona, rng) per call; the persona and the customer's randomness depend only
    on `customers` (validation or test), the seed, the product and the call number, so every system meets
    the same customers, and validation and test customers are different people.

    Personas come from the evaluation pool (simulate.make_persona(pool="evaluation")): names and business
    names no training call has, so no evaluation customer is a training customer. Each job's rng is fresh:
    a played call advances it, so build the jobs anew for each player."""
    jobs = []
    for product in products:
        for number in range(calls_per_product):
            rng = random.Random(f"{customers}:{seed}:{product['id']}:{number}")
            persona = make_persona(product["domain"], product, rng, pool="evaluation")
            jobs.append((f"{customers}-{product['id']}-{number}", product, persona, rng))
    return jobs


def held_out_half(calls, customers):
    """The held-out calls whose turns measure `customers`: half of them by a stable hash of the call id
    (CRC-32, the same on every machine; Python's hash() of a string is salted per process), so validation
    and test turns never come from the same call."""
    return [call for call in calls if zlib.crc32(call["id"].encode()) % 2 == CUSTOMERS.index(customers)]


def play_calls(answer, jobs, desc="calls"):
    """Play every job to its end, all calls at once -> the played calls, in job order.

    Each round asks answer(views) -> [(thought, reply) or (thought, reply, note)] for the turn of every call
    still live (one batched generation) and steps each call with its reply (simulate.Call.step); a call leaves
    the rounds when it ends. A round holds exactly the calls still live at that turn, in job order."""
    calls = [Call(product, persona, rng, call_id) for call_id, product, persona, rng in jobs]
    with tqdm(total=len(calls), desc=desc, unit="call") as progress:
        while live := [call for call in calls if not call.over]:
            for call, said in zip(live, answer([call.view() for call in live])):
                call.step(*said)
            progress.update(sum(call.over for call in calls) - progress.n)
    return [call.record() for call in calls]


def closed_loop_metrics(calls):
    """Conversion and hang-up rates (Wilson) and per-call means (Student t) of played calls. A violation is a
    salesperson turn the Manager labels unfaithful; unsupported facts count the claims themselves (the
    distinct unsupported claims of each turn, as sales.check_claims finds them). repeated_reply: the calls in which
    the salesperson says a reply twice word for word; from_outline: the replies DOGA said in place of a repeated
    one (doga.DogaAgent.say)."""
    n = len(calls)
    sales = [[t for t in call["turns"] if t["role"] == "sales"] for call in calls]

    def unsupported(call, turns):
        visible = call["customer"]["visible"]
        return sum(len(set(check_claims(t["text"], call["product"], visible).unsupported)) for t in turns)

    return {"calls": n,
            "conversion": rate(sum(c["outcome"] == "converted" for c in calls), n),
            "hang_up": rate(sum(c["outcome"] == "hung_up" for c in calls), n),
            "turns": mean_with_interval([len(c["turns"]) for c in calls]),
            "violations_per_call": mean_with_interval([sum(not t["labels"]["faithful"] for t in s) for s in sales]),
            "unsupported_facts_per_call": mean_with_interval([unsupported(c, s) for c, s in zip(calls, sales)]),
            "off_stage_per_call": mean_with_interval([sum(not t["labels"]["on_stage"] for t in s) for s in sales]),
            "repeated_reply": rate(sum(len({t["text"] for t in s}) < len(s) for s in sales), n),
            "from_outline_per_call": mean_with_interval([sum(bool(t.get("from_outline")) for t in s) for s in sales])}


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
class EvalSetup:
    """What every system of one evaluation is measured on, built once."""
    config: object             # config.Config: reward weights, prompt and answer lengths
    settings: EvalSettings
    turns: list                # [(call, Sample)] held-out turns
    products: list             # product sheets of the closed loop
    reward_fn: CompositeReward  # the frozen base model as its ref_model
    judge: object = None       # Judge or None

    def jobs(self):
        """The closed-loop calls, with fresh random streams: the same customers for every system."""
        return closed_loop_jobs(self.products, self.settings.calls_per_product, self.settings.seed,
                                self.settings.customers)


def make_eval_setup(config, settings, train_calls, test_calls, base_dir, domain=None, judge_dir=None):
    """Turns, products, reward and judge for one evaluation; `domain` restricts turns and products to it.
    The turns come from the half of the held-out calls that belongs to settings.customers (held_out_half).

    The similarity embedder is fitted on the good target replies of the training calls (as GRPO's is);
    turns whose plain prompt exceeds max_prompt_length under the base tokenizer are left out (as in GRPO)."""
    device = resolve_device(config.grpo.device)
    base, tokenizer = load_with_tokenizer(base_dir, device=device)
    base.eval().requires_grad_(False)
    good = [s for call in train_calls for s in training_samples(call) if is_good_turn(s.labels)]
    reward_fn = CompositeReward(config.reward, base, tokenizer, fit_similarity_embedder(good))
    calls = [c for c in held_out_half(test_calls, settings.customers) if domain in (None, c["domain"])]
    turns = select_turns(calls, settings.turns_per_stage, settings.seed,
                         lambda s: len(tokenizer.encode(s.prompt)) <= config.grpo.max_prompt_length, tokenizer.slots)
    if not turns:
        raise ValueError(f"no good held-out turn fits max_prompt_length={config.grpo.max_prompt_length} in the "
                         f"{settings.customers} half of the test calls"
                         f"{'' if domain is None else ' of domain ' + repr(domain)}")
    products = [p for d, ps in sorted(load_world().products.items()) if domain in (None, d) for p in ps]
    judge = Judge(judge_dir, settings.judge_retries, seed=settings.seed) if judge_dir else None
    return EvalSetup(config, settings, turns, products, reward_fn, judge)


def evaluate_system(name, model_dir, library, prompting, setup, out_dir):
    """Turn level, judge and closed loop of one system; writes out_dir/systems/<name>/{turns,calls}.jsonl.
    Returns its report.json entry (kind "system")."""
    started = time.time()
    device = resolve_device(setup.config.grpo.device)
    model, tokenizer = load_with_tokenizer(model_dir, device=device)
    agent = make_agent(model.eval(), tokenizer, library, prompting, setup.config, setup.settings)
    batch_size = setup.settings.batch_size
    print(f"\n== {name}: {len(setup.turns)} turns, {len(setup.products)} products x "
          f"{setup.settings.calls_per_product} calls")

    views = [call_so_far(call, sample.turn_index) for call, sample in setup.turns]
    answers = []
    for start in tqdm(range(0, len(views), batch_size), desc=f"{name} turns", unit="batch"):
        answers += agent_answers(agent, views[start:start + batch_size], batch_size)
    records = score_turns(setup.turns, answers, setup.reward_fn)
    if setup.judge:
        scores, attempts = setup.judge.score([s for _, s in setup.turns], [r["reply"] for r in records])
        for record, score, tries in zip(records, scores, attempts):
            record["judge"], record["judge_attempts"] = score, tries

    cache = PrefillCache()                               # a call's prompt is prefilled after its last one

    def speak(call_views):                               # (thought, reply, note) said, for each live call
        cache.keep([view["id"] for view in call_views])
        return [agent.say(text, view) for (text, _), view in zip(agent_answers(agent, call_views, batch_size, cache),
                                                                 call_views)]

    calls = play_calls(speak, setup.jobs(), desc=f"{name} calls")
    if isinstance(agent, DogaAgent):                     # the outline before each turn, for calls.html
        agent.planner.record_outlines(calls)

    folder = os.path.join(out_dir, "systems", name.replace("/", "__"))
    write_jsonl(os.path.join(folder, "turns.jsonl"), records)
    write_jsonl(os.path.join(folder, "calls.jsonl"), calls)
    result = {**aggregate_turns(records), "closed_loop": closed_loop_metrics(calls), "model": model_dir,
              "prompting": prompting, "kind": "system",
              "seconds": round(time.time() - started, 1)}
    overall, loop = result["overall"], result["closed_loop"]
    print(f"{name}: intent appropriateness {overall['intent_appropriateness']['value']:.3f}, total reward "
          f"{overall['total']:.3f}, conversion {loop['conversion']['value']:.3f} ({result['seconds']} s)")
    return result


# ----------------------------------------------------------------------------------------------
# Reference rows: salespeople without a trained model, on the same customers.

def scripted(noise):
    """The corpus's scripted Salesperson with its share `noise` of mistakes, as a player of run_call: the same
    random stream for the same call in every reference row (keyed by the call id)."""
    return lambda call_id, product, visible: Salesperson(product, visible, random.Random(f"eval-sales:{call_id}"),
                                                         noise)


def reference_rows(setup, library, out_dir, noise=DEFAULT_NOISE):
    """Closed-loop results of five salespeople that need no trained model, against setup.jobs():

    * `scripted, noise N`: the corpus's scripted Salesperson with its share N of mistakes (what the
      training data demonstrates);
    * `scripted, noise 0`: the same without mistakes (the corpus's plan, said without a mistake);
    * `best scripted plan`: plans.BEST_PLAN, the plan chosen on validation customers (`search_plan_rows`):
      what a salesperson who reads only the customer's words can reach on this customer;
    * `DOGA top line`: DOGA's best retrieved line said verbatim, no model (what retrieval alone achieves;
      a trained model with DOGA should add to it);
    * `DOGA top line, planned moves`: the same with the moves of BEST_PLAN (what the `doga_planned` prompting
      hands the model)."""
    def top_line(planner):
        def say(view):
            outline = planner.plan(view["product"], view["customer"]["visible"], view["turns"])
            return "", outline.lines[0] if outline.lines else outline.goal
        return say

    classified, planned = top_line(DogaPlanner(library)), top_line(DogaPlanner(library, moves=BEST_PLAN))

    players = {f"scripted, noise {noise:g}": scripted(noise),
               "scripted, noise 0": scripted(0.0),
               "best scripted plan": lambda call_id, product, visible: salesperson(BEST_PLAN, call_id, product,
                                                                                   visible),
               "DOGA top line": lambda call_id, product, visible: classified,
               "DOGA top line, planned moves": lambda call_id, product, visible: planned}
    rows = {}
    for name, player in players.items():
        calls = [run_call(product, persona, player(call_id, product, persona["visible"]), rng, call_id=call_id)
                 for call_id, product, persona, rng in tqdm(setup.jobs(), desc=name, unit="call")]
        write_jsonl(os.path.join(out_dir, "systems", "reference__" + re.sub(r"\W+", "_", name), "calls.jsonl"),
                    calls)
        rows[name] = {"kind": "reference", "closed_loop": closed_loop_metrics(calls)}
        if name == "best scripted plan":
            rows[name]["plan"] = BEST_PLAN.describe()
        print(f"{name}: conversion {rows[name]['closed_loop']['conversion']['value']:.3f}")
    return rows


def search_plan_rows(settings, width=4):
    """Choose the best fixed and the best adaptive plan (plans.search_plans) on the validation customers of
    `settings`, then play them and the corpus's plan (the scripted Salesperson at noise 0) on validation and
    test customers -> {(salesperson, customers): closed-loop metrics}, and the chosen plans."""
    products = [p for _, ps in sorted(load_world().products.items()) for p in ps]

    def jobs(customers):
        return lambda: closed_loop_jobs(products, settings.calls_per_product, settings.seed, customers)

    chosen = search_plans(jobs("validation"), width)
    players = {"corpus plan (scripted, noise 0)": scripted(0.0)}
    for family, (_, plan) in chosen.items():
        players[f"best {family} plan"] = lambda call_id, product, visible, plan=plan: salesperson(
            plan, call_id, product, visible)
    rows = {(name, customers): closed_loop_metrics([
                run_call(product, persona, player(call_id, product, persona["visible"]), rng, call_id=call_id)
                for call_id, product, persona, rng in jobs(customers)()])
            for name, player in players.items() for customers in CUSTOMERS}
    return rows, {family: plan for family, (_, plan) in chosen.items()}


# ----------------------------------------------------------------------------------------------
# `make eval`: one trained run: base, GRPO and the whole-call stage, with each prompting.

def stage_prompting(config):
    """The prompting a whole-call model trained with (calls.moves): planned DOGA or the classifier's."""
    return "doga_planned" if config.calls.moves == "plan" else "doga"


def whole_call_stage(run_dir):
    """(<run>/calls/final, its recorded config) when make train's whole-call stage finished in `run_dir`, else None.
    A stage trained from another model than <run>/final (left by an earlier make train) is refused."""
    folder = os.path.join(run_dir, "calls", "final")
    recorded = recorded_config(folder)
    if recorded is None:
        return None
    with open(os.path.join(folder, RUN_RECORD), encoding="utf-8") as handle:
        started_from = json.load(handle)["base_model"]["fingerprint"]
    if started_from != weights_fingerprint(os.path.join(run_dir, "final")):
        raise ValueError(f"{folder}: trained from another model than {run_dir}/final (left by an earlier run?): "
                         f"remove {os.path.dirname(folder)} and run its stage again (make train RESUME=1)")
    return folder, recorded


def evaluate_run(config_path, run_dir, data_dir, out_dir, settings, base_dir=None, judge_dir=None,
                 promptings=("static", "doga", "doga_planned"), seed_runs=()):
    """`make eval`: the base model and the GRPO policy of `run_dir`, each with every prompting, the whole-call stage
    (`<run>/calls`, when make train ran it) with the prompting it trained with, then the reference rows.
    `seed_runs`: more runs of the same recipe with other seeds (`make seeds`), each measured as
    `grpo-seed<N>/<prompting>` and `calls-seed<N>/<prompting>`; the report adds their mean (report.seed_table)."""
    started = time.time()
    # The run's own reward weights and lengths, as it recorded them; a config file only for a run without one.
    config = recorded_config(os.path.join(run_dir, "final")) or load_config(config_path)
    base_dir = base_dir or os.path.join(run_dir, "base")
    for folder in (base_dir, os.path.join(run_dir, "final"), os.path.join(run_dir, "scripts")):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder}: missing (run `make train` first)")
    train_calls = load_corpus(os.path.join(data_dir, "train.jsonl"))
    test_calls = load_corpus(os.path.join(data_dir, "test.jsonl"))
    setup = make_eval_setup(config, settings, train_calls, test_calls, base_dir, judge_dir=judge_dir)
    library = ScriptLibrary.load(os.path.join(run_dir, "scripts"))
    systems = {}
    for model_name, model_dir in (("base", base_dir), ("grpo", os.path.join(run_dir, "final"))):
        for prompting in promptings:
            systems[f"{model_name}/{prompting}"] = evaluate_system(f"{model_name}/{prompting}", model_dir, library,
                                                                   prompting, setup, out_dir)
    # The whole-call stage of each run (make train's calls_grpo.py), with the prompting it trains with.
    stages = [("", run_dir)]
    for seed_run in seed_runs:
        recorded_seed = recorded_config(os.path.join(seed_run, "final"))
        if recorded_seed is None:
            raise FileNotFoundError(f"{seed_run}/final: no finished GRPO run here (run `make seeds` first)")
        for prompting in promptings:
            name = f"grpo-seed{recorded_seed.grpo.seed}/{prompting}"
            systems[name] = evaluate_system(name, os.path.join(seed_run, "final"), library, prompting, setup, out_dir)
        stages.append((f"-seed{recorded_seed.grpo.seed}", seed_run))
    for suffix, run in stages:
        if stage := whole_call_stage(run):
            folder, recorded_calls = stage
            prompting = stage_prompting(recorded_calls)
            name = f"calls{suffix}/{prompting}"
            systems[name] = evaluate_system(name, folder, library, prompting, setup, out_dir)
    references = reference_rows(setup, library, out_dir)
    curves = {"grpo": {"grpo": read_jsonl(os.path.join(run_dir, "metrics.jsonl"))},
              "pretrain": {"base": read_jsonl(os.path.join(base_dir, "metrics.jsonl"))}}
    recorded = os.path.exists(os.path.join(run_dir, "final", "run.json"))
    meta = {"run": run_dir, "config": "recorded by the run" if recorded else config_path or "config.py's defaults",
            "data": data_dir, **asdict(settings),
            "turns": len(setup.turns), "judge": judge_dir, "wall_seconds": round(time.time() - started, 1)}
    write_report(out_dir, f"AI-Salesman evaluation of {run_dir}", systems, curves, meta, references)
    return systems

# ----------------------------------------------------------------------------------------------
# CLI


def main(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate one trained run: base vs GRPO, each with "
                                                 "static, DOGA and planned DOGA prompting.")
    parser.add_argument("--config", default=None, help="used only when the run recorded no config (<run>/final/"
                                                       "run.json); default: config.py's defaults")
    parser.add_argument("--run", default="runs/default", help="run folder with base/, final/ and scripts/")
    parser.add_argument("--base", default=None, help="base model folder (default: <run>/base)")
    parser.add_argument("--data", default="data", help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--out", default="reports/default")
    parser.add_argument("--judge", default=None, help="local instruct checkpoint folder grading replies 1-10")
    parser.add_argument("--seed-runs", nargs="*", default=(), help="runs of the same recipe with other seeds (make "
                                                                   "seeds): each GRPO model and its calls/ stage "
                                                                   "measured, and their mean")
    for field in EvalSettings.__dataclass_fields__.values():
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default,
                            choices=CUSTOMERS if field.name == "customers" else None)
    parser.add_argument("--search-plans", action="store_true", help="choose the best scripted plans on validation "
                        "customers, print them and their conversion on validation and test customers, and exit")
    args = parser.parse_args(argv)
    try:
        settings = EvalSettings(**{f: getattr(args, f) for f in EvalSettings.__dataclass_fields__})
        if args.search_plans:
            rows, chosen = search_plan_rows(settings)
            for family, plan in chosen.items():
                print(f"best {family} plan: {plan!r}\n  {plan.describe()}")
            for (name, customers), loop in rows.items():
                c = loop["conversion"]
                print(f"{name:32s} {customers:10s} conversion {c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}] "
                      f"of {c['n']}, hang-up {loop['hang_up']['value']:.3f}, turns {loop['turns']['value']:.1f}")
            return
        evaluate_run(args.config, args.run, args.data, args.out, settings, args.base, args.judge,
                     seed_runs=args.seed_runs)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}")


if __name__ == "__main__":
    main()
