"""sales.py: the vocabulary, the stage machine, world/, the claim checker and the intent classifier."""
import random

import pytest

from sales import (
    GOOD_INTENTS,
    INCOHERENT,
    MISTAKE_INTENTS,
    OUTCOMES,
    SALES_INTENTS,
    STAGE_TRANSITIONS,
    STAGES,
    check_claims,
    classify_sales_intent,
    domain_texts,
    fill,
    is_good_turn,
    is_legal_move,
    load_world,
    mask_values,
    slot_values,
    stage_move,
)
from simulate import make_persona


# ----------------------------------------------------------------------------------------------
# The vocabulary and the stage machine

def test_the_shared_vocabulary():
    assert STAGES == ("opening", "business_analysis", "product_introduction", "objection_handling",
                      "operational_guidance", "closing")
    assert set(STAGE_TRANSITIONS) == set(STAGES)
    assert all(stage in nexts and set(nexts) <= set(STAGES) for stage, nexts in STAGE_TRANSITIONS.items())
    assert set(SALES_INTENTS.values()) == set(STAGES)
    assert OUTCOMES == ("converted", "declined", "hung_up")


def test_stage_machine_by_hand():
    # From the opening a turn may stay or go on to the business analysis, nowhere else.
    assert is_legal_move("state_purpose", "opening") and is_legal_move("ask_business_situation", "opening")
    assert not is_legal_move("present_product", "opening")
    assert is_legal_move("handle_price_objection", "closing")                    # closing may go back to objections
    # The Manager's move: only an on-stage turn moves the call, and a mistake intent is never on-stage.
    assert stage_move("ask_business_situation", "opening") == (True, "business_analysis")
    assert stage_move("present_product", "opening") == (False, "opening")        # a skipped stage
    assert is_legal_move("generic_pitch", "business_analysis")
    assert stage_move("generic_pitch", "business_analysis") == (False, "business_analysis")
    assert stage_move("pressure_close", "closing") == (False, "closing")
    assert set(GOOD_INTENTS) == set(SALES_INTENTS) - set(MISTAKE_INTENTS)
    assert is_good_turn({"on_stage": True, "faithful": True, "rule_broken": None})
    assert not is_good_turn({"on_stage": True, "faithful": False, "rule_broken": "wrong_fact"})
    assert not is_good_turn({"on_stage": False, "faithful": True, "rule_broken": "skipped_stage"})


# ----------------------------------------------------------------------------------------------
# The world

def test_world_has_enough_domains_products_and_paraphrases():
    world = load_world()
    assert len(world.products) >= 3
    for domain, products in world.products.items():
        assert len(products) >= 4, domain
        for product in products:
            for field in ("price", "term_months", "features", "eligibility", "forbidden_promises"):
                assert product[field], (product["id"], field)
    for intent in SALES_INTENTS:
        for domain in world.products:
            assert len(domain_texts(world.sales_templates[intent]["texts"], domain)) >= 8, (intent, domain)


def test_every_careless_promise_is_caught_and_no_good_template_promises_anything():
    world = load_world()
    for domain, products in world.products.items():
        for product in products:
            persona = make_persona(domain, product, random.Random(0))
            slots = slot_values(product, persona["visible"])
            for promise in product["forbidden_promises"]:
                for sentence in world.promise_sentences[promise]:
                    assert promise in check_claims(sentence, product, persona["visible"]).forbidden, sentence
            for intent, entry in world.sales_templates.items():
                for template in domain_texts(entry["texts"], domain):
                    text = fill(template, slots)
                    check = check_claims(text, product, persona["visible"])
                    assert not check.forbidden and not check.unsupported, (text, check)


def test_classifier_recovers_the_intent_of_every_filled_template():
    world, rng = load_world(), random.Random(3)
    for domain, products in world.products.items():
        for _ in range(5):
            product = rng.choice(products)
            slots = slot_values(product, make_persona(domain, product, rng)["visible"])
            for intent, entry in world.sales_templates.items():
                for template in domain_texts(entry["texts"], domain):
                    assert classify_sales_intent(fill(template, slots)) == intent, fill(template, slots)


def test_classifier_reads_free_form_replies():
    assert classify_sales_intent("Hey Ana, I'm calling from QuickBite Partners, got a minute?") == "greet_and_introduce"
    objection = "I hear you, the cost matters. It's $49 per month with nothing hidden."
    assert classify_sales_intent(objection) == "handle_price_objection"
    assert classify_sales_intent("Would you like to go ahead and sign up with Growth Boost?") == "ask_for_commitment"
    assert classify_sales_intent("zebra quantum") == INCOHERENT                 # no speech at all

