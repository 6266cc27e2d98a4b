"""The rules of the sales world: what every part of AI-Salesman (arXiv 2511.12133) agrees a sales call is.

The paper's data engine, reward and inference engine all assess salesperson turns by the same rules; this
module is the one place those rules live, so that the corpus, the reward of training and DOGA cannot drift
apart:

* the vocabulary: the six sales stages (the paper's six capabilities) and their transition table, the
  salesperson and customer intents, outcomes, roles and the rules a turn can break;
* the stage machine, three questions asked everywhere: may an intent follow the current stage
  (`is_legal_move`), where does a turn move the call (`stage_move`, the Manager's move), and is a
  labelled turn a good one to learn from (`is_good_turn`: on-stage and faithful);
* how a customer takes a move (`customer_reaction`: interest gain, annoyance, reaction), which the simulated
  Customer applies, and the customer of a recorded call replayed to any turn (`replay_customer`), which the
  optional customer-reaction reward asks;
* world/: product sheets, business rules, persona ranges and utterance templates (`load_world`);
* how values are spoken (`slot_values`: "$49", "a, b and c"), which the prompts, the templates and
  DOGA's slots share;
* the claim checker (`check_claims`): the Manager's faithfulness label and the faithfulness reward read
  the same check;
* `mask_values`: a text with its names and numbers masked, what the reward compares to measure the move;
* the salesperson intent classifier (`classify_sales_intent`): what an utterance does, read from its words.

Left out on purpose: any learned component. The rules are tables and regular expressions over world/, so
every label can be traced to the line that caused it; simulate.py plays the agents, this module only holds the rules.
See docs/design.md, "The sales world".
"""

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache


# ----------------------------------------------------------------------------------------------
# The sales world's vocabulary: stages, how they may follow each other, intents, outcomes.

STAGES = ("opening", "business_analysis", "product_introduction",
          "objection_handling", "operational_guidance", "closing")

# stage -> stages the next salesperson turn may be in (staying is always allowed). The Manager
# enforces it: a turn whose intent belongs to any other stage is off-stage and the stage does not move.
STAGE_TRANSITIONS = {
    "opening": ("opening", "business_analysis"),
    "business_analysis": ("business_analysis", "product_introduction"),
    "product_introduction": ("product_introduction", "objection_handling", "operational_guidance", "closing"),
    "objection_handling": ("objection_handling", "product_introduction", "operational_guidance", "closing"),
    "operational_guidance": ("operational_guidance", "objection_handling", "closing"),
    "closing": ("closing", "objection_handling", "operational_guidance"),
}

# What a salesperson turn does -> the stage it belongs to.
SALES_INTENTS = {
    "greet_and_introduce": "opening",
    "state_purpose": "opening",
    "ask_business_situation": "business_analysis",
    "diagnose_with_numbers": "business_analysis",
    "present_product": "product_introduction",
    "explain_features": "product_introduction",
    "explain_pricing": "product_introduction",
    "generic_pitch": "product_introduction",
    "handle_price_objection": "objection_handling",
    "handle_trust_objection": "objection_handling",
    "handle_timing_objection": "objection_handling",
    "handle_need_objection": "objection_handling",
    "explain_signup_steps": "operational_guidance",
    "explain_activation": "operational_guidance",
    "ask_for_commitment": "closing",
    "confirm_next_steps": "closing",
    "polite_goodbye": "closing",
    "pressure_close": "closing",
}
# Intents that are mistakes whatever the stage: they pretend to belong to a stage but never do its job,
# so the Manager never counts them as on-stage and never lets them move the stage.
MISTAKE_INTENTS = ("generic_pitch", "pressure_close")

CUSTOMER_INTENTS = (
    "greet_back", "busy_brush_off", "acknowledge", "agree_with_diagnosis", "describe_business",
    "ask_price", "ask_details", "raise_price_objection", "raise_trust_objection", "raise_timing_objection",
    "raise_need_objection", "repeat_objection", "show_interest", "ask_how_to_start", "ask_activation",
    "accept", "decline", "hang_up", "challenge_claim", "annoyed", "unimpressed", "confused",
)

OUTCOMES = ("converted", "declined", "hung_up")
ROLES = ("sales", "customer")
# labels.rule_broken: null, or the one rule a salesperson turn broke (the most serious, in this order).
RULES = ("forbidden_promise", "wrong_fact", "pushy", "generic", "skipped_stage", "stage_regression")

