"""Evaluation customers are nobody the model was trained on: world/personas.json's evaluation names share nothing
with the training names, an evaluation persona is the training persona of the same random numbers with other
names (so the customer reacts to it exactly as it would to a training customer)."""
import json
import random
import re

import pytest

from sales import load_world
from simulate import Salesperson, make_persona, run_call


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
