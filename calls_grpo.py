"""GRPO over whole calls, rewarded by how the customer decides: the training stage after grpo.py (docs/design.md,
"GRPO over whole calls"); `make train` runs it, `make ablations` trains its variants.

The paper's reward (reward.py) judges one turn at a time against the reply a good salesperson gave there:
imitation. Here the policy plays whole calls against the simulated customer and learns from how they end.
One step:

  1. `groups_per_step` groups of `calls_per_group` calls. Every call of a group meets the same customer: the
     same product, persona (simulate.make_persona, the *training* pool: no validation or test customer) and
     customer seed, so the calls of a group differ only in what the policy samples (`step_customers`);
  2. every live call of the step is advanced together, one batched generation per round
     (model.generate_completions at the config's temperature); each answer continues the call's DOGA prompt
     (doga.DogaAgent.prompt: DOGA's outline before every salesperson turn, as the agent prompts; its move the
     best scripted plan's, `calls.moves`), and the customer hears its reply (`heard`, the one place an answer is
     parsed) (`play`). A reply the call already heard word for word is not said again: the agent says the
     outline's line instead (doga.DogaAgent.say), and that turn, not the policy's words, has no answer to learn
     from;
  3. rewards. Session: OUTCOME_REWARD of the call's outcome. Turn: the reference-free terms of the composite
     reward, weighted as config.reward weighs them (`turn_rewards`): a played turn has no target reply, so
     `similarity` and `bayes` (both measured against one) have nothing to compare with;
  4. advantages, each level normalised within its group and then combined (`combine_advantages`): the
     session advantage of a call goes to every answer of it, the turn advantage is the answer's turn reward
     normalised over all the group's answers;
  5. grpo.grpo_loss on the answers' tokens only (each answer a completion of its own prompt: the system
     prompt, the outlines and the customer's words carry no loss), clipped, with the k3 KL to the frozen
     ref_model, accumulated over passes of whole calls (each call's prompts run as one sequence: an answer's
     prompt is the beginning of the next one's), then one optimizer step (`update`).

Runs, like grpo.py's: run.json (the `calls` and `reward` sections, the base model, the corpus, the script
library), the lock, checkpoints and exact resume (runs.py), metrics.jsonl, `--audit` (one line per call: the
call as played, every answer's rewards, advantages and ratios).

Simplified, and why:
* One update per batch of calls (grpo.py's num_iterations = 1), so pi_old is the current policy and its
  log-probs are the detached ones of the training pass (ratio exactly 1 in the loss).
* One process. A step's calls are sampled from one generator seeded by the step, so a call's answers depend on
  which calls share its rounds (grpo.py seeds each group alone); a step is still a function of the weights and
  the step number, which is what exact resume needs.
* A truncated answer keeps its gradient (grpo.py masks it): the customer heard it and the call went on with it,
  so its session advantage is real; its turn reward's format term is 0.
* Every answer of a call gets the same session advantage: no discounting, no value model, no credit assignment
  inside a call beyond the turn reward.
"""

import argparse
import json
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from config import ConfigError, load_config
from corpus import CorpusError, load_corpus
from doga import DogaAgent, ScriptLibrary
from evaluate import closed_loop_metrics
from files import MetricsLog, fingerprint, truncate_jsonl
from grpo import compute_advantages, grpo_loss, timed
from model import (
    CheckpointError,
    Continuations,
    PrefillCache,
    continuation_logprobs,
    generate_completions,
    load_pretrained,
    load_with_tokenizer,
)
from plans import BEST_PLAN
from reward import faithfulness_score
from runs import RunLock, RunLocked, claim_run_folder, interruption_note, run_identity, save_checkpoint
from sales import INCOHERENT, WORD, ClaimCheck, check_claims, load_world
from simulate import Call, make_persona
from tokenizer import split_thought
from training import learning_rate_at, load_trainer_state, make_optimizer, resolve_device