# The intents a good salesperson uses: every intent but the mistakes.
GOOD_INTENTS = tuple(intent for intent in SALES_INTENTS if intent not in MISTAKE_INTENTS)

# ----------------------------------------------------------------------------------------------
# The stage machine: the questions every part asks about a salesperson turn.


def is_legal_move(intent, stage):
    """Whether a salesperson turn with `intent` may follow a call in `stage`: the intent's own stage is
    one that STAGE_TRANSITIONS allows next (staying in the stage is always allowed)."""
    return SALES_INTENTS[intent] in STAGE_TRANSITIONS[stage]


def stage_move(intent, stage):
    """The Manager's stage move for a salesperson turn with `intent` in a call at `stage`.

    Returns (on_stage, stage after the turn). A turn is on-stage when its move is legal and its intent is
    not a mistake intent; only an on-stage turn moves the call, to its intent's stage."""
    on_stage = is_legal_move(intent, stage) and intent not in MISTAKE_INTENTS
    return on_stage, (SALES_INTENTS[intent] if on_stage else stage)


def is_good_turn(labels):
    """A salesperson turn worth learning from, by the Manager's labels: on-stage and faithful. The corpus
    is noisy on purpose; its mistakes are never a reference to aim at."""
    return labels["on_stage"] and labels["faithful"]


# ----------------------------------------------------------------------------------------------
# How a customer takes a move: simulate.Customer applies it in every call; reward.py's optional reaction
# term asks it about a candidate reply at a recorded turn.

GOOD_TURN_GAIN = {"diagnose_with_numbers": 0.08, "present_product": 0.06, "explain_features": 0.05,
                  "explain_pricing": 0.05, "explain_signup_steps": 0.05, "explain_activation": 0.04,
                  "ask_business_situation": 0.04, "state_purpose": 0.03, "greet_and_introduce": 0.02}
ANSWERED_OBJECTION_GAIN = 0.12


def customer_reaction(intent, false_claim, stage_before, times_heard, open_objection):
    """A customer's immediate reaction to a salesperson move with `intent` (a false claim or forbidden promise
    in it: `false_claim`) said in `stage_before`, having heard that intent `times_heard` times before and with
    `open_objection` (a type, or None) unanswered. Returns (interest gain before noise, annoyance, the
    customer's reaction intent or None, whether the move answers the open objection)."""
    gain, annoyance, reaction, answered = 0.0, 0, None, False
    if false_claim:
        gain, annoyance, reaction = -0.12, 1, "challenge_claim"
    if intent == "pressure_close":
        gain, annoyance, reaction = gain - 0.15, annoyance + 2, reaction or "annoyed"
    elif intent == "generic_pitch":
        gain, annoyance, reaction = gain - 0.08, annoyance + 1, reaction or "unimpressed"
    elif not is_legal_move(intent, stage_before):
        gain, annoyance, reaction = gain - 0.08, annoyance + 1, reaction or "confused"
    elif times_heard >= 2 and intent not in ("ask_for_commitment",):
        gain, annoyance, reaction = gain - 0.05, annoyance + 1, reaction or "unimpressed"
    elif intent.startswith("handle_"):
        handled = intent[len("handle_"):-len("_objection")]
        if open_objection == handled:
            answered, gain = True, gain + ANSWERED_OBJECTION_GAIN
        elif open_objection is not None:
            gain, annoyance, reaction = gain - 0.04, annoyance + 1, reaction or "repeat_objection"
    elif reaction is None:
        gain += GOOD_TURN_GAIN.get(intent, 0.0)
    return gain, annoyance, reaction, answered


def replay_customer(persona, turns):
    """The customer of a recorded call (corpus format) after `turns`, from the recorded intents and labels:
    (Counter of the moves it heard, objections not yet raised, the open objection or None, patience left).
    Exactly the bookkeeping simulate.Customer.respond does; its interest, which has noise, is not replayed."""
    heard, pending = Counter(), list(persona["hidden"]["objections"])
    open_objection, patience, stage = None, persona["hidden"]["patience"], STAGES[0]
    for turn in turns:
        if turn["role"] == "sales":
            _, annoyance, _, answered = customer_reaction(turn["intent"], not turn["labels"]["faithful"], stage,
                                                          heard[turn["intent"]], open_objection)
            heard[turn["intent"]] += 1
            open_objection = None if answered else open_objection
            patience -= annoyance
        elif turn["intent"].startswith("raise_"):
            open_objection = turn["intent"][len("raise_"):-len("_objection")]
            pending.remove(open_objection)
        stage = turn["stage"]
    return heard, pending, open_objection, patience


