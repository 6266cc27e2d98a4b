"""Evaluation customers are nobody the model was trained on: world/personas.json's evaluation names share nothing
with the training names, an evaluation persona is the training persona of the same random numbers with other
names (so the customer reacts to it exactly as it would to a training customer), and the closed-loop customers
of both evaluation splits (validation, test) share no name, business name or profile with the training calls of
a simulated corpus, nor with each other; their held-out turns come from calls of their own."""
import json
import random
import re

import pytest

import evaluate
from config import DataConfig
from sales import load_world
from simulate import Salesperson, generate_corpus, make_persona, run_call


PERSONAS = json.load(open("world/personas.json"))
PRODUCTS = [p for _, products in sorted(load_world().products.items()) for p in products]


def vocabulary(pool):
    """Every name, surname and business-name part of a pool of personas.json, and every word in them."""
    names = set(pool["first_names"]) | set(pool["surnames"])
    for domain in pool["domains"].values():
        for parts in domain.get("name_parts") or ():
            names |= set(parts)
    return names, {word.lower() for name in names for word in name.split()}


def test_evaluation_vocabularies_share_nothing_with_the_training_ones():
    training, training_words = vocabulary(PERSONAS)
    evaluation, evaluation_words = vocabulary(PERSONAS["evaluation"])
    assert len(evaluation) == 30 + 30 + 2 * (8 + 10)
    assert not training & evaluation and not training_words & evaluation_words
    assert not evaluation_words & {city.lower() for city in PERSONAS["cities"]}
    # No evaluation name is a word the world says (a capitalised word that is not the customer's name would read
    # as another person's name to the claim checker).
    world_text = " ".join(open(f"world/{name}.json").read().lower()
                          for name in ("products", "rules", "templates", "phrasings", "subjects"))
    assert not {word for word in evaluation_words if re.search(rf"\b{re.escape(word)}\b", world_text)}


def names_of(visible):
    return visible["name"], visible.get("restaurant", visible.get("business"))


def test_an_evaluation_persona_is_the_training_persona_with_other_names_and_meets_the_same_customer():
    """The evaluation lists are as long as the training ones, so the same random numbers draw the same customer
    with other names; played by the scripted salesperson (with and without mistakes), every call goes turn for
    turn as with the training names: the customer does not react to who it is."""
    for noise in (0.0, 0.2):
        for product in PRODUCTS:
            for number in range(2):
                calls = {}
                for pool in ("training", "evaluation"):
                    rng = random.Random(f"same:{product['id']}:{number}")
                    persona = make_persona(product["domain"], product, rng, pool=pool)
                    salesperson = Salesperson(product, persona["visible"], random.Random(f"sales:{number}"), noise)
                    calls[pool] = run_call(product, persona, salesperson, rng)
                training, evaluation = calls["training"]["customer"], calls["evaluation"]["customer"]
                assert training["hidden"] == evaluation["hidden"]
                names = {"name", "restaurant", "business", "business_type"}
                assert {k: v for k, v in training["visible"].items() if k not in names} == \
                    {k: v for k, v in evaluation["visible"].items() if k not in names}
                for ours, theirs in zip(names_of(training["visible"]), names_of(evaluation["visible"])):
                    assert ours != theirs or ours is None                 # other names (none: no business)

                def moves(call):
                    return [(t["role"], t["intent"], t["stage"], t.get("labels")) for t in call["turns"]]
                assert moves(calls["training"]) == moves(calls["evaluation"])
                assert calls["training"]["outcome"] == calls["evaluation"]["outcome"]
    with pytest.raises(ValueError, match="persona pool"):
        make_persona(product["domain"], product, random.Random(0), pool="test")


@pytest.fixture(scope="module")
def training_calls():
    """A few hundred calls of the default data seed: the customers the model trains on are drawn as these are."""
    return generate_corpus(400, DataConfig.seed, DataConfig.noise, progress=False)


def test_evaluation_customers_are_nobody_a_training_call_had(training_calls):
    seen = [call["customer"]["visible"] for call in training_calls]
    seen_names = {visible["name"] for visible in seen}
    seen_businesses = {names_of(visible)[1] for visible in seen} - {None}
    assert len(seen_businesses) > 50                            # the corpus has business names to collide with
    customers = {}
    for split in ("validation", "test"):
        jobs = evaluate.closed_loop_jobs(PRODUCTS, 8, seed=0, customers=split)
        assert len(jobs) == 96
        customers[split] = [persona for _, _, persona, _ in jobs]
        for persona in customers[split]:
            name, business = names_of(persona["visible"])
            assert name not in seen_names and business not in seen_businesses
            assert persona["visible"] not in seen
    # Validation and test customers are different people: no profile, no hidden persona, no call in common.
    validation, test = customers["validation"], customers["test"]
    assert not [persona for persona in test if persona in validation]
    assert not [persona["visible"] for persona in test if persona["visible"] in [v["visible"] for v in validation]]
    assert not ({job[0] for job in evaluate.closed_loop_jobs(PRODUCTS, 8, 0, "validation")}
                & {job[0] for job in evaluate.closed_loop_jobs(PRODUCTS, 8, 0, "test")})
    with pytest.raises(ValueError, match="customers"):
        evaluate.EvalSettings(customers="training")


def test_validation_and_test_turns_come_from_different_held_out_calls(training_calls):
    calls = training_calls[:200]
    halves = {split: evaluate.held_out_half(calls, split) for split in ("validation", "test")}
    ids = {split: [call["id"] for call in half] for split, half in halves.items()}
    assert not set(ids["validation"]) & set(ids["test"])
    assert sorted(ids["validation"] + ids["test"]) == sorted(call["id"] for call in calls)
    assert 60 <= len(ids["test"]) <= 140                         # about half each
    # A call's half depends on its id alone: not on the order or company of the other held-out calls.
    assert [c["id"] for c in evaluate.held_out_half(calls[::-1][:50], "test")] == \
        [i for i in ids["test"][::-1] if i in {c["id"] for c in calls[::-1][:50]}]