# The session reward: how the customer decided. A sale is the goal (1) and a polite no earns nothing (0). A
# hang-up is worse than a no: the customer was annoyed enough to end the call (the salesperson pushed, said
# something false or made no sense). It costs half of what a sale earns, not all of it, so that the stage learns
# first of all to sell: at -1, a move that wins half its customers and loses the other half to a hang-up would be
# worth no more than a safe no.
OUTCOME_REWARD = {"converted": 1.0, "declined": 0.0, "hung_up": -0.5}
# The turn reward's terms: those of reward.py that judge a reply on its own. `format` (one thought block, then a
# reply, not truncated); `faithfulness` (reward.faithfulness_score against a reference that states nothing: a
# wrong fact or a forbidden promise costs, a true one or none scores the full 1, as there is no reference fact to
# cover); `manager` (1 when the Manager labels the move on-stage, 0 for an off-stage move, a mistake or words
# that are not speech: with no reference move, every on-stage move is the right kind).
TURN_TERMS = ("format", "faithfulness", "manager")
NOTHING_TO_COVER = ClaimCheck(0, 0, [], [], frozenset(), frozenset())


# ----------------------------------------------------------------------------------------------
# The customers of a step, and the answer the customer hears.

def step_customers(step, settings):
    """(call id, product, persona, customer seed) for every call of a step, group after group. A group's calls
    share the product, the persona and the customer's seed (each call's customer gets its own random.Random of
    that seed): only the policy's samples differ between them. A pure function of the step, so a resumed
    run meets the customers an uninterrupted one would have."""
    world = load_world()
    products = [product for domain in sorted(world.products) for product in world.products[domain]]
    jobs = []
    for group in range(settings.groups_per_step):
        key = f"calls:{settings.seed}:{step}:{group}"
        rng = random.Random(key)
        product = rng.choice(products)
        persona = make_persona(product["domain"], product, rng, pool="training")
        jobs += [(f"step{step}-group{group}-call{number}", product, persona, f"{key}:customer")
                 for number in range(settings.calls_per_group)]
    return jobs


def heard(agent, text, view):
    """An answer of the policy -> (thought, the reply the customer hears, note, well formed). The one place this
    module reads the agent's answers: doga.DogaAgent.say parses them (tokenizer.split_thought), says a reply written
    with slots with the values of `view`, the call so far (simulate.Call.view), and never says a reply twice in a
    call (the outline's line instead, noted `from_outline`)."""
    thought, reply, note = agent.say(text, view)
    return thought, reply, note, split_thought(text).well_formed


# ----------------------------------------------------------------------------------------------
# Playing: every live call of the step answered in one batched generation per round.

@dataclass
class Answer:
    call: int              # the call's index in the step (group = call // calls_per_group)
    turn_index: int        # its salesperson turn's index in the call's turns
    prompt_ids: list       # the DOGA prompt it continues
    completion_ids: list   # what the policy generated (its EOS included): the tokens that get the loss
    text: str              # the completion decoded
    truncated: bool        # no EOS within max_completion_length
    well_formed: bool


@torch.no_grad()
def play(policy, agent, tokenizer, jobs, settings, generator, timings=None):
    """Play every job's call to its end -> (simulate.Call per job, Answer per salesperson turn said in the policy's
    words, in the order spoken: a turn said from the outline in place of a repeat has none). Each round prompts
    every live call (DOGA), generates all their answers in one batch (model.generate_completions, sampled at
    settings.temperature from `generator`; a call's prompt is prefilled after its last one, model.PrefillCache)
    and steps each call with the reply its customer hears. timings: phase -> seconds, added to
    (bench/calls_step.py reads them)."""
    policy.eval()
    calls = [Call(product, persona, random.Random(seed), call_id, settings.max_turns)
             for call_id, product, persona, seed in jobs]
    answers, cache = [], PrefillCache()           # each call's next prompt is prefilled after its last one
    while live := [n for n, call in enumerate(calls) if not call.over]:
        views = [calls[n].view() for n in live]
        cache.keep(live)
        with timed(timings, "DOGA"):
            prompts = [agent.prompt(view)[0] for view in views]
        with timed(timings, "generate"):
            generated = generate_completions(policy, prompts, settings.max_completion_length, tokenizer.eos_id,
                                             tokenizer.pad_id, settings.temperature, settings.top_p, generator,
                                             cache, live)
        with timed(timings, "customer"):
            for n, view, prompt, (ids, truncated) in zip(live, views, prompts, generated):
                text = tokenizer.decode(ids, skip_special_tokens=True)
                thought, reply, note, well_formed = heard(agent, text, view)
                if not note.get("from_outline"):  # a reply said in place of a repeated one is no token of the policy
                    answers.append(Answer(n, len(view["turns"]), prompt, ids, text, truncated, well_formed))
                calls[n].step(thought, reply, note)
    return calls, answers