# ----------------------------------------------------------------------------------------------
# The world: products, business rules, persona ranges, utterance templates (world/*.json).

WORLD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "world")


@dataclass
class World:
    products: dict          # domain -> [product sheet]
    money_fields: tuple     # fields spoken with a $ sign
    promises: dict          # forbidden promise -> compiled patterns
    promise_sentences: dict  # forbidden promise -> sentences a careless salesperson says
    personas: dict          # personas.json
    sales_templates: dict   # intent -> {"texts": {domain|"any": [str]}, "thoughts": [str]}
    promise_thoughts: list
    customer_templates: dict  # intent -> {domain|"any": [str]}


def _read_json(folder, name):
    path = os.path.join(folder, name)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


@lru_cache(maxsize=4)
def load_world(folder=WORLD_DIR):
    """Read and cross-check world/. Product sheets come back flat, with 'domain' and 'company' filled in."""
    catalogue, rules = _read_json(folder, "products.json"), _read_json(folder, "rules.json")
    personas, templates = _read_json(folder, "personas.json"), _read_json(folder, "templates.json")
    products = {}
    for domain, entry in catalogue["domains"].items():
        products[domain] = [{"id": p["id"], "name": p["name"], "domain": domain, "company": entry["company"],
                             **{k: v for k, v in p.items() if k not in ("id", "name")}}
                            for p in entry["products"]]
        for product in products[domain]:
            for promise in product["forbidden_promises"]:
                if promise not in rules["forbidden_promises"]:
                    raise ValueError(f"{folder}/products.json: product {product['id']} forbids {promise!r}, "
                                     f"which rules.json does not define")
    for intent in SALES_INTENTS:
        if intent not in templates["sales"]:
            raise ValueError(f"{folder}/templates.json: no templates for salesperson intent {intent!r}")
    for intent in CUSTOMER_INTENTS:
        if intent not in templates["customer"]:
            raise ValueError(f"{folder}/templates.json: no templates for customer intent {intent!r}")
    promises = {name: [re.compile(p) for p in rule["patterns"]] for name, rule in rules["forbidden_promises"].items()}
    sentences = {name: rule["sentences"] for name, rule in rules["forbidden_promises"].items()}
    return World(products, tuple(catalogue["money_fields"]), promises, sentences, personas,
                 templates["sales"], templates["promise_thoughts"], templates["customer"])


def domain_texts(by_domain, domain):
    """Templates that apply to `domain`: its own list, or the shared 'any' list."""
    return by_domain.get(domain) or by_domain["any"]


# ----------------------------------------------------------------------------------------------
# Slots: how product and profile values are spoken, and how templates are filled.

def speak_value(key, value, money_fields):
    if isinstance(value, list):
        return value[0] if len(value) == 1 else ", ".join(value[:-1]) + " and " + value[-1]
    if isinstance(value, (int, float)) and key in money_fields:
        return f"${value:,}" if float(value).is_integer() else f"${value:,.2f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def slot_values(product, visible):
    """{slot: spoken text} for every key of the visible profile and the product sheet. The product's
    'name' is the slot 'product' (the customer's name is 'name'). Lists are joined ('a, b and c')."""
    money = load_world().money_fields
    slots = {key: speak_value(key, value, money) for key, value in product.items() if key != "name"}
    slots["product"] = product["name"]
    slots.update({key: speak_value(key, value, money) for key, value in visible.items()})
    return slots


SLOT = re.compile(r"\{(\w+)\}")


def fill(template, slots):
    return SLOT.sub(lambda match: slots[match.group(1)], template)


@lru_cache(maxsize=1)
def _world_value_pattern():
    """Values that may be spoken in any call of the world: product and company names, and the persona
    vocabulary (first names, surnames, business name parts, cities), longest first."""
    world = load_world()
    spec = world.personas
    words = {p[key] for products in world.products.values() for p in products for key in ("name", "company")}
    words |= set(spec["first_names"]) | set(spec["surnames"]) | set(spec["cities"])
    for domain in spec["domains"].values():
        for part in domain["name_parts"] or ():
            words |= set(part)
    ordered = sorted(words, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(word) for word in ordered) + r")\b")


@lru_cache(maxsize=512)
def _call_value_pattern(values):
    """A pattern that finds any of `values` as a whole (not inside a longer number or word), longest first."""
    ordered = sorted(values, key=len, reverse=True)
    return re.compile(r"(?<![\w.$])(" + "|".join(re.escape(v) for v in ordered) + r")(?![\w]|[.,]\d)")


