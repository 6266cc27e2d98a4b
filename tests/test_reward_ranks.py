"""The reward ranks replies as a good sales manager would, on real corpus turns of every intent; and every rule
that ranking rests on is guarded: each mutant of reward.py or sales.py that removes or inverts one rule makes
the ranking fail.

Every candidate reply shares the sample's thought, so the Bayesian term (same prompt, thought and reference)
is the same for all of them: it is weighted 0 here and the rankings come from what the replies say.
"""
import json
import os
import random
import re

import pytest

import reward
import sales
from config import RewardConfig
from corpus import training_samples
from reward import TERMS, CompositeReward, fit_similarity_embedder
from sales import GOOD_INTENTS, NUMBER, SALES_INTENTS, fill, is_good_turn, is_legal_move, load_world, slot_values
from simulate import simulate_call
from tokenizer import format_assistant


PLAIN = "Let me tell you a little more about how this works for you."      # fluent, no fact, no move of note


@pytest.fixture(scope="module")
def corpus():
    calls = [simulate_call(i, seed=5, noise=0.0) for i in range(80)]
    samples = [s for c in calls for s in training_samples(c) if is_good_turn(s.labels)]
    by_intent = {}
    for sample in samples:
        by_intent.setdefault(sample.intent, []).append(sample)
    return by_intent, fit_similarity_embedder(samples)


def scores(embedder, sample, replies):
    """{term: [score per reply]} of the composite reward (bayes weighted 0), total included."""
    rewarder = CompositeReward(RewardConfig(bayes=0.0), None, None, embedder)
    terms = rewarder([sample] * len(replies), [[0]] * len(replies),
                     [format_assistant("Answer the customer.", r) for r in replies], [False] * len(replies))
    return {key: terms[key].tolist() for key in TERMS + ("total", "on_stage")}


def prompt_numbers(sample):
    """Every number the prompt shows (sheet and profile), as spoken, in one list: "$65, 12, 7, ..."."""
    spoken = slot_values(sample.product, sample.visible)
    return ", ".join(v for v in spoken.values() if NUMBER.fullmatch(v.strip()))


def wrong_number(text):
    match = NUMBER.search(text)
    digits = re.sub(r"[^\d.]", "", match.group(2))
    return text[:match.start(2)] + str(int(float(digits)) + 17) + text[match.end(2):]


def other_move(sample):
    """A template of another good intent that is legal in the sample's stage, filled for its call."""
    world = load_world()
    intents = [i for i in GOOD_INTENTS if i != sample.intent and is_legal_move(i, sample.stage_before)]
    texts = world.sales_templates[intents[0]]["texts"]
    template = (texts.get(sample.domain) or texts["any"])[0]
    return fill(template, slot_values(sample.product, sample.visible))


def promise_in_other_words(sample):
    path = os.path.join(os.path.dirname(__file__), "paraphrases_dev.json")
    with open(path, encoding="utf-8") as handle:
        lines = json.load(handle)["forbidden_promises"]
    return lines[sample.product["forbidden_promises"][0]][0]


def ranking_failures(corpus):
    """The rules a good sales manager's ranking obeys, checked on up to two corpus turns of every good intent;
    returns the rules broken (empty when the reward ranks as it should)."""
    by_intent, embedder = corpus
    failures, jumbles, jumbles_on_stage = set(), 0, 0
    rng = random.Random(0)
    for intent in GOOD_INTENTS:
        for sample in by_intent.get(intent, [])[:2]:
            ref, numbers = sample.target_reply, prompt_numbers(sample)
            check = sales.check_claims(ref, sample.product, sample.visible)
            words = ref.split()
            shuffled = " ".join(rng.sample(words, len(words)))
            replies = [ref, ref + " " + numbers + ".", PLAIN, PLAIN + " " + numbers + ".", shuffled, numbers + ".",
                       other_move(sample), ref + " " + promise_in_other_words(sample)]
            if check.numbers:
                replies += [wrong_number(ref), wrong_number(ref) + " " + numbers + "."]
            s = scores(embedder, sample, replies)
            # appending every number of the prompt never raises any term, for a good, a plain and a wrong reply
            for base in (0, 2, 8)[:3 if check.numbers else 2]:
                for term in TERMS + ("total",):
                    if s[term][base + 1] > s[term][base] + 1e-6:
                        failures.add(f"appending numbers raises {term}")
            # a jumble of the reference's words and a bare list of numbers are no move, and earn no facts
            jumbles, jumbles_on_stage = jumbles + 1, jumbles_on_stage + (s["on_stage"][4] > 0)
            if not s["total"][0] > s["total"][4]:
                failures.add("the reference does not beat its words shuffled")
            if s["manager"][5] > 0 or s["faithfulness"][5] >= s["faithfulness"][2]:
                failures.add("a number list earns move or faith credit")
            # another on-stage move: 0.5 against the reference's 1
            if not s["manager"][0] > s["manager"][6] > 0:
                failures.add("the manager's split between the reference's move and another")
            # the reference's facts beat a fluent reply with no facts
            if check.facts and not s["faithfulness"][0] > s["faithfulness"][2]:
                failures.add("stating the facts does not beat stating none")
            # a forbidden promise in other words costs faithfulness itself
            if not s["faithfulness"][7] < s["faithfulness"][0]:
                failures.add("a promise in other words costs nothing")
            # the same move with a wrong number
            if check.numbers and not (s["total"][0] > s["total"][8] and s["faithfulness"][0] > s["faithfulness"][8]):
                failures.add("a wrong number does not cost")
    # the speech check lets a few jumbles through (a short reply has few word pairs to break); most are no move
    if jumbles_on_stage > jumbles / 4:
        failures.add(f"jumbles are on-stage moves ({jumbles_on_stage} of {jumbles})")
    return sorted(failures)