# ----------------------------------------------------------------------------------------------
# Rewards and advantages.

def session_rewards(records):
    """OUTCOME_REWARD of each played call (simulate.Call.record) -> float32 [calls]."""
    return torch.tensor([OUTCOME_REWARD[record["outcome"]] for record in records])


def turn_rewards(records, answers, reward_config):
    """The turn reward of each answer, judged on the reply as the customer heard it (every reply is heard,
    well formed or not) -> {term: float32 [answers]} for TURN_TERMS and "total", weighted by config.reward's
    weights of those terms. The Manager's label of the played turn decides `manager`."""
    terms = {term: torch.zeros(len(answers)) for term in TURN_TERMS}
    for row, answer in enumerate(answers):
        record = records[answer.call]
        turn = record["turns"][answer.turn_index]
        claims = check_claims(turn["text"], record["product"], record["customer"]["visible"])
        terms["format"][row] = float(answer.well_formed and not answer.truncated)
        terms["faithfulness"][row] = faithfulness_score(claims, NOTHING_TO_COVER)
        terms["manager"][row] = float(turn["labels"]["on_stage"])
    terms["total"] = sum(getattr(reward_config, term) * terms[term] for term in TURN_TERMS)
    return terms


def combine_advantages(session, turn, answer_calls, calls_per_group, session_weight, turn_weight):
    """Per-answer advantages from the two levels, each normalised within its group (grpo.compute_advantages:
    centred, divided by the unbiased std + 1e-4).

    session [calls]: each call's session reward, calls group after group; turn [answers]: each answer's turn
    reward; answer_calls [answers]: the call of each answer. The session advantage is normalised over the
    group's calls and given to every answer of the call; the turn advantage over all the group's answers (a
    group with a single answer gets 0). Returns (advantage [answers], session advantage [calls], turn advantage
    [answers]): advantage = session_weight * session advantage of its call + turn_weight * turn advantage."""
    session_advantage = compute_advantages(session.view(-1, calls_per_group), "group").flatten()   # [calls]
    groups = answer_calls // calls_per_group                                                       # [answers]
    turn_advantage = torch.zeros_like(turn)
    for group in groups.unique():
        rows = groups == group
        if rows.sum() > 1:
            turn_advantage[rows] = compute_advantages(turn[rows][None], "group")[0]
    return (session_weight * session_advantage[answer_calls] + turn_weight * turn_advantage,
            session_advantage, turn_advantage)


# ----------------------------------------------------------------------------------------------
# The update: the clipped objective with k3 KL on the answers' tokens, grpo.py's loss.

def answer_batch(answers, pad_id, device=None):
    """The answers as model.Continuations: the completions [A, Lc] right-padded after their prompts, each prompt
    stored once and a call's earlier prompts only as the beginning of its latest (a DOGA prompt is the one
    before it, then the reply as written, the customer's words and the next outline: a call's answers cost about
    one pass over the call, not one per answer). Its mask is the loss mask: 1 exactly on the tokens the policy
    generated for each answer (its EOS included); everything the answer was prompted with is prompt, which no
    loss reaches."""
    return Continuations.from_lists([a.prompt_ids for a in answers], [a.completion_ids for a in answers],
                                    pad_id, device)


