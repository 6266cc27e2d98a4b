"""GRPO over whole calls (calls_grpo.py): the loss reaches the answers' tokens and nothing else, the two levels of
advantage match a hand-computed case, a group whose calls all end alike teaches nothing, a resumed run equals an
uninterrupted one, and the played calls are the calls simulate.run_call plays on the same replies with the
group's customer.

A tiny random model speaks gibberish, so its calls end quickly (customers hang up); the tests need the mechanics,
not good calls.
"""
import copy
import dataclasses
import json
import math
import os
import random
import statistics

import pytest
import torch

import calls_grpo
from config import CallsConfig, Config, RewardConfig
from corpus import write_corpus
from doga import DogaAgent, ScriptLibrary
from model import load_pretrained, save_pretrained, sequence_logprobs
from sales import INCOHERENT, load_world
from simulate import Call, Salesperson, make_persona, run_call, simulate_call
from tiny import tiny_chat_model


SETTINGS = CallsConfig(steps=2, groups_per_step=2, calls_per_group=2, max_turns=4, max_completion_length=8,
                       max_prompt_length=2048, answers_per_pass=3, learning_rate=1e-3, warmup_steps=1, save_steps=1,
                       beta=0.04, device="cpu")


@pytest.fixture(scope="module", autouse=True)
def torch_kernels():
    """Log-probs on the kernels' PyTorch engine: interpreting the Triton kernels on a CPU would take most of
    these tests' time, and tests/test_kernels.py checks that both engines agree."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERNELS_BACKEND", "torch")
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("calls")
    calls = [simulate_call(i, seed=5) for i in range(12)]
    write_corpus(str(root / "train.jsonl"), calls)
    tokenizer, model = tiny_chat_model(calls, vocab_size=800)   # a larger vocabulary: shorter prompts, faster
    save_pretrained(model, str(root / "base"), tokenizer)
    ScriptLibrary.build(calls, progress=False).save(str(root / "scripts"))
    return root, tokenizer


def agent_for(model, tokenizer, root, settings=SETTINGS):
    return DogaAgent(model, tokenizer, ScriptLibrary.load(str(root / "scripts")),
                     max_prompt_length=settings.max_prompt_length, max_new_tokens=settings.max_completion_length)


def played(setup, model, settings=SETTINGS, step=0):
    root, tokenizer = setup
    generator = torch.Generator().manual_seed(step)
    return calls_grpo.play(model, agent_for(model, tokenizer, root, settings), tokenizer,
                           calls_grpo.step_customers(step, settings), settings, generator)


def test_the_loss_reaches_exactly_the_tokens_of_each_answer(setup):
    """The gradient of update() equals, in float64, the gradient of the clipped objective written by hand over
    whole prompt + answer sequences (model.sequence_logprobs, another path) with a loss on the positions after
    each prompt only: a prompt token in the mask (the outline, a customer's words, the open assistant turn) or
    an answer token out of it changes the gradient."""
    root, tokenizer = setup
    policy = load_pretrained(str(root / "base"), dtype=torch.float64)
    settings = dataclasses.replace(SETTINGS, beta=0.0, max_grad_norm=1e9, loss_type="dapo")
    calls, answers = played(setup, policy, settings)
    records = [call.record() for call in calls]
    for answer in answers:                      # what the prompt holds and what the customer heard
        prompt = tokenizer.decode(answer.prompt_ids)
        before = records[answer.call]["turns"][:answer.turn_index]
        assert all(turn["text"] in prompt for turn in before if turn["role"] == "customer")
        assert prompt.endswith("<|im_start|>assistant\n") and "Outline:" in prompt.rsplit("<|im_start|>user", 1)[-1]
        assert tokenizer.decode(answer.completion_ids, skip_special_tokens=True) == answer.text
        record = records[answer.call]
        so_far = {**record, "turns": record["turns"][:answer.turn_index]}
        said = calls_grpo.heard(agent_for(policy, tokenizer, root, settings), answer.text, so_far)
        assert record["turns"][answer.turn_index]["text"] == said[1] and not said[2]
    # A call's earlier prompts begin its later ones: the update stores them only as those beginnings.
    assert calls_grpo.answer_batch(answers, tokenizer.pad_id).prompt_ids.shape[0] < len(answers)
    advantages = torch.linspace(-1.0, 1.5, len(answers), dtype=torch.float64)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
    calls_grpo.update(policy, policy, optimizer, answers, advantages, settings, 0.0, tokenizer.pad_id)
    got = {name: p.grad.clone() for name, p in policy.named_parameters()}

    reference = load_pretrained(str(root / "base"), dtype=torch.float64)
    width = max(len(a.prompt_ids) + len(a.completion_ids) for a in answers)
    ids = torch.full((len(answers), width), tokenizer.pad_id)
    attention, answer_positions = torch.zeros_like(ids), torch.zeros_like(ids)
    for row, a in enumerate(answers):                                     # right-padded full sequences
        sequence = a.prompt_ids + a.completion_ids
        ids[row, :len(sequence)] = torch.tensor(sequence)
        attention[row, :len(sequence)] = 1
        answer_positions[row, len(a.prompt_ids):len(sequence)] = 1
    logprobs = sequence_logprobs(reference, ids, attention, answer_positions).double()     # [A, T]
    # At ratio 1 the clipped term's gradient is -A * grad log pi; dapo divides by all answer tokens.
    loss = -(advantages[:, None] * logprobs * answer_positions).sum() / answer_positions.sum()
    loss.backward()
    for name, p in reference.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-5, atol=1e-9, msg=name)
    assert max(g.abs().max().item() for g in got.values()) > 1e-6


def test_advantages_match_a_hand_computed_case():
    """Two groups of two calls. Session rewards 1, 0 | -0.5, -0.5 (group 1 ends alike: session advantage 0);
    turn rewards per call [1, 2], [0] | [1, 1, 1], [1] (group 1's answers all alike: turn advantage 0)."""
    session = torch.tensor([1.0, 0.0, -0.5, -0.5], dtype=torch.float64)
    turn = torch.tensor([1.0, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    answer_calls = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    advantage, session_advantage, turn_advantage = calls_grpo.combine_advantages(session, turn, answer_calls, 2,
                                                                                 0.5, 2.0)

    def normalised(values):                     # centred, / (unbiased std + 1e-4): TRL's group scaling
        mean, std = statistics.mean(values), statistics.stdev(values)
        return [(v - mean) / (std + 1e-4) for v in values]
    expected_session = normalised([1.0, 0.0]) + [0.0, 0.0]
    expected_turn = normalised([1.0, 2.0, 0.0]) + [0.0] * 4
    assert expected_session[0] == pytest.approx(0.5 / (math.sqrt(0.5) + 1e-4))   # 1 - mean over the std
    torch.testing.assert_close(session_advantage, torch.tensor(expected_session, dtype=torch.float64))
    torch.testing.assert_close(turn_advantage, torch.tensor(expected_turn, dtype=torch.float64))
    expected = [0.5 * expected_session[c] + 2.0 * t for c, t in zip([0, 0, 1, 2, 2, 2, 3], expected_turn)]
    torch.testing.assert_close(advantage, torch.tensor(expected, dtype=torch.float64))
    assert advantage[3:].abs().max() == 0                  # the group whose calls and turns are all alike


def test_turn_and_session_rewards_of_a_hand_played_call():
    """A call played by hand: the scripted greeting (on-stage, its names true, well formed), then a wrong price
    in the opening (an off-stage move, a number nothing supports), cut off at max_completion_length. The
    turn terms by hand, weighted by config.reward; the session reward ranks a sale above a no above a hang-up."""
    product = load_world().products["home_broadband"][0]
    persona = make_persona(product["domain"], product, random.Random(3))
    call = Call(product, persona, random.Random(4), "by-hand")
    call.step(*Salesperson(product, persona["visible"], random.Random(0), 0.0)(call.view()))
    call.step("Tell the price.", f"The {product['name']} costs $1 a month, the best price you will find.")
    answers = [calls_grpo.Answer(0, 0, [], [], "", truncated=False, well_formed=True),
               calls_grpo.Answer(0, 2, [], [], "", truncated=True, well_formed=True)]
    terms = calls_grpo.turn_rewards([call.record()], answers, RewardConfig(format=2.0, faithfulness=0.5, manager=1.0))
    assert terms["format"].tolist() == [1.0, 0.0]
    assert terms["faithfulness"].tolist() == [1.0, -1.0]     # precision 0 of 1 number: 0 x coverage - (1 - 0)
    assert terms["manager"].tolist() == [1.0, 0.0]           # pricing in the opening skips two stages
    assert terms["total"].tolist() == [2.0 + 0.5 + 1.0, -0.5]
    reward = calls_grpo.OUTCOME_REWARD
    assert reward["converted"] > reward["declined"] > reward["hung_up"] > -reward["converted"]
    outcomes = ["converted", "declined", "hung_up"]
    assert calls_grpo.session_rewards([{"outcome": o} for o in outcomes]).tolist() == [reward[o] for o in outcomes]


def test_calls_that_all_end_alike_teach_nothing(setup, monkeypatch):
    """Every call declined and every turn rewarded alike: zero advantage, and with beta 0 a zero gradient."""
    root, tokenizer = setup
    policy = load_pretrained(str(root / "base"))
    monkeypatch.setattr(calls_grpo, "OUTCOME_REWARD", dict.fromkeys(calls_grpo.OUTCOME_REWARD, 0.0))
    real = calls_grpo.turn_rewards

    def alike(records, answers, reward_config):
        return {key: torch.ones_like(values) for key, values in real(records, answers, reward_config).items()}
    monkeypatch.setattr(calls_grpo, "turn_rewards", alike)
    config = Config(calls=dataclasses.replace(SETTINGS, beta=0.0))
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
    result = calls_grpo.calls_step(policy, copy.deepcopy(policy), optimizer, agent_for(policy, tokenizer, root),
                                   tokenizer, config, 0, 0.0)
    assert len(result.answers) > len(result.records) and result.advantages.abs().max() == 0
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in policy.parameters())


def test_played_calls_are_run_call_on_the_same_replies_with_the_groups_customer(setup):
    """Each played call replayed through simulate.run_call with its replies and its group's customer seed is
    the same call; a group's calls share the product and the persona (a training customer), groups differ."""
    root, tokenizer = setup
    settings = dataclasses.replace(SETTINGS, groups_per_step=3)
    calls, answers = played(setup, load_pretrained(str(root / "base")), settings, step=1)
    jobs = calls_grpo.step_customers(1, settings)
    for call, (call_id, product, persona, seed) in zip(calls, jobs):
        record = call.record()
        replies = iter([(t["thought"], t["text"], {k: t[k] for k in ("from_outline", "model_reply") if k in t})
                        for t in record["turns"] if t["role"] == "sales"])
        assert run_call(product, persona, lambda view: next(replies), random.Random(seed), call_id,
                        settings.max_turns) == record
    world = load_world()
    for group in range(settings.groups_per_step):
        members = jobs[group * settings.calls_per_group:(group + 1) * settings.calls_per_group]
        assert all(job[1:] == members[0][1:] for job in members)
        assert members[0][2]["visible"]["name"].split()[0] in world.personas["first_names"]
    assert len({json.dumps(job[2], sort_keys=True) for job in jobs}) == settings.groups_per_step
    assert len(answers) == sum(sum(t["role"] == "sales" and not t.get("from_outline") for t in call.turns)
                               for call in calls)


def test_a_reply_said_in_place_of_a_repeat_is_heard_and_learnt_from_by_no_answer(setup, monkeypatch):
    """Where the agent says the outline's line in place of a repeated reply (doga.DogaAgent.say), the customer
    hears that line and the turn keeps the note; the policy's words for that turn were never heard, so the
    answers are exactly the other salesperson turns."""
    root, tokenizer = setup
    say = DogaAgent.say

    def replaced_every_second(self, text, view):      # stands in for a repeat on every second salesperson turn
        thought, reply, note = say(self, text, view)
        if sum(turn["role"] == "sales" for turn in view["turns"]) % 2:
            return thought, "A line from the outline.", {"from_outline": True}
        return thought, reply, note

    monkeypatch.setattr(DogaAgent, "say", replaced_every_second)
    settings = dataclasses.replace(SETTINGS, groups_per_step=4)
    calls, answers = played(setup, load_pretrained(str(root / "base")), settings)
    records = [call.record() for call in calls]
    sales = {(n, i) for n, record in enumerate(records) for i, turn in enumerate(record["turns"])
             if turn["role"] == "sales"}
    noted = {(n, i) for n, i in sales if records[n]["turns"][i].get("from_outline")}
    assert noted and all(records[n]["turns"][i]["text"] == "A line from the outline." for n, i in noted)
    assert {(answer.call, answer.turn_index) for answer in answers} == sales - noted


def letter_turn_rewards(records, answers, reward_config):
    """total = the share of 'e' in each answer: gibberish answers differ in it, where the composite terms give
    a random model's answers nearly all the same value (nothing to learn, so resume would be tested on no
    update at all)."""
    total = torch.tensor([a.text.count("e") / max(len(a.text), 1) for a in answers])
    return {**{term: total.clone() for term in calls_grpo.TURN_TERMS}, "total": total}


def test_resume_continues_exactly(setup, tmp_path, monkeypatch):
    root, _ = setup
    config = Config(calls=SETTINGS)
    monkeypatch.setattr(calls_grpo, "turn_rewards", letter_turn_rewards)

    def train(out, resume=False):
        calls_grpo.train(config, str(root / "base"), str(root), str(out), str(root / "scripts"), resume=resume,
                         audit=True)

    def metrics(out):
        with open(out / "metrics.jsonl") as handle:
            return [{k: v for k, v in json.loads(line).items() if k != "calls_per_s"} for line in handle]

    train(tmp_path / "straight")
    real_audit = calls_grpo.write_audit

    def audit_then_crash(audit_file, step, *args):              # step 1 logged, its checkpoint not written
        real_audit(audit_file, step, *args)
        if step == 1:
            raise KeyboardInterrupt("simulated crash during step 2")
    monkeypatch.setattr(calls_grpo, "write_audit", audit_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed")
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["step-000001"]
    monkeypatch.setattr(calls_grpo, "write_audit", real_audit)
    train(tmp_path / "resumed", resume=True)

    straight = metrics(tmp_path / "straight")
    assert metrics(tmp_path / "resumed") == straight and [r["step"] for r in straight] == [0, 1]
    assert (tmp_path / "resumed" / "audit.jsonl").read_text() == (tmp_path / "straight" / "audit.jsonl").read_text()
    a = load_pretrained(str(tmp_path / "straight" / "final")).state_dict()
    b = load_pretrained(str(tmp_path / "resumed" / "final")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The equality means something: both steps learnt, so a resume that lost the optimizer state or the
    # step's customers and samples would have ended elsewhere.
    assert all(r["grad_norm"] > 0 for r in straight) and straight[1]["kl"] > 0
    record = json.loads((tmp_path / "straight" / "run.json").read_text())
    assert record["config"]["calls"] == dataclasses.asdict(SETTINGS) and record["library"] is not None
    for key in ("conversion", "hang_up", "turns_per_call", "repeated_moves", "repeated_reply", "from_outline_per_call",
                "corpus_bigram_share", "unsupported_facts_per_call", "kl", "reward_format", "reward_faithfulness",
                "reward_manager"):
        assert key in straight[0]


def test_repeated_moves_and_corpus_word_pairs():
    """The step's measures of what replies do, on hand-made calls: a move the call already made repeats (words
    that are no move repeat nothing), and word pairs are adjacent words, lower-cased, numbers skipped."""
    def sales(*intents):
        return {"turns": [{"role": "sales", "intent": i} for i in intents]}
    records = [sales("greet_and_introduce", "ask_business_situation", "greet_and_introduce", INCOHERENT, INCOHERENT),
               sales("greet_and_introduce")]
    assert calls_grpo.repeated_moves(records) == pytest.approx(1 / 6)
    corpus = [{"turns": [{"role": "sales", "text": "Good morning, Ben!"}, {"role": "customer", "text": "Bad day."}]}]
    assert calls_grpo.corpus_bigrams(corpus) == {("good", "morning"), ("morning", "ben")}
    assert calls_grpo.word_pairs("It costs $49 a month.") == [("it", "costs"), ("costs", "a"), ("a", "month")]
