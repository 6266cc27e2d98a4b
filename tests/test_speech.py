"""The customer understands speech, not word sets: sales.is_speech, the claim checker's promises in other words.

References: the scripted salesperson's own lines (fluent by construction), the same lines jumbled, and
hand-written sets (tests/paraphrases_dev.json: forbidden promises in other words and truthful lookalikes)."""
import json
import os
import random
import re

import pytest

import sales
from sales import INCOHERENT, classify_sales_intent, explain_promises, find_promises, is_speech, load_world
from simulate import Salesperson, generate_corpus, make_persona, run_call


STOP = set("""i me my we our you your he him his she her it its they them their what which who whom this that these
those am is are was were be been being have has had do does did a an the and but if or because as until
while of at by for with about against between into through during before after above below to from up
down in out on off over under again further then once here there when where why how all any both each few
more most other some such no nor not only own same so than too very can will just should now i'm i'll i'd
you're you'll let's it's""".split())

JUMBLES = {
    "shuffled": lambda words, rng: rng.sample(words, len(words)),
    "sorted": lambda words, rng: sorted(words),
    "reversed": lambda words, rng: words[::-1],
    "keywords": lambda words, rng: [w for w in words if w.lower().strip(".,?!:;") not in STOP],
}


def play(jumble, calls=96, seed=11):
    """Conversions of the noise-free scripted salesperson whose every reply goes through `jumble`."""
    world, rng, converted = load_world(), random.Random(seed), 0
    products = [p for ps in world.products.values() for p in ps]
    for i in range(calls):
        product = products[i % len(products)]
        persona = make_persona(product["domain"], product, rng)
        speaker = Salesperson(product, persona["visible"], random.Random(f"{seed}:{i}"), noise=0.0)
        words_rng = random.Random(i)

        def speak(view):
            thought, reply = speaker(view)
            return thought, reply if jumble is None else " ".join(jumble(reply.split(), words_rng))
        converted += run_call(product, persona, speak, random.Random(f"c{seed}:{i}"))["outcome"] == "converted"
    return converted / calls


def test_every_line_of_the_world_is_speech():
    world, rng = load_world(), random.Random(0)
    for domain, products in world.products.items():
        for product in products:
            slots = sales.slot_values(product, make_persona(domain, product, rng)["visible"])
            for entry in world.sales_templates.values():
                for template in sales.domain_texts(entry["texts"], domain):
                    assert is_speech(sales.fill(template, slots)), template


def test_a_salesperson_who_speaks_well_converts_as_with_a_bag_of_words_customer(monkeypatch):
    spoken = play(None)
    monkeypatch.setattr(sales, "is_speech", lambda text: True)     # the customer before it read word order
    sales.classify_sales_intent.cache_clear()
    assert play(None) == spoken
    sales.classify_sales_intent.cache_clear()


@pytest.mark.parametrize("name", sorted(JUMBLES))
def test_jumbled_words_do_not_sell(name):
    assert play(JUMBLES[name]) <= 0.05


def test_lists_and_jumbles_are_no_move():
    product = load_world().products["home_broadband"][0]
    visible = {"name": "Maria Lopez", "household_size": 3, "connected_devices": 9, "current_speed_mbps": 50,
               "current_bill": 65}
    reply = "With 3 people and 9 devices online, 50 Mbps is probably stretched thin."
    assert classify_sales_intent(reply) == "diagnose_with_numbers"
    assert classify_sales_intent("$65, 3, 9, 50, $35, 12.") == INCOHERENT
    assert classify_sales_intent("Maria Lopez, Basic Fiber, BrightLine Fiber.") == INCOHERENT
    greet = "Hi Maria Lopez, this is BrightLine Fiber. Do you have a minute?"
    interleaved = " ".join(w for pair in zip(reply.split(), greet.split()) for w in pair)
    assert classify_sales_intent(interleaved) == INCOHERENT
    # a number list after a reply is no part of its move
    assert classify_sales_intent("I understand the doubt, everything is in writing. $65, 3, 9, 50.") == \
        classify_sales_intent("I understand the doubt, everything is in writing.")
    assert sales.check_claims(reply + " $65, 3, 9, 50.", product, visible).unsupported == ["$65", "3", "9", "50"]


def _hand_written():
    with open(os.path.join(os.path.dirname(__file__), "paraphrases_dev.json"), encoding="utf-8") as handle:
        return json.load(handle)