def mask_values(text, product, visible):
    """`text` with its values masked, so that what is left is the *move*: this call's spoken values become
    their slot names ("{price}", "{monthly_orders}"), then any other number becomes "{number}" and any other
    name of the world (a product, a company, a person, a business, a city) "{name}". Two replies that make the
    same move with other names and numbers then read alike, and a shared name is no likeness."""
    slot_of = {}
    for slot, value in sorted(slot_values(product, visible).items()):
        if slot not in ("id", "domain", "currency") and value.strip():
            slot_of.setdefault(value, slot)           # a value two slots share takes the first slot's name
    if slot_of:
        text = _call_value_pattern(tuple(sorted(slot_of))).sub(lambda m: "{" + slot_of[m.group(1)] + "}", text)
    text = NUMBER.sub(" {number} ", text)
    return _world_value_pattern().sub("{name}", text)


# ----------------------------------------------------------------------------------------------
# The claim checker (Manager labels and the faithfulness reward both use it).

# A number, optionally with a $ and a duration unit: "$1,250", "4.6", "12-month", "2 years".
NUMBER = re.compile(r"(?<![\w.,$])(\$\s?)?(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
                    r"(?:[\s-]*(months?|years?|weeks?|days?|hours?)\b)?", re.IGNORECASE)


@dataclass
class ClaimCheck:
    supported: int       # checkable claims the sheet or the visible profile supports
    total: int           # checkable claims found (numbers, prices, durations, product names)
    forbidden: list      # forbidden promises of this product that the text makes
    unsupported: list    # the claims (as written) that nothing supports
    facts: frozenset     # the distinct supported claims as keys: ("number", 49.0), ("product", name), ("company", name)
    wrong: frozenset     # the distinct unsupported claims as keys, another company's name included


def _numbers_in(text):
    """[(value, is_money, unit, as_written)] for every number in `text`."""
    found = []
    for match in NUMBER.finditer(text):
        value = round(float(match.group(2).replace(",", "")), 2)
        unit = (match.group(3) or "").lower().rstrip("s")
        found.append((value, bool(match.group(1)), unit, match.group(0).strip()))
    return found


def _known_numbers(product, visible, money_fields):
    """(all numbers, money amounts) that the sheet and the profile state, as rounded floats."""
    numbers, money = set(), set()
    for source in (product, visible):
        for key, value in source.items():
            values = value if isinstance(value, list) else [value]
            for item in values:
                if isinstance(item, bool):
                    continue
                if isinstance(item, (int, float)):
                    numbers.add(round(float(item), 2))
                    if key in money_fields:
                        money.add(round(float(item), 2))
                elif isinstance(item, str) and any(c.isdigit() for c in item):
                    for number, is_money, _, _ in _numbers_in(item):
                        numbers.add(number)
                        if is_money:
                            money.add(number)
    return numbers, money


@lru_cache(maxsize=1)
def _catalogue_names():
    """All product names of the catalogue and one pattern that finds any of them (longest first)."""
    names = sorted((p["name"] for products in load_world().products.values() for p in products), key=len, reverse=True)
    return names, re.compile(r"\b(" + "|".join(re.escape(name) for name in names) + r")\b", re.IGNORECASE)


def _find_product_names(text):
    """Catalogue product names mentioned in `text`, and the text with them blanked out."""
    names, pattern = _catalogue_names()
    canonical = {name.lower(): name for name in names}
    found = [canonical[match.group(1).lower()] for match in pattern.finditer(text)]
    return found, (pattern.sub(" ", text) if found else text)


@lru_cache(maxsize=1)
def _company_pattern():
    """One pattern that finds any company name of the catalogue."""
    companies = sorted({p["company"] for products in load_world().products.values() for p in products}, key=len,
                       reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(name) for name in companies) + r")\b", re.IGNORECASE)