def update(policy, ref_model, optimizer, answers, advantages, settings, lr, pad_id, timings=None):
    """One optimizer step on all answers of a step. The answers go through the policy in passes of whole calls
    (so that a call's prompts share one pass: answer_batch), of about `answers_per_pass` answers each; each
    pass's loss is its share of the step's loss (grpo.grpo_loss with the step's answer and token counts), so the
    summed gradients are those of one pass over everything. Returns (loss, grad_norm, stats: kl, clipped,
    entropy [answers, Lc] and mask)."""
    device = policy.lm_head_weight.device
    passes = []
    for call in sorted({a.call for a in answers}):
        rows = [i for i, a in enumerate(answers) if a.call == call]
        if passes and len(passes[-1]) + len(rows) <= settings.answers_per_pass:
            passes[-1] += rows
        else:
            passes.append(rows)
    batches = [answer_batch([answers[i] for i in rows], pad_id, device) for rows in passes]
    num_tokens = sum(len(a.completion_ids) for a in answers)
    with timed(timings, "ref_model"), torch.no_grad():
        refs = [continuation_logprobs(ref_model, batch, batch.mask, settings.temperature) if settings.beta > 0
                else None for batch in batches]
    for group in optimizer.param_groups:
        group["lr"] = lr
    width = max(len(a.completion_ids) for a in answers)
    stats = {key: torch.zeros(len(answers), width) for key in ("kl", "ratio", "clipped", "entropy", "mask")}
    total = 0.0
    policy.train()
    optimizer.zero_grad(set_to_none=True)
    with timed(timings, "policy forward + backward"):
        for rows, batch, ref in zip(passes, batches, refs):
            logprobs, entropy = continuation_logprobs(policy, batch, batch.mask, settings.temperature,
                                                      return_entropy=True)                     # [n, Lc]
            loss, step_stats = grpo_loss(logprobs, logprobs.detach(), ref, advantages[rows].to(device), batch.mask,
                                         settings, len(answers), num_tokens)
            loss.backward()
            total += loss.item()
            columns = batch.mask.shape[1]
            for key, values in (*step_stats.items(), ("entropy", entropy.detach()), ("mask", batch.mask)):
                stats[key][rows, :columns] = values.float().cpu()
    with timed(timings, "optimizer"):
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), settings.max_grad_norm)
        optimizer.step()
    return total, grad_norm, stats


@dataclass
class StepResult:
    records: list            # the played calls (simulate.Call.record), group after group
    answers: list            # Answer per salesperson turn said in the policy's words
    session: torch.Tensor    # [calls] session rewards
    turn: dict               # term -> [answers] turn reward terms (turn_rewards)
    advantages: torch.Tensor  # [answers]
    session_advantage: torch.Tensor  # [calls]
    turn_advantage: torch.Tensor     # [answers]
    loss: float
    grad_norm: torch.Tensor
    stats: dict              # update()'s per-token stats


def calls_step(policy, ref_model, optimizer, agent, tokenizer, config, step, lr, timings=None):
    """One step: play the step's calls, reward them, one update. Returns a StepResult."""
    settings = config.calls
    generator = torch.Generator(device=policy.lm_head_weight.device).manual_seed(settings.seed * 1_000_003 + step)
    calls, answers = play(policy, agent, tokenizer, step_customers(step, settings), settings, generator, timings)
    records = [call.record() for call in calls]
    with timed(timings, "reward"):
        session = session_rewards(records)
        turn = turn_rewards(records, answers, config.reward)
        answer_calls = torch.tensor([a.call for a in answers])
        advantages, session_advantage, turn_advantage = combine_advantages(
            session, turn["total"], answer_calls, settings.calls_per_group, settings.session_weight,
            settings.turn_weight)
    loss, grad_norm, stats = update(policy, ref_model, optimizer, answers, advantages, settings, lr,
                                    tokenizer.pad_id, timings)
    return StepResult(records, answers, session, turn, advantages, session_advantage, turn_advantage, loss,
                      grad_norm, stats)


# ----------------------------------------------------------------------------------------------
# What a step's calls do: metrics.jsonl, the audit.

def corpus_bigrams(calls):
    """The word pairs (sales.WORD, lower-cased, adjacent) of the corpus's salesperson turns."""
    return {pair for call in calls for turn in call["turns"] if turn["role"] == "sales"
            for pair in word_pairs(turn["text"])}


def word_pairs(text):
    words = WORD.findall(text.lower())
    return list(zip(words, words[1:]))


def repeated_moves(records):
    """The share of salesperson replies whose move (the Manager's intent) the call already made; words that
    are no move (INCOHERENT) repeat nothing."""
    replies = repeats = 0
    for record in records:
        made = set()
        for turn in (t for t in record["turns"] if t["role"] == "sales"):
            replies += 1
            repeats += turn["intent"] != INCOHERENT and turn["intent"] in made
            made.add(turn["intent"])
    return repeats / max(replies, 1)