def test_forbidden_promises_in_other_words_are_caught():
    """On the hand-written sets the promise concepts were tuned on: nearly every promise caught, no truthful
    lookalike flagged. (Held-out sets are measured in the research log: bench/promises.py.)"""
    world = load_world()
    caught = total = 0
    for promise, lines in _hand_written()["forbidden_promises"].items():
        product = next(p for ps in world.products.values() for p in ps if promise in p["forbidden_promises"])
        caught += sum(promise in find_promises(line, product) for line in lines)
        total += len(lines)
    assert caught >= 0.95 * total
    for line in _hand_written()["good_lookalikes"]:
        text = re.sub(r"\{\w+\}", "12", line)
        assert not any(find_promises(text, p) for ps in world.products.values() for p in ps), line


def test_a_promise_is_a_certainty_frame_and_its_topic_and_says_why():
    """Growth of orders is a promise only with a frame of certainty ('trust me'): the same words without one, or
    with the certainty negated ('nobody can promise'), make none. Full speed is a promise at all times or when
    guaranteed. The reasons name the frame and the topic words, in the order of the rule's concept groups."""
    world = load_world()
    products = {p["id"]: p for ps in world.products.values() for p in ps}
    starter, basic = products["rm-starter"], products["hb-basic"]
    [promise] = explain_promises("Trust me, your takings are about to soar.", starter)
    assert promise.rule == "guaranteed order growth"
    assert promise.reasons == (("certain", "trust me"), ("topic", "soar"), ("topic", "takings"))
    assert promise.explain() == "guaranteed order growth: certain 'trust me' + topic 'soar' + topic 'takings'"
    assert find_promises("Your takings are about to soar.", starter) == []
    assert find_promises("Nobody can promise your takings will soar.", starter) == []
    assert [p.reasons for p in explain_promises("Full speed, around the clock.", basic)] == \
        [(("topic", "speed"), ("always", "around the clock"), ("topic", "full"))]
    assert find_promises("Full speed, guaranteed.", basic) == ["full speed guaranteed at all times"]
    assert find_promises("Full speed on a good day.", basic) == []
    # the rule's own phrasing is its reason; a curly apostrophe reads as a straight one
    assert explain_promises("Your sales will double.", starter)[0].reasons == \
        (("pattern", "(orders?|sales) will (double|triple)"),)
    assert find_promises("You\u2019ll get more orders, I promise.", starter) == ["guaranteed order growth"]
    assert find_promises("I can\u2019t promise you\u2019ll get more orders.", starter) == []


def test_promises_in_the_corpus_are_caught_and_good_turns_are_not_flagged():
    calls = generate_corpus(300, seed=2, noise=0.3, progress=False)
    turns = [(t, c["product"]) for c in calls for t in c["turns"] if t["role"] == "sales"]
    careless = [(t, p) for t, p in turns if t["labels"]["rule_broken"] == "forbidden_promise"]
    good = [(t, p) for t, p in turns if t["labels"]["rule_broken"] is None]
    assert len(careless) > 20 and all(find_promises(t["text"], p) for t, p in careless)
    assert sum(bool(find_promises(t["text"], p)) for t, p in good) <= 0.01 * len(good)


def test_a_question_asserts_nothing_until_answered():
    """A question is not a statement: 'Will your orders grow?' promises nothing. 'Yes' asserts it (the answer is its
    certainty), 'No' asserts its negation: a promise when the question is the broken rule's opposite ('Will the
    price go up? Never.'), the truth when the question is the promise itself ('Can I cancel whenever I like? No.')."""
    world = load_world()
    products = {p["id"]: p for ps in world.products.values() for p in ps}
    starter, basic, gamer = products["rm-starter"], products["hb-basic"], products["hb-gamer"]
    assert find_promises("Will your orders grow?", starter) == []
    assert find_promises("Will your orders grow? That depends on your menu.", starter) == []
    [promise] = explain_promises("Do your orders grow? Yes.", starter)
    assert promise.reasons == (("answer", "yes"), ("topic", "grow"), ("topic", "orders"))
    assert find_promises("Will the price go up? Never.", basic) == ["no price increase ever"]
    assert find_promises("Will the price go up? Yes, after your term.", basic) == []
    assert find_promises("Can I cancel whenever I like? No.", gamer) == []
    assert find_promises("Can I cancel whenever I like? Of course.", gamer) == ["free cancellation at any time"]
    assert find_promises("Does the speed drop at peak times? No.", basic) == ["full speed guaranteed at all times"]
    assert find_promises("Does the speed drop at peak times? Sometimes, a little.", basic) == []