# ----------------------------------------------------------------------------------------------
# The claim checker on hand-made sentences (Growth Boost: $99 per month, 6 months, 3 slots a week)


@pytest.fixture
def growth():
    product = next(p for p in load_world().products["restaurant_marketing"] if p["id"] == "rm-growth")
    visible = {"name": "Ana Silva", "restaurant": "Blue Wok", "monthly_orders": 320, "rating": 4.2,
               "current_ad_spend": 120}
    return product, visible


@pytest.mark.parametrize("text, supported, total, forbidden", [
    ("Growth Boost is $99 per month for 6 months.", 3, 3, []),          # name, price, term
    ("Growth Boost is $89 per month.", 1, 2, []),                        # wrong price
    ("With 320 orders a month and a 4.2 rating you can grow.", 2, 2, []),
    ("With 350 orders a month you can grow.", 0, 1, []),                 # wrong profile number
    ("You spend $120 on ads; $320 would be too much.", 1, 2, []),        # 320 is orders, not money
    ("It runs half a year, that is 6 months.", 1, 1, []),
    ("Premium Spotlight is better for you.", 0, 1, []),                  # another product
    ("Hello, how are you today?", 0, 0, []),
    ("I guarantee your orders will double.", 0, 0, ["guaranteed order growth"]),
    ("And you can cancel anytime for free.", 0, 0, ["free cancellation at any time"]),
])
def test_check_claims_hand_made(growth, text, supported, total, forbidden):
    product, visible = growth
    check = check_claims(text, product, visible)
    assert (check.supported, check.total, check.forbidden) == (supported, total, forbidden)


def test_distinct_claims_hand_made(growth):
    """The reward's view of the same check: distinct claims as (subject, value) keys; company names count there
    only."""
    product, visible = growth
    check = check_claims("Growth Boost costs $99 a month, yes $99 a month, for your 320 orders, says QuickBite "
                         "Partners.", product, visible)
    assert check.supported == 4                                          # every mention, as the Customer hears it
    assert check.facts == {("product", "Growth Boost"), ("price", 99.0), ("monthly_orders", 320.0),
                           ("company", "quickbite partners")}
    assert check.wrong == set() and check.numbers == 2
    check = check_claims("BrightLine Fiber offers Growth Boost for $89 over 1 year.", product, visible)
    assert check.unsupported == ["$89", "1 year"]                         # the company is not in the counts
    assert check.wrong == {("company", "brightline fiber"), ("number", 89.0), ("number", 1.0)}
    assert check_claims("It runs half a year, that is 0.5 years.", product, visible).facts == {("term_months", 6.0)}


def test_a_number_is_a_fact_only_about_its_subject(growth):
    """A true number said of the wrong subject, or with no subject at all, supports nothing (growth: $99 a month,
    6 months, 320 orders a month, a 4.2 rating, $120 on ads)."""
    product, visible = growth
    assert check_claims("You get 320 orders a month with a 4.2 rating.", product, visible).unsupported == []
    assert check_claims("You get 4.2 orders a month with a 320 rating.", product, visible).unsupported == ["4.2", "320"]
    assert check_claims("$99, 320, 4.2, 6.", product, visible).unsupported == ["$99", "320", "4.2", "6"]
    assert check_claims("You spend $99 a month on ads.", product, visible).unsupported == ["$99"]   # the price
    assert check_claims("It costs $99 per month for 6 months.", product, visible).unsupported == []


def test_another_customer_or_business_name_is_a_wrong_fact(growth):
    product, visible = growth            # Ana Silva of Blue Wok
    assert check_claims(f"Hello {visible['name']}, how is {visible['restaurant']}?", product, visible).unsupported == []
    check = check_claims("Hello Chloe Haddad, how is Happy Noodle Bar?", product, visible)
    assert check.unsupported == ["Happy Noodle Bar", "Chloe Haddad"]
    assert ("name", "Chloe Haddad") in check.wrong and ("business", "Happy Noodle Bar") in check.wrong
    assert check_claims("Hi Tom, quick call.", product, visible).unsupported == ["Tom"]


def test_mask_values_keeps_the_move(growth):
    product, visible = growth
    assert mask_values("Ana Silva, Blue Wok gets 320 orders at a 4.2 rating.", product, visible) == \
        "{name}, {restaurant} gets {monthly_orders} orders at a {rating} rating."
    # Another customer's name, another product and a number of no slot: masked all the same.
    assert mask_values("Hi Tom Novak, Premium Spotlight costs $7.", product, visible) == \
        "Hi {name} {name}, {name} costs  {number} ."
    assert mask_values("Growth Boost is $99 per month.", product, visible) == "{product} is {price} {billing}."