def step_metrics(step, result, settings, bigrams, lr, started):
    """The per-step record of metrics.jsonl: how the calls ended, what their replies do, the reward terms, the
    update. `corpus_bigram_share` is the median over replies of the share of a reply's word pairs found in the
    corpus's salesperson turns (replies of fewer than two words have no pair and are left out): a fall shows
    the policy drifting away from the world's language; it reads the answers' replies only, not the outline's
    lines said in place of a repeat (`from_outline_per_call`)."""
    loop = closed_loop_metrics(result.records)
    replies = [result.records[a.call]["turns"][a.turn_index]["text"] for a in result.answers]
    shares = [sum(pair in bigrams for pair in pairs) / len(pairs) for pairs in map(word_pairs, replies) if pairs]
    mask = result.stats["mask"].bool()
    G = settings.calls_per_group
    record = {
        "step": step, "calls": len(result.records), "answers": len(result.answers),
        "conversion": loop["conversion"]["value"], "hang_up": loop["hang_up"]["value"],
        "turns_per_call": loop["turns"]["value"], "repeated_moves": repeated_moves(result.records),
        "repeated_reply": loop["repeated_reply"]["value"],
        "from_outline_per_call": loop["from_outline_per_call"]["value"],
        "corpus_bigram_share": statistics.median(shares) if shares else None,
        "unsupported_facts_per_call": loop["unsupported_facts_per_call"]["value"],
        "session_reward_mean": result.session.mean().item(),
        "turn_reward_mean": result.turn["total"].mean().item(),
        **{f"reward_{term}": result.turn[term].mean().item() for term in TURN_TERMS},
        "zero_spread_groups": int((result.session.view(-1, G).std(dim=1) < 1e-6).sum()),
        "truncated_fraction": sum(a.truncated for a in result.answers) / len(result.answers),
        "completion_len_mean": sum(len(a.completion_ids) for a in result.answers) / len(result.answers),
        "kl": result.stats["kl"][mask].mean().item(),
        "clip_fraction": result.stats["clipped"][mask].mean().item(),
        "entropy": result.stats["entropy"][mask].mean().item(),
        "loss": result.loss, "grad_norm": result.grad_norm.item(), "lr": lr,
        "calls_per_s": len(result.records) / (time.time() - started),
    }
    return record


def write_audit(audit_file, step, result, settings):
    """One line per call: the call as played (simulate.Call.record), its session reward and advantage, and for
    each answer what was generated, its turn reward terms, its advantages and its ratios."""
    by_call = {}
    for row, answer in enumerate(result.answers):
        mask = result.stats["mask"][row].bool()
        ratios = result.stats["ratio"][row][mask]
        by_call.setdefault(answer.call, []).append({
            "turn_index": answer.turn_index, "completion": answer.text, "truncated": answer.truncated,
            "rewards": {key: round(values[row].item(), 6) for key, values in result.turn.items()},
            "turn_advantage": round(result.turn_advantage[row].item(), 6),
            "advantage": round(result.advantages[row].item(), 6),
            "ratio": {"mean": ratios.mean().item(), "min": ratios.min().item(), "max": ratios.max().item()}})
    for n, record in enumerate(result.records):
        audit_file.write(json.dumps({
            "step": step, "group": n // settings.calls_per_group, "call_id": record["id"],
            "outcome": record["outcome"], "session_reward": result.session[n].item(),
            "session_advantage": round(result.session_advantage[n].item(), 6), "answers": by_call.get(n, []),
            "call": record}) + "\n")
    audit_file.flush()


# ----------------------------------------------------------------------------------------------
# The run.

def run_record(config, model_dir, data_dir, library_dir):
    """What a calls run is made of (runs.py's run.json): the `calls` and `reward` sections, the base model, the
    corpus and the script library (always: every prompt carries DOGA's outlines)."""
    identity = run_identity(config, model_dir, data_dir)
    identity["config"] = {"calls": asdict(config.calls), "reward": asdict(config.reward)}
    identity["library"] = {"path": os.path.abspath(library_dir), "fingerprint": fingerprint(library_dir)}
    return identity


def stage_agent(policy, tokenizer, library, settings):
    """The DOGA agent the policy plays calls as: outlines with the moves `settings.moves` names (the best scripted
    plan's or the classifier's), within the stage's prompt and answer lengths."""
    return DogaAgent(policy, tokenizer, library, max_prompt_length=settings.max_prompt_length,
                     max_new_tokens=settings.max_completion_length,
                     moves=BEST_PLAN if settings.moves == "plan" else None)


def train(config, model_dir, data_dir, out_dir, library_dir, resume=False, audit=False):
    """GRPO over whole calls from the model in `model_dir` (the frozen ref_model too) into `out_dir`, prompting
    with the DOGA script library in `library_dir`; `data_dir`/train.jsonl gives the corpus's word pairs. The
    run holds the lock on `out_dir` (runs.RunLock) from start to end."""
    with RunLock(out_dir):
        return _train(config, model_dir, data_dir, out_dir, library_dir, resume, audit)