def test_the_reward_ranks_as_a_sales_manager(corpus):
    by_intent, _ = corpus
    assert len([i for i in GOOD_INTENTS if i in by_intent]) >= 12           # real turns of (nearly) every move
    assert ranking_failures(corpus) == []


def test_a_true_number_of_another_subject_or_another_name_is_wrong(corpus):
    by_intent, embedder = corpus
    sample = next(s for s in by_intent["diagnose_with_numbers"] if sales.check_claims(
        s.target_reply, s.product, s.visible).numbers >= 2)
    facts = sorted(sales.check_claims(sample.target_reply, sample.product, sample.visible).facts)
    (_, first), (_, second) = [f for f in facts if f[0] not in sales.NAME_SUBJECTS][:2]
    spoken = {float(m.group(2).replace(",", "")): m.group(2) for m in NUMBER.finditer(sample.target_reply)}
    a, b = spoken[first], spoken[second]
    swapped = sample.target_reply.replace(a, "\0").replace(b, a).replace("\0", b)
    name = sample.visible["name"]
    other = "Chloe Haddad" if name != "Chloe Haddad" else "Adam Okafor"
    renamed = f"Thanks, {other}. " + sample.target_reply
    s = scores(embedder, sample, [sample.target_reply, swapped, f"Thanks, {name}. " + sample.target_reply, renamed])
    assert s["faithfulness"][1] < s["faithfulness"][0] and s["total"][1] < s["total"][0]
    assert s["faithfulness"][3] < s["faithfulness"][2] and s["total"][3] < s["total"][2]


def _no_subject_check(text, subjects):
    """A checker that takes any number some subject has for a fact, whatever it is said of."""
    return [(written, value, next(((s, v) for s, _, v, _ in subjects if v == value), None))
            for written, value, _ in MUTANT_ORIGINALS["_number_claims"](text, subjects)]


MUTANT_ORIGINALS = {"_number_claims": sales._number_claims}
MUTANTS = {
    "the manager's 1 / 0.5 split": lambda mp: mp.setattr(reward, "OTHER_MOVE_CREDIT", 1.0),
    "coverage": lambda mp: mp.setattr(reward, "coverage", lambda reply, reference: 1.0),
    "the wrong-fact penalty": lambda mp: mp.setattr(reward, "WRONG_FACT_COST", 0.0),
    "the order check": lambda mp: mp.setattr(sales, "is_speech", lambda text: True),
    "the promise check": lambda mp: mp.setattr(sales, "find_promises", lambda text, product: []),
    "the subject check": lambda mp: mp.setattr(sales, "_number_claims", _no_subject_check),
}


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_every_rule_of_the_ranking_is_guarded(corpus, monkeypatch, name):
    """Each mutant removes one rule; the ranking check must then fail."""
    MUTANTS[name](monkeypatch)
    sales.classify_sales_intent.cache_clear()
    try:
        assert ranking_failures(corpus) != [], f"mutant '{name}' passes the ranking check: the rule is unguarded"
    finally:
        sales.classify_sales_intent.cache_clear()
    assert SALES_INTENTS                                               # the module is intact after the mutant