def check_claims(text, product, visible):
    """Extract the checkable claims of `text` and check them against the product sheet and visible profile.

    Claims: product names (this product's supports itself; any other catalogue product is unsupported),
    money amounts (must be a money field or a $ amount of the sheet), other numbers (any number the sheet
    or profile states; years may also be spoken as 12 x months). Forbidden promises: any business rule of
    this product whose pattern (world/rules.json) matches.

    The counts and lists are what the Manager labels and the Customer reacts to. `facts` and `wrong` hold the
    same claims as distinct keys (a name or number said twice is one claim), for the faithfulness reward, and
    add company names: the product's own company is a fact, another company of the catalogue is wrong. The
    Customer does not react to company names, so they stay out of the counts and lists."""
    world = load_world()
    names, rest = _find_product_names(text)
    supported, unsupported, facts, wrong = 0, [], set(), set()
    for name in names:
        if name.lower() == product["name"].lower():
            supported += 1
            facts.add(("product", name))
        else:
            unsupported.append(name)
            wrong.add(("product", name))
    for match in _company_pattern().finditer(text):
        own = match.group(1).lower() == product["company"].lower()
        (facts if own else wrong).add(("company", match.group(1).lower()))
    numbers, money = _known_numbers(product, visible, world.money_fields)
    for value, is_money, unit, written in _numbers_in(rest):
        if is_money:
            ok = value in money
        elif unit == "year":
            ok = value in numbers or round(value * 12, 2) in numbers
            value = value if value in numbers else round(value * 12, 2)    # a fact's key is the sheet's value
        else:
            ok = value in numbers
        if ok:
            supported += 1
            facts.add(("number", value))
        else:
            unsupported.append(written)
            wrong.add(("number", value))
    lowered = text.lower()
    forbidden = []
    for promise in product["forbidden_promises"]:
        if promise not in world.promises:
            raise ValueError(f"product {product.get('id')!r}: forbidden promise {promise!r} is not defined in "
                             "world/rules.json")
        if any(pattern.search(lowered) for pattern in world.promises[promise]):
            forbidden.append(promise)
    return ClaimCheck(supported, supported + len(unsupported), forbidden, unsupported, frozenset(facts),
                      frozenset(wrong))


# ----------------------------------------------------------------------------------------------
# The intent classifier: which salesperson intent an utterance carries.
# Nearest template by IDF-weighted word overlap, after numbers and product names become placeholders
# and other slot values are ignored. Recall of the template's words counts four times as much as
# precision, so extra words (a name, an appended promise) do not change the intent.

WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def _intent_tokens(text):
    names, text = _find_product_names(text)
    text = NUMBER.sub(" qnum ", text)
    return set(WORD.findall(text.lower())) | ({"qproduct"} if names else set())


@lru_cache(maxsize=1)
def _intent_index():
    """Template intents, template weights, postings (token -> templates) and IDF weights over intents."""
    world = load_world()
    numeric_keys = {key for products in world.products.values() for p in products for key, v in p.items()
                    if isinstance(v, (int, float))} | set(world.money_fields)
    for domain in world.personas["domains"].values():
        numeric_keys |= set(domain["visible_ranges"])

    def template_tokens(template):
        text = SLOT.sub(lambda m: " qproduct " if m.group(1) == "product" else
                        (" qnum " if m.group(1) in numeric_keys else " "), template)
        return set(WORD.findall(text.lower()))

    templates = []
    for intent, entry in world.sales_templates.items():
        for texts in entry["texts"].values():
            templates.extend((intent, template_tokens(t)) for t in texts)
    intent_count = len(world.sales_templates)
    intents_with = {}
    for intent, tokens in templates:
        for token in tokens:
            intents_with.setdefault(token, set()).add(intent)
    weights = {token: math.log(1 + intent_count / len(intents)) for token, intents in intents_with.items()}
    postings = {}  # token -> indices of the templates that contain it
    for i, (_, tokens) in enumerate(templates):
        for token in tokens:
            postings.setdefault(token, []).append(i)
    template_weight = [sum(weights[t] for t in tokens) for _, tokens in templates]
    return [intent for intent, _ in templates], template_weight, postings, weights


@lru_cache(maxsize=4096)
def classify_sales_intent(text, stage=None):
    """The salesperson intent of `text` (a key of SALES_INTENTS). `stage`, the stage the call is
    in, only breaks ties in favour of intents the transition table allows. Text that matches no
    template at all is a generic pitch."""
    intents, template_weight, postings, weights = _intent_index()
    tokens = [t for t in _intent_tokens(text) if t in weights]
    text_weight = sum(weights[t] for t in tokens)
    overlap = Counter()
    for token in tokens:
        for i in postings[token]:
            overlap[i] += weights[token]
    best, best_score = "generic_pitch", 0.0
    for i in sorted(overlap):
        recall, precision = overlap[i] / template_weight[i], overlap[i] / text_weight
        score = 5 * precision * recall / (4 * precision + recall)
        score += 1e-6 if stage is not None and is_legal_move(intents[i], stage) else 0.0
        if score > best_score:
            best, best_score = intents[i], score
    return best