def _train(config, model_dir, data_dir, out_dir, library_dir, resume, audit):
    settings = config.calls
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    identity = run_record(config, model_dir, data_dir, library_dir)
    checkpoint = claim_run_folder(out_dir, identity, resume)
    ref_model, tokenizer = load_with_tokenizer(model_dir, device=device)
    ref_model.eval().requires_grad_(False)
    policy = load_pretrained(checkpoint or model_dir, device=device)
    optimizer = make_optimizer(policy, settings.learning_rate, settings.weight_decay)
    start_step = load_trainer_state(checkpoint, optimizer) if checkpoint else 0
    if checkpoint:
        print(f"resuming from {checkpoint} at step {start_step}")
    agent = stage_agent(policy, tokenizer, ScriptLibrary.load(library_dir), settings)
    bigrams = corpus_bigrams(load_corpus(os.path.join(data_dir, "train.jsonl")))

    log = MetricsLog(os.path.join(out_dir, "metrics.jsonl"), resume_step=start_step - 1 if checkpoint else None)
    audit_path = os.path.join(out_dir, "audit.jsonl")
    if audit and checkpoint:
        truncate_jsonl(audit_path, start_step - 1)
    audit_file = open(audit_path, "a" if checkpoint else "w") if audit else None
    progress = tqdm(range(start_step, settings.steps), desc="calls grpo", initial=start_step, total=settings.steps)
    try:
        for step in progress:
            started = time.time()
            # Constant after warmup (min ratio 1), as grpo.py's: a longer run continues a shorter one exactly.
            lr = learning_rate_at(step, settings.steps, settings.learning_rate, settings.warmup_steps, 1.0)
            result = calls_step(policy, ref_model, optimizer, agent, tokenizer, config, step, lr)
            record = step_metrics(step, result, settings, bigrams, lr, started)
            log.write(record)
            progress.set_postfix(conversion=f"{record['conversion']:.2f}", hang_up=f"{record['hang_up']:.2f}",
                                 kl=f"{record['kl']:.4f}")
            if audit_file:
                write_audit(audit_file, step, result, settings)
            if settings.save_steps and (step + 1) % settings.save_steps == 0:
                save_checkpoint(os.path.join(out_dir, "checkpoints", f"step-{step + 1:06d}"),
                                policy, tokenizer, identity, optimizer, step + 1)
    finally:
        if audit_file:
            audit_file.close()
    save_checkpoint(os.path.join(out_dir, "final"), policy, tokenizer, identity)
    return policy


def main():
    parser = argparse.ArgumentParser(description="GRPO over whole calls, rewarded by the customer's decision.")
    parser.add_argument("--config", help="a config file (configs/); its `calls` section; default: config.py's")
    parser.add_argument("--model", required=True, help="the policy to start from (HF layout, with tokenizer.json); "
                                                       "also the frozen ref_model of the KL")
    parser.add_argument("--library", required=True, help="DOGA script library (doga.py build): every prompt "
                                                         "carries its outlines, as the agent prompts")
    parser.add_argument("--data", default="data", help="folder with train.jsonl (the corpus's word pairs)")
    parser.add_argument("--out", required=True, help="run folder: metrics.jsonl, checkpoints/, final/")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--audit", action="store_true", help="write every call, answer, reward, advantage and "
                                                             "ratio to <out>/audit.jsonl")
    parser.add_argument("--seed", type=int, help="calls.seed instead of the config's (the stage of another GRPO "
                                                 "seed: make seeds); recorded in the run record like any knob")
    args = parser.parse_args()
    config = None
    try:
        config = load_config(args.config)
        if args.seed is not None:
            if args.seed < 0:
                raise ConfigError(f"--seed must be >= 0, got {args.seed}")
            config.calls.seed = args.seed
        train(config, args.model, args.data, args.out, args.library, resume=args.resume, audit=args.audit)
    except (ConfigError, CorpusError, CheckpointError, RunLocked, ValueError, OSError) as error:
        raise SystemExit(f"error: {error}")
    except KeyboardInterrupt:
        print(f"\n{interruption_note(args.out, config and config.calls.steps, False)}", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
