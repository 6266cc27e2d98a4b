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
  Customer applies;
* world/: product sheets, business rules, persona ranges and utterance templates (`load_world`);
* how values are spoken (`slot_values`: "$49", "a, b and c"), which the prompts, the templates and
  DOGA's slots share;
* the claim checker (`check_claims`): the Manager's faithfulness label and the faithfulness reward read
  the same check; a number is a fact only about its subject (world/subjects.json), another customer's or
  business's name is wrong, forbidden promises are found in the rule's words and in other words (a shared
  frame of certainty plus the rule's topic words);
* `mask_values`: a text with its names and numbers masked, what the reward compares to measure the move;
* speech (`is_speech`): whether an utterance is said in the world's language or is a bag of its words;
* the salesperson intent classifier (`classify_sales_intent`): what an utterance does, read from its words.

Left out on purpose: any model trained by gradient descent. The rules are tables and regular expressions over
world/, and the two learned parts (the speech models and the intent classifier) are word and word-pair counts
of world/'s own lines, built on first use: every label can be traced to the line or the counts that caused
it; simulate.py plays the agents, this module only holds the rules.
See docs/design.md, "The sales world".
"""

import json
import math
import os
import random
import re
import zlib
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
RULES = ("forbidden_promise", "wrong_fact", "incoherent", "pushy", "generic", "skipped_stage", "stage_regression")

# Not a move: words the customer cannot follow as speech (a jumble, a list of keywords, numbers or names; see
# is_speech). It belongs to no stage, so it is never a legal move: the Manager labels it off-stage and the
# customer takes it as one (confused, annoyed, no interest gained).
INCOHERENT = "incoherent"

# The intents a good salesperson uses: every intent but the mistakes.
GOOD_INTENTS = tuple(intent for intent in SALES_INTENTS if intent not in MISTAKE_INTENTS)

# ----------------------------------------------------------------------------------------------
# The stage machine: the questions every part asks about a salesperson turn.


def is_legal_move(intent, stage):
    """Whether a salesperson turn with `intent` may follow a call in `stage`: the intent's own stage is
    one that STAGE_TRANSITIONS allows next (staying in the stage is always allowed). INCOHERENT is never legal."""
    return SALES_INTENTS.get(intent) in STAGE_TRANSITIONS[stage]


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
# How a customer takes a move: simulate.Customer applies it in every call.

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


# ----------------------------------------------------------------------------------------------
# The world: products, business rules, persona ranges, utterance templates (world/*.json).

WORLD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "world")


@dataclass
class World:
    products: dict          # domain -> [product sheet]
    money_fields: tuple     # fields spoken with a $ sign
    promises: dict          # forbidden promise -> compiled patterns (the rule's own phrasings)
    promise_concepts: dict  # forbidden promise -> concept groups (frames + topic words); "hedges": no promise;
    #                         "yes" / "no": an answer that asserts a question or its negation
    promise_sentences: dict  # forbidden promise -> sentences a careless salesperson says
    personas: dict          # personas.json
    sales_templates: dict   # intent -> {"texts": {domain|"any": [str]}, "thoughts": [str]}
    promise_thoughts: list
    customer_templates: dict  # intent -> {domain|"any": [str]}
    phrasings: dict         # intent -> {domain|"any": [str]}: other ways to make a move (phrasings.json)
    subject_words: dict     # numeric field -> the words that name it in speech (subjects.json)
    subject_stop: frozenset  # words that never name a subject on their own


def _read_json(folder, name):
    path = os.path.join(folder, name)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


def _concept_pattern(words, frames, rule):
    """One concept group of a rule as one regular expression whose named groups say what matched: a shared frame
    ('@certain' in rules.json: group 'certain') or the rule's own words (group 'topic'). Frames come first, so a
    word in both reads as the frame."""
    parts = []
    for word in words:
        if word.startswith("@"):
            if word[1:] not in frames:
                raise ValueError(f"world/rules.json: rule {rule!r} names frame {word!r}, not in 'frames'")
            parts.append(f"(?P<{word[1:]}>" + "|".join(frames[word[1:]]) + ")")
    topic = [word for word in words if not word.startswith("@")]
    if topic:
        parts.append("(?P<topic>" + "|".join(topic) + ")")
    return re.compile(r"\b(?:" + "|".join(parts) + r")(?!\w)")     # (?!\w), not \b: "100%" ends in no word


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
    frames = {name: words for name, words in rules.get("frames", {}).items() if name != "about"}
    concepts = {name: [_concept_pattern(words, frames, name) for words in rule.get("concepts", ())]
                for name, rule in rules["forbidden_promises"].items()}
    sentences = {name: rule["sentences"] for name, rule in rules["forbidden_promises"].items()}
    concepts["hedges"] = re.compile(r"\b(?:" + "|".join(rules.get("hedges", ())) + r")\b")
    # the answers that assert a question ("yes") or its negation ("no"): the first words of the next sentence
    for answer in ("yes", "no"):
        concepts[answer] = re.compile(r"(?:" + "|".join(rules["answers"][answer]) + r")(?=[\s,;:!-]*(?:$|[,;:!-]))")
    phrasings = _read_json(folder, "phrasings.json")["sales"]
    for intent in phrasings:
        if intent not in SALES_INTENTS:
            raise ValueError(f"{folder}/phrasings.json: unknown salesperson intent {intent!r}")
    subjects = _read_json(folder, "subjects.json")
    return World(products, tuple(catalogue["money_fields"]), promises, concepts, sentences, personas,
                 templates["sales"], templates["promise_thoughts"], templates["customer"], phrasings,
                 {field: frozenset(words) for field, words in subjects["fields"].items()}, frozenset(subjects["stop"]))


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


# A written value: the model may write `{slot}` where a call's value goes (its training text does: corpus.py), and
# the call's record says it. Values -> slots (Slotter) is how that text is made from spoken calls; slots -> values
# (`heard`) is what the customer hears of it.


class Slotter:
    """Replaces the spoken values of one product sheet and visible profile by their slot names.

    Values are spoken by sales.slot_values ("$49", "per month", lists as "a, b and c"). Longer values
    are replaced first, so a feature list wins over a number inside it. A value two slots share (a
    3-month term and 3 activation days) cannot be attributed and makes the text unusable (None).
    """

    def __init__(self, product, visible):
        by_value = {}
        for slot, value in slot_values(product, visible).items():
            if slot in ("id", "domain", "currency") or not value.strip():
                continue
            by_value.setdefault(value, []).append(slot)
        self.by_value = by_value
        values = sorted(by_value, key=len, reverse=True)
        # A value is matched only as a whole: not inside a longer number or word.
        self.pattern = re.compile(r"(?<![\w.$])(" + "|".join(re.escape(v) for v in values) + r")(?![\w]|[.,]\d)") \
            if values else None

    def __call__(self, text):
        """Text with values replaced by `{slot}`, or None if a value in it belongs to several slots."""
        if self.pattern is None:
            return text
        ambiguous = False

        def replace(match):
            nonlocal ambiguous
            slots = self.by_value[match.group(1)]
            ambiguous |= len(slots) > 1
            return "{" + slots[0] + "}"

        slotted = self.pattern.sub(replace, text)
        return None if ambiguous else slotted


_SLOTTERS = {}


def slotter_for(product, visible):
    """A cached Slotter: a call asks for the same one every turn, and compiling its pattern is the slow part."""
    key = json.dumps([product, visible], sort_keys=True)
    if key not in _SLOTTERS:
        if len(_SLOTTERS) >= 256:
            _SLOTTERS.clear()
        _SLOTTERS[key] = Slotter(product, visible)
    return _SLOTTERS[key]


def fill_slots(template, values):
    """Fill every `{slot}` from `values`; None when any slot has no value (the template is then not used)."""
    names = SLOT.findall(template)
    if any(name not in values for name in names):
        return None
    filled = SLOT.sub(lambda match: values[match.group(1)], template)
    return None if SLOT.search(filled) else filled


def heard(text, product, visible):
    """What the customer hears of a written `text`: every `{slot}` this call has a value for is said as that value
    (sales.slot_values); a slot it has none for (another product's field, a misspelt name) stays as written, and
    check_claims counts it as an unsupported claim. Text with no slot is heard as written."""
    if "{" not in text:
        return text
    values = slot_values(product, visible)
    return SLOT.sub(lambda match: values.get(match.group(1), match.group(0)), text)


def _name_pools():
    """The name vocabularies of personas.json: the training customers', then the evaluation customers'."""
    spec = load_world().personas
    return [spec, spec["evaluation"]]


@lru_cache(maxsize=1)
def _world_value_pattern():
    """Values that may be spoken in any call of the world: product and company names, and the persona
    vocabulary of training and evaluation customers (first names, surnames, business name parts, cities),
    longest first."""
    world = load_world()
    words = {p[key] for products in world.products.values() for p in products for key in ("name", "company")}
    words |= set(world.personas["cities"])
    for pool in _name_pools():
        words |= set(pool["first_names"]) | set(pool["surnames"])
        for domain in pool["domains"].values():
            for part in domain.get("name_parts") or ():
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
    total: int           # checkable claims found (numbers, product names, the customer's and business's names)
    forbidden: list      # forbidden promises of this product that the text makes
    unsupported: list    # the claims (as written) that nothing supports
    facts: frozenset     # the distinct supported claims as (subject, value): ("price", 49.0), ("product", name), ...
    wrong: frozenset     # the distinct unsupported claims as keys, another company's name included

    @property
    def numbers(self):
        """How many distinct numbers the text states right (facts that are not names)."""
        return sum(subject not in NAME_SUBJECTS for subject, _ in self.facts)


NAME_SUBJECTS = ("product", "company", "name", "business")
WINDOW = 6           # a number's subject is named within this many words of it, in the same clause
PHRASE_WINDOW = 3    # the words of a sheet's phrase that name the subject of a number in it
SENTENCE = re.compile(r"(?:[^.?!;]|\.(?=\d))+")         # a decimal point ends no sentence
# A clause: a sentence cut at its commas and colons too (not the thousands commas of "$1,250").
CLAUSE = re.compile(r"(?:[^.?!;:,]|[.,](?=\d))+")
CLAIM_TOKEN = re.compile(r"\{number\}|[a-z]+")


def _numbers_in(text):
    """[(value, is_money, unit, as_written)] for every number in `text`."""
    found = []
    for match in NUMBER.finditer(text):
        value = round(float(match.group(2).replace(",", "")), 2)
        unit = (match.group(3) or "").lower().rstrip("s")
        found.append((value, bool(match.group(1)), unit, match.group(0).strip()))
    return found


def _subjects(product, visible):
    """[(subject, cue words, value, is_money)]: every number the sheet and the profile state, with what it is
    about. A numeric field is its own subject, named by the cue words of world/subjects.json; a number inside a
    phrase of the sheet ("a $250 deductible", "up to 30 days of closure covered") is about that phrase, named by
    the phrase's words next to it."""
    world = load_world()
    cues, stop = world.subject_words, world.subject_stop
    subjects = []
    for source in (product, visible):
        for key, value in source.items():
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                subjects.append((key, cues.get(key, frozenset({key})), round(float(value), 2),
                                 key in world.money_fields))
                continue
            for phrase in (value if isinstance(value, list) else [value]):
                if not isinstance(phrase, str) or not any(c.isdigit() for c in phrase):
                    continue
                tokens = CLAIM_TOKEN.findall(NUMBER.sub(" {number} ", phrase.lower()))
                at = [i for i, token in enumerate(tokens) if token == "{number}"]
                for (number, is_money, unit, _), i in zip(_numbers_in(phrase), at):
                    words = {w for w in tokens[max(0, i - PHRASE_WINDOW):i + PHRASE_WINDOW + 1]
                             if w != "{number}" and w not in stop}
                    subjects.append((f"{key}: {phrase}", frozenset(words | ({unit} if unit else set())), number,
                                     is_money))
    return subjects


def _number_claims(text, subjects):
    """[(as written, value, (subject, its value) or None)] for every number of `text`: the subject its nearest
    cue words name that has its value, None when none does (no subject named, or a subject with another value).

    Each sentence is read as words and numbers; a number's unit ("12-month", "3 days") is its first cue.
    Every subject of the same kind (money or not) scores the sum of 1 / distance of its cue words within
    WINDOW words; the best-scoring subjects are what the number is about. A number said with no subject near
    it (a list of numbers) or of a subject that has another value ("603 devices" for 603 orders) is no fact."""
    claims = []
    for sentence in CLAUSE.findall(text):
        numbers = _numbers_in(sentence)
        tokens = CLAIM_TOKEN.findall(NUMBER.sub(" {number} ", sentence.lower()))
        positions = [i for i, token in enumerate(tokens) if token == "{number}"]
        for (value, is_money, unit, written), at in zip(numbers, positions):
            near = {}
            for i in range(max(0, at - WINDOW), min(len(tokens), at + WINDOW + 1)):
                if i != at and tokens[i] != "{number}":
                    near[tokens[i]] = max(near.get(tokens[i], 0.0), 1.0 / abs(i - at))
            if unit:
                near[unit] = 1.0
            scores = [(sum(near.get(cue, 0.0) for cue in words), subject, subject_value)
                      for subject, words, subject_value, money in subjects if money == is_money]
            best = max((score for score, _, _ in scores), default=0.0)
            spoken = {value, round(value * 12, 2)} if unit == "year" else {value}
            match = next(((subject, subject_value) for score, subject, subject_value in sorted(scores)
                          if best > 0 and score >= best - 1e-9 and subject_value in spoken), None)
            claims.append((written, value, match))
    return claims


@lru_cache(maxsize=1)
def _catalogue_names():
    """All product names of the catalogue and one pattern that finds any of them (longest first)."""
    names = sorted((p["name"] for products in load_world().products.values() for p in products), key=len, reverse=True)
    alternation = "|".join(re.escape(name) for name in names)
    # The claim pattern ignores case (a product is named however it is written); the number checker blanks only
    # names written as names, so that "equipment cover up to $20,000" keeps its words as the subject of $20,000.
    return names, re.compile(rf"\b({alternation})\b", re.IGNORECASE), re.compile(rf"\b({alternation})\b")


def _find_product_names(text):
    """Catalogue product names mentioned in `text`, and the text with them blanked out."""
    names, pattern, _ = _catalogue_names()
    canonical = {name.lower(): name for name in names}
    found = [canonical[match.group(1).lower()] for match in pattern.finditer(text)]
    return found, (pattern.sub(" ", text) if found else text)


@lru_cache(maxsize=1)
def _company_pattern():
    """One pattern that finds any company name of the catalogue."""
    companies = sorted({p["company"] for products in load_world().products.values() for p in products}, key=len,
                       reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(name) for name in companies) + r")\b", re.IGNORECASE)


@lru_cache(maxsize=1)
def _people_patterns():
    """Patterns for the world's customer names: a full name (first name and surname), a lone capitalised first
    name or surname, and a business name (both parts), over the training and the evaluation vocabularies."""
    pools = _name_pools()
    firsts = {n for pool in pools for n in pool["first_names"]}
    lasts = {n for pool in pools for n in pool["surnames"]}
    parts = ([], [])
    for pool in pools:
        for domain in pool["domains"].values():
            for i, names in enumerate(domain.get("name_parts") or ()):
                parts[i].extend(names)

    def alternation(words):
        return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
    full = re.compile(rf"\b(?:{alternation(firsts)}) (?:{alternation(lasts)})\b")
    lone = re.compile(rf"\b(?:{alternation(firsts | lasts)})\b")
    business = re.compile(rf"\b(?:{alternation(parts[0])}) (?:{alternation(parts[1])})\b")
    return full, lone, business


def _name_claims(text, visible):
    """[(kind, as written, right)] for the customer's and businesses' names in `text`: a full name or a lone first
    name or surname is right when it is (part of) the customer's name, a business name when it is the customer's
    business. Calling the customer or their business by another name is a wrong fact."""
    full, lone, business = _people_patterns()
    own = visible.get("name", "")
    own_business = next((visible[key] for key in ("restaurant", "business") if key in visible), None)
    claims = [("business", m.group(0), m.group(0) == own_business) for m in business.finditer(text)]
    text = business.sub(" ", text)
    claims += [("name", m.group(0), m.group(0) == own) for m in full.finditer(text)]
    claims += [("name", m.group(0), m.group(0) in own.split()) for m in lone.finditer(full.sub(" ", text))]
    return claims


@lru_cache(maxsize=512)
def _call_subjects(product_key, visible_key):
    product, visible = json.loads(product_key), json.loads(visible_key)
    return _subjects(product, visible)


def check_claims(text, product, visible):
    """Extract the checkable claims of `text` and check them against the product sheet and visible profile.

    A claim is a statement about something:
    * a number counts as a fact only when the checker can tell what it is about and that subject has that
      value (`_number_claims`: money amounts are about money fields, other numbers about the rest; years may
      also be spoken as 12 x months). A bare list of numbers, or a true number said of the wrong subject, is
      unsupported;
    * product names: this product's supports itself, any other catalogue product is unsupported;
    * the customer's name and business name: another person's or business's name is unsupported;
    * a slot left unfilled (`{coverage_limit}` heard in a call that has no coverage limit) is unsupported;
    * forbidden promises (`find_promises`): any business rule of this product that the text breaks, in the
      rule's own words or in others.

    The counts and lists are what the Manager labels and the Customer reacts to. `facts` and `wrong` hold the
    same claims as distinct keys (a name or number said twice is one claim), for the faithfulness reward, and
    add company names: the product's own company is a fact, another company of the catalogue is wrong. The
    Customer does not react to company names, so they stay out of the counts and lists."""
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
    for kind, written, right in _name_claims(rest, visible):
        supported += right
        (facts if right else wrong).add((kind, written))
        if not right:
            unsupported.append(written)
    for match in SLOT.finditer(text):          # a slot heard unfilled: this call has no such value (sales.heard)
        unsupported.append(match.group(0))
        wrong.add(("slot", match.group(1)))
    subjects = _call_subjects(json.dumps(product, sort_keys=True), json.dumps(visible, sort_keys=True))
    spoken = _people_patterns()[1].sub(" ", _catalogue_names()[2].sub(" qproduct ", SLOT.sub(" ", text)))
    for written, value, fact in _number_claims(spoken, subjects):
        if fact is not None:
            supported += 1
            facts.add(fact)                        # (subject, the sheet's value): "1 year" is the 12-month term
        else:
            unsupported.append(written)
            wrong.add(("number", value))
    forbidden = find_promises(text, product)
    return ClaimCheck(supported, supported + len(unsupported), forbidden, unsupported, frozenset(facts),
                      frozenset(wrong))


@dataclass(frozen=True)
class Promise:
    """A forbidden promise found in a text, and why: the words that made it."""
    rule: str            # the business rule broken (world/rules.json)
    window: str          # the sentence, or two in a row, that make it (lower case)
    # reasons: ("pattern", regex) for the rule's own phrasing, else one (kind, words) per concept group, kind being
    # the shared frame that matched ("certain", "future", "always") or "topic"
    reasons: tuple

    def explain(self):
        return f"{self.rule}: " + " + ".join(f"{kind} {words!r}" for kind, words in self.reasons)


def explain_promises(text, product):
    """The forbidden promises of `product` that `text` makes, each with its reasons (`Promise`). A promise is made
    when one of its rule's patterns matches (world/rules.json: the corpus's own phrasings), or when one sentence, or
    two in a row, hold every concept group of the rule: a shared certainty frame where the rule needs one ("I
    guarantee", "you'll", "always") and the words of its topic (orders + growth; speed + full; ...), or for rules
    that are certainty statements by nature (free cancellation any time, no price increase ever) the topic with its
    quantifier. A hedged sentence ("nobody can promise a number", "... isn't covered") makes no promise. A question
    asserts nothing on its own (its words are topic, never frame) unless the next sentence answers it: "Yes" /
    "Absolutely" asserts it, the answer being its certainty; "No" / "Never" asserts its negation, a promise when
    the negated question makes one and the question itself makes none ("Will the price go up? Never." is a promise,
    "Can you cancel whenever you like? No." is not)."""
    world = load_world()
    lowered = text.lower().replace("\u2019", "'").replace("\u2018", "'")   # curly apostrophes read as straight
    windows = _promise_windows(lowered, world.promise_concepts)
    found = []
    for promise in product["forbidden_promises"]:
        if promise not in world.promises:
            raise ValueError(f"product {product.get('id')!r}: forbidden promise {promise!r} is not defined in "
                             "world/rules.json")
        patterns, concepts = world.promises[promise], world.promise_concepts[promise]
        for window in windows:
            said = next((p for p in patterns if any(p.search(part) for part, _ in window.parts)), None)
            if said is not None and window.denies is None:
                found.append(Promise(promise, window.text, (("pattern", said.pattern),)))
                break
            reasons = _concept_reasons(concepts, window) if concepts else None
            if reasons and window.denies is not None and _concept_reasons(concepts, _Window(((window.denies, True),))):
                reasons = None          # "No" to a question that is itself the promise: the truth, not a promise
            if reasons:
                found.append(Promise(promise, window.text, reasons))
                break
    return found


@dataclass(frozen=True)
class _Window:
    """One sentence, or two in a row, read as one statement."""
    parts: tuple                # (text, asserted): True (a statement), or "certain" (a question: its topic words
    #                             and certainty frame count, not a prediction's "will")
    answer: str = None          # "yes", "absolutely", ...: the answer to a question, which commits to it
    denies: str = None          # the question that a "No" answer denies (the window then says its negation)

    @property
    def text(self):
        return " ".join(part for part, _ in self.parts).strip()


def _promise_windows(lowered, concepts):
    """The windows of a lower-case text that may make a promise: each asserted sentence that no hedge limits, and
    each two in a row, a question followed by its answer read as the answered statement."""
    hedges, yes, no = concepts["hedges"], concepts["yes"], concepts["no"]
    # (sentence, is a question, is hedged)
    said = [(body.strip(), end.startswith("?"), bool(hedges.search(body)))
            for body, end in re.findall(r"((?:[^.?!]|\.(?=\d))+)([.?!]*)", lowered) if body.strip()]
    windows = [_Window(((s, True),)) for s, question, hedged in said if not question and not hedged]
    # a question alone commits only by its own certainty frame ("Why settle for less when we can lock in a perfect
    # rating?"), and not when the next sentence hedges it or answers "No"
    after = said[1:] + [("", False, False)]
    windows += [_Window(((a, "certain"),)) for (a, question, hedged), (b, _, b_hedged) in zip(said, after)
                if question and not hedged and not b_hedged and not no.match(b)]
    for (a, a_question, a_hedged), (b, b_question, b_hedged) in zip(said, said[1:]):
        if a_hedged or b_hedged:
            continue
        if not a_question:
            windows.append(_Window(((a + " " + b, True),) if not b_question else ((a, True), (b, "certain"))))
        elif b_question:
            windows.append(_Window(((a, "certain"), (b, "certain"))))
        elif no.match(b):
            windows.append(_Window((("never " + a + " " + b, True),), denies=a))    # "no": the question negated
        elif (m := yes.match(b)) is not None:
            windows.append(_Window(((a, True), (b, True)), answer=m.group(0)))
        else:
            windows.append(_Window(((a, "certain"), (b, True))))
    return windows


def _concept_reasons(concepts, window):
    """One reason per concept group of a rule when the window holds every group (else None): the first match in an
    asserted part, or a topic word or certainty frame in a question; a group that takes a certainty frame is met by
    an answer. A window of questions alone must commit by a certainty frame."""
    reasons = []
    for concept in concepts:
        reason = next(((m.lastgroup, m.group(0)) for part, asserted in window.parts for m in concept.finditer(part)
                       if asserted is True or m.lastgroup in ("topic", asserted)), None)
        if reason is None and window.answer and "certain" in concept.groupindex:
            reason = ("answer", window.answer)
        if reason is None:
            return None
        reasons.append(reason)
    if all(asserted == "certain" for _, asserted in window.parts) and all(group != "certain" for group, _ in reasons):
        return None
    return tuple(reasons)


def find_promises(text, product):
    """The forbidden promises of `product` that `text` makes (their rule names; `explain_promises` says why)."""
    return [promise.rule for promise in explain_promises(text, product)]


# ----------------------------------------------------------------------------------------------
# Speech: is an utterance said in the world's language, or a bag of its words?
# Two word-bigram language models of the world's speech (every template and phrasing of world/, filled), trained
# here on first use: one over the words themselves, one over word classes (function words stay themselves,
# every other word becomes its suffix class, so a paraphrase with new words still reads as English). A
# sentence's score is the mean over its words of log P(w | previous) - log P(w), start and end included: how
# much more likely the words are in their order than drawn on their own. An utterance is speech when
#   * at least FUNCTION_SHARE of its words are function words (a list of keywords, numbers or names has none), and
#   * it reads like the world's lines (word score at least WORD_SCORE), or its order beats its own shuffles
#     (class score + class score - mean class score of SHUFFLES fixed shuffles at least ORDER_SCORE).
# Shuffled, sorted or reversed words and two moves interleaved break the pairs the models know; names and
# numbers read as one word each ("qname", "qnum"); commas are not read; .?!;: end a sentence.

SPEECH_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[.?!;:]")
FUNCTION_WORDS = frozenset("""
a an the this that these those my your our their his her its i i'm i'll i'd i've you you're you'll you'd
you've here's there's that's what's it'll we we're we'll we've they they're it it's he she me us them him what
which who whom whose when where why how whether if then than so because as since while until unless though
although and or but nor yet also too either neither not no never only just even still already again to of in
on at by for with from about into onto over under after before between through during without within around
across per up down out off is are was were be been being am do does did doing done have has had having will
would shall should can could may might must there here let's all any some each every both more most less few
many much such very quite really rather one two three four five six seven eight nine ten first next last other
another same own yes okay ok sure please thanks thank hello hi goodbye
""".split())
FUNCTION_SHARE = 0.15  # of the words of an utterance (names and numbers aside), at least
WORD_SCORE = 0.75      # nats per word: the world's own lines score well above, jumbled words well below
ORDER_SCORE = -0.3     # nats per word, for the class model's score plus its gain over shuffles
SHUFFLES = 8


def _word_class(word):
    if word in FUNCTION_WORDS or word in ("qnum", "qname"):
        return word
    for suffix in ("ing", "ed", "ly", "'s", "s"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            return "~" + suffix
    return "~"


def _speech_sentences(text):
    """The sentences of `text` as word lists, names and numbers masked."""
    _, text = _find_product_names(text)
    text = NUMBER.sub(" qnum ", _world_value_pattern().sub(" qname ", _people_patterns()[0].sub(" qname ", text)))
    sentences, words = [], []
    for token in SPEECH_TOKEN.findall(text.lower()):
        if token in ".?!;:":
            sentences, words = (sentences + [words] if words else sentences), []
        else:
            words.append(token)
    return sentences + [words] if words else sentences


@lru_cache(maxsize=1)
def world_lines():
    """(intent, text) for every utterance of world/, filled with each product's sheet and a stand-in profile: the
    salesperson's lines and the hand-written phrasings with their intent, and with None the salesperson's
    thoughts, the customer's lines and the careless promises. The speech models and the intent classifier are
    trained on them (built once: callers read, never change, the list)."""
    world = load_world()
    lines = [(None, t) for t in world.promise_thoughts]
    lines += [(None, s) for sentences in world.promise_sentences.values() for s in sentences]
    for domain, products in sorted(world.products.items()):
        ranges = world.personas["domains"][domain]
        profile = {"name": f"{world.personas['first_names'][0]} {world.personas['surnames'][0]}", "city": "Milton",
                   **{key: 1 for key in ranges["visible_ranges"]}}
        if ranges["name_field"]:
            first, second = ranges["name_parts"][0][0], ranges["name_parts"][1][0]
            profile.update({ranges["name_field"]: f"{first} {second}", "business_type": second.lower()})
        for product in products:
            slots = slot_values(product, profile)
            for intent, entry in world.sales_templates.items():
                said = domain_texts(entry["texts"], domain) + domain_texts(world.phrasings.get(intent, {"any": []}),
                                                                            domain)
                lines += [(intent, fill(t, slots)) for t in said] + [(None, fill(t, slots)) for t in entry["thoughts"]]
            for by_domain in world.customer_templates.values():
                lines += [(None, fill(t, slots)) for t in domain_texts(by_domain, domain)]
    return lines


@lru_cache(maxsize=2)
def _speech_model(classes):
    """Bigram and unigram counts of the world's lines (over word classes if `classes`), Witten-Bell weights."""
    pairs, unigrams = Counter(), Counter()
    for _, text in world_lines():
        for words in _speech_sentences(text):
            sequence = ["<s>"] + [_word_class(w) if classes else w for w in words] + ["</s>"]
            pairs.update(zip(sequence, sequence[1:]))
            unigrams.update(sequence[1:])
    contexts, followers = Counter(), Counter()
    for (previous, _), count in pairs.items():
        contexts[previous] += count
        followers[previous] += 1
    return pairs, unigrams, contexts, followers, sum(unigrams.values()) + len(unigrams) + 1


def _log_ratio(sequence, model):
    """Sum over the pairs of `sequence` of log P(word | previous) - log P(word)."""
    pairs, unigrams, contexts, followers, total = model
    gain = 0.0
    for previous, word in zip(sequence, sequence[1:]):
        unigram = (unigrams[word] + 1) / total               # add-one: an unknown word is rare, never impossible
        seen = contexts[previous]
        weight = seen / (seen + followers[previous]) if seen else 0.0   # Witten-Bell: trust a busy context
        bigram = weight * pairs[previous, word] / seen + (1 - weight) * unigram if seen else unigram
        gain += math.log(bigram / unigram)
    return gain


def _as_sequence(sentences):
    return [token for words in sentences for token in ["<s>"] + words + ["</s>"]]


@lru_cache(maxsize=8192)
def speech_scores(text):
    """(share of function words, word score, order score) of `text`; see the section's comment."""
    sentences = _speech_sentences(text)
    words = [w for s in sentences for w in s]
    if not words:
        return 0.0, -math.inf, -math.inf
    content = [w for w in words if w not in ("qnum", "qname")]     # a name or number is neither kind of word
    share = sum(w in FUNCTION_WORDS for w in content) / max(len(content), 1)
    pairs = len(words) + len(sentences)
    word_score = _log_ratio(_as_sequence(sentences), _speech_model(False)) / pairs
    classed = [[_word_class(w) for w in s] for s in sentences]
    class_score = _log_ratio(_as_sequence(classed), _speech_model(True)) / pairs
    rng, shuffled, classes = random.Random(zlib.crc32(text.encode())), [], [w for s in classed for w in s]
    for _ in range(SHUFFLES):        # the same words in random order, the same number of sentences
        tokens = classes[:]
        rng.shuffle(tokens)
        cuts = sorted(rng.sample(range(1, len(tokens)), min(len(classed), len(tokens)) - 1)) if len(tokens) > 1 else []
        pieces = [tokens[a:b] for a, b in zip([0] + cuts, cuts + [len(tokens)])]
        shuffled.append(_log_ratio(_as_sequence(pieces), _speech_model(True)) / pairs)
    return share, word_score, 2 * class_score - sum(shuffled) / len(shuffled)


def is_speech(text):
    """Whether `text` is said in the world's language rather than being a bag of its words (speech_scores)."""
    share, word_score, order_score = speech_scores(text)
    return share >= FUNCTION_SHARE and (word_score >= WORD_SCORE or order_score >= ORDER_SCORE)


# ----------------------------------------------------------------------------------------------
# The intent classifier: which salesperson intent an utterance carries.
# Naive Bayes over words and the word pairs of each sentence, trained on the world's lines of each move
# (templates.json and the hand-written phrasings.json, filled for every product): every intent equally likely
# before the words are read, each word and pair then votes with log P(feature | intent), add-ALPHA smoothed.
# Names, numbers and product names read as placeholders, a question mark as a word of its own, and bare
# number lists not at all, so two replies that make one move with other values read alike. Only speech is
# classified.

WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
ALPHA = 0.1            # add-alpha smoothing of the feature counts


def without_lists(text):
    """`text` without its clauses that hold no word (a bare list of numbers: "$65, 12, 7."). Such a clause says
    nothing about anything, so it is no part of a move (the classifier) or of its phrasing (the reward's
    similarity); the claim checker still counts its numbers, as claims with no subject."""
    pieces = re.split(r"([.?!;:,](?!\d))", text) + [""]        # clause, separator, clause, separator, ...
    return "".join(clause + separator for clause, separator in zip(pieces[::2], pieces[1::2])
                   if WORD.search(NUMBER.sub(" ", clause.lower())) or not NUMBER.search(clause))


def _intent_features(text):
    """The words of `text` as the classifier reads them, and the word pairs of each sentence (its start and end
    included: "<s> shall", "minute </s>")."""
    text = _catalogue_names()[1].sub(" qproduct ", without_lists(text))
    text = NUMBER.sub(" qnum ", _world_value_pattern().sub(" qname ", _people_patterns()[0].sub(" qname ", text)))
    features = ["qquestion"] if "?" in text else []
    for sentence in re.split(r"[.?!;:]", text.lower()):
        words = WORD.findall(sentence)
        sequence = ["<s>"] + words + ["</s>"]
        features += words + [f"{a} {b}" for a, b in zip(sequence, sequence[1:])] if words else []
    return features


@lru_cache(maxsize=1)
def _intent_model():
    """{intent: {feature: log P(feature | intent)}} over the features of world_lines(), and per intent the
    log-probability of a feature it never had."""
    counts = {intent: Counter() for intent in SALES_INTENTS}
    for intent, text in world_lines():
        if intent is not None:
            counts[intent].update(_intent_features(text))
    vocabulary = set().union(*counts.values())
    model, unseen = {}, {}
    for intent, count in counts.items():
        total = sum(count.values()) + ALPHA * len(vocabulary)
        model[intent] = {feature: math.log((count[feature] + ALPHA) / total) for feature in count}
        unseen[intent] = math.log(ALPHA / total)
    return model, unseen, vocabulary


@lru_cache(maxsize=4096)
def classify_sales_intent(text, stage=None):
    """The salesperson intent of `text` (a key of SALES_INTENTS), or INCOHERENT when it is not speech. `stage`,
    the stage the call is in, only breaks ties in favour of intents the transition table allows. Speech with
    no word the world's lines use is a generic pitch."""
    if not is_speech(without_lists(text)):         # a list is no part of the move; a list alone is no speech
        return INCOHERENT
    model, unseen, vocabulary = _intent_model()
    features = [f for f in _intent_features(text) if f in vocabulary]
    if not features:
        return "generic_pitch"

    def score(intent):
        votes = sum(model[intent].get(f, unseen[intent]) for f in features)
        return votes + (1e-6 if stage is not None and is_legal_move(intent, stage) else 0.0)
    return max(SALES_INTENTS, key=score)
