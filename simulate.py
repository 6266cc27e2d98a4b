"""The data engine of AI-Salesman (arXiv 2511.12133): three agents write a corpus of sales calls.

* The **Customer** has a persona (a visible profile with concrete numbers; hidden budget, temperament,
  needs, objections and patience) and a hidden state (interest, open objections, patience left). It
  reacts to the salesperson's *words*: `sales.classify_sales_intent` reads what the utterance does and
  `sales.check_claims` reads what it asserts, so a model's free-form reply can be played against it.
* The **Salesperson** thinks one short sentence, then speaks, following the stage plan and quoting the
  real numbers of the product sheet and visible profile. A share of its turns (`noise`, default 0.2) are
  realistic mistakes: a wrong number or product, a forbidden promise, a pushy or generic line, a skipped stage.
* The **Manager** adjudicates the true stage (`sales.stage_move`), labels every salesperson turn
  (on-stage, faithful, which rule broken) with the same claim checker the faithfulness reward uses
  (`sales.check_claims`, the one place), ends the call and decides its outcome.

The rules all three agents follow (stages, intents, world/, the claim checker, the intent classifier)
live in sales.py; this module only plays the agents.

`Call` is one call advanced a reply at a time (`step`), and `run_call` plays one to its end: the scripted
Salesperson writes the corpus through it, and the evaluation plays many calls together, a batch of replies
per turn, against the same simulated Customer.

The Manager is rule-based on purpose: its labels must come from the same checker the reward uses, not from
another model's opinion.

Left out on purpose: the paper's LLM-written persona pool and human review; our personas come from a
generator with ranges (world/personas.json), which keeps every number checkable. And agents voiced by a
language model: every line comes from world/'s templates, so the corpus is fast, deterministic and offline.
See docs/design.md, "Data engine".

CLI:
    python simulate.py --dialogues N --seed S --out PATH [--noise P] [--domains A,B]
    python simulate.py --config CONFIG --out PATH       (N, S and P from the config's data section)
    python simulate.py --config CONFIG --recipe PATH    (write what the corpus is made from, if it changed)
    python simulate.py --stats PATH

`--recipe` is how `make data` notices a stale corpus: it writes the parameters (a JSON object) to PATH
only when they differ from what PATH holds, so PATH's date changes exactly when the corpus must be
simulated again, and make rebuilds the corpus when PATH is newer than it.
"""

import argparse
import json
import math
import random
import sys
from collections import Counter

from tqdm import tqdm

from config import ConfigError, DataConfig, load_config
from corpus import CorpusError, load_corpus, write_corpus
from files import write_json
from sales import (
    INCOHERENT,
    OUTCOMES,
    SALES_INTENTS,
    SLOT,
    STAGES,
    check_claims,
    classify_sales_intent,
    customer_reaction,
    domain_texts,
    fill,
    is_legal_move,
    load_world,
    slot_values,
    speak_value,
    stage_move,
)


MAX_TURNS = 20        # the Manager ends a call that runs this long (outcome: declined)
DEFAULT_NOISE = DataConfig.noise


# ----------------------------------------------------------------------------------------------
# Personas: one customer drawn from the ranges of world/personas.json.

def _draw(spec, rng):
    if isinstance(spec, list):
        return rng.randint(spec[0], spec[1])
    if "choices" in spec:
        return rng.choice(spec["choices"])
    low, high = spec["range"]
    if "decimals" in spec:
        return round(rng.uniform(low, high), spec["decimals"])
    step = spec["round_to"]
    return rng.randint(low // step, high // step) * step


PERSONA_POOLS = ("training", "evaluation")


def make_persona(domain, product, rng, pool="training"):
    """{"visible": {...}, "hidden": {...}}: a customer of `domain` who is being offered `product`.

    pool: whose names the customer gets. "training" (the corpus) draws from the top-level lists of
    world/personas.json; "evaluation" from its "evaluation" section, names no training call has, so an
    evaluation customer is nobody the model was trained on. Everything else is drawn the same way."""
    if pool not in PERSONA_POOLS:
        raise ValueError(f"unknown persona pool {pool!r} (known: {', '.join(PERSONA_POOLS)})")
    world = load_world()
    spec, ranges = world.personas, world.personas["domains"][domain]
    names = spec if pool == "training" else spec["evaluation"]
    visible = {"name": f"{rng.choice(names['first_names'])} {rng.choice(names['surnames'])}"}
    if ranges["name_field"]:
        parts = names["domains"][domain]["name_parts"]
        first, second = rng.choice(parts[0]), rng.choice(parts[1])
        visible[ranges["name_field"]] = f"{first} {second}"
        if ranges["name_field"] == "business":
            visible["business_type"] = second.lower()
    visible["city"] = rng.choice(spec["cities"])
    for key, range_spec in ranges["visible_ranges"].items():
        visible[key] = _draw(range_spec, rng)
    temperaments = list(spec["temperaments"])
    temperament = rng.choices(temperaments, weights=[spec["temperaments"][t]["weight"] for t in temperaments])[0]
    budget = rng.randint(*ranges["budget"])
    preferred = {"skeptical": "trust", "busy": "timing", "price_sensitive": "price"}.get(temperament)
    count = rng.choice([0, 0, 1, 1, 2])
    objections = ([preferred] if preferred and count else []) + rng.sample(spec["objection_types"], count)
    objections = list(dict.fromkeys(objections))[:count]
    if product["price"] > budget and "price" not in objections:
        objections.insert(0, "price")
    hidden = {"budget": budget, "temperament": temperament,
              "needs": rng.sample(sorted(ranges["needs"]), rng.choice([1, 2])),
              "objections": objections,
              "patience": rng.randint(*spec["temperaments"][temperament]["patience"])}
    return {"visible": visible, "hidden": hidden}


# ----------------------------------------------------------------------------------------------
# The Manager: true stage, labels, end of call, outcome.

class Manager:
    def __init__(self, product, visible):
        self.product, self.visible = product, visible
        self.stage = "opening"

    def label_turn(self, text):
        """Label one salesperson utterance and move the stage. Returns (intent, stage, labels)."""
        intent = classify_sales_intent(text, self.stage)
        check = check_claims(text, self.product, self.visible)
        if check.forbidden:
            rule = "forbidden_promise"
        elif check.unsupported:
            rule = "wrong_fact"
        elif intent == INCOHERENT:
            rule = "incoherent"
        elif intent == "pressure_close":
            rule = "pushy"
        elif intent == "generic_pitch":
            rule = "generic"
        elif not is_legal_move(intent, self.stage):
            ahead = STAGES.index(SALES_INTENTS[intent]) > STAGES.index(self.stage)
            rule = "skipped_stage" if ahead else "stage_regression"
        else:
            rule = None
        on_stage, self.stage = stage_move(intent, self.stage)
        labels = {"on_stage": on_stage, "faithful": not check.forbidden and not check.unsupported,
                  "rule_broken": rule}
        return intent, self.stage, labels

    @staticmethod
    def outcome(customer):
        if customer.accepted:
            return "converted"
        return "hung_up" if customer.hung_up else "declined"


# ----------------------------------------------------------------------------------------------
# The Customer: reacts to what the salesperson says.

PRODUCT_TALK = ("present_product", "explain_features", "explain_pricing")


def acceptance_probability(interest):
    return 1.0 / (1.0 + math.exp(-10.0 * (interest - 0.6)))


class Customer:
    """Hidden state: interest in [0, 1], objections not yet raised, the open one, patience left."""

    def __init__(self, persona, product, rng):
        world = load_world()
        self.visible, hidden = persona["visible"], persona["hidden"]
        self.product, self.rng = product, rng
        self.domain = product["domain"]
        self.patience = hidden["patience"]
        self.pending = list(hidden["objections"])
        self.open_objection = None
        needs = world.personas["domains"][self.domain]["needs"]
        fits = any(product["id"] in needs.get(need, ()) for need in hidden["needs"])
        self.interest = (world.personas["temperaments"][hidden["temperament"]]["interest"]
                         + (0.1 if fits else -0.05) - (0.1 if product["price"] > 1.5 * hidden["budget"] else 0.0))
        self.temperament = hidden["temperament"]
        self.heard = Counter()
        self.accepted = self.declined = self.hung_up = False

    def respond(self, text, stage_before, history):
        """React to one salesperson utterance. Returns (intent, text)."""
        intent = classify_sales_intent(text, stage_before)
        check = check_claims(text, self.product, self.visible)
        gain, annoyance, reaction, answered = customer_reaction(intent, bool(check.forbidden or check.unsupported),
                                                                stage_before, self.heard[intent], self.open_objection)
        self.heard[intent] += 1
        if answered:
            self.open_objection = None
        self.interest = min(1.0, max(0.0, self.interest + gain + self.rng.gauss(0.0, 0.03)))
        self.patience -= annoyance
        if self.patience <= 0:
            self.hung_up = True
            reply_intent = "hang_up"
        else:
            reply_intent = reaction or self._next_move(intent)
        return reply_intent, self._say(reply_intent, history)

    def _raise_objection(self):
        self.open_objection = self.pending.pop(0)
        return f"raise_{self.open_objection}_objection"

    def _decide(self):
        """Asked for the commitment with nothing left to object: yes with a probability rising with interest."""
        if self.rng.random() < acceptance_probability(self.interest):
            self.accepted = True
            return "accept"
        self.declined = True
        return "decline"

    def _next_move(self, intent):
        rng = self.rng
        if intent == "greet_and_introduce":
            return "busy_brush_off" if self.temperament == "busy" else "greet_back"
        if intent == "ask_business_situation":
            return "describe_business"
        if intent == "diagnose_with_numbers":
            return "agree_with_diagnosis"
        if self.open_objection is not None and intent != "ask_for_commitment":
            return "repeat_objection"
        asked_to_commit = self.heard["ask_for_commitment"] > 0
        if intent == "ask_for_commitment" or (intent.startswith("handle_") and asked_to_commit):
            if self.open_objection is not None:
                return "repeat_objection"
            if self.pending:
                return self._raise_objection()
            return self._decide()
        if intent in PRODUCT_TALK or intent.startswith("handle_"):
            if self.pending and rng.random() < 0.85:
                return self._raise_objection()
            if intent == "present_product" and not self.heard["explain_pricing"] and rng.random() < 0.15:
                return "ask_price"
            if intent == "present_product" and not self.heard["explain_features"] and rng.random() < 0.15:
                return "ask_details"
            if self.interest >= 0.4:
                return "ask_how_to_start" if rng.random() < 0.35 else "show_interest"
            return "acknowledge"
        if intent == "explain_signup_steps" and not self.heard["explain_activation"] and rng.random() < 0.4:
            return "ask_activation"
        return "acknowledge"

    def _say(self, intent, history):
        world = load_world()
        text = fill(self.rng.choice(domain_texts(world.customer_templates[intent], self.domain)),
                    slot_values(self.product, self.visible))
        return text


# ----------------------------------------------------------------------------------------------
# The scripted Salesperson: the stage plan, real numbers, and (with probability `noise`) a mistake.

PLAN = ("greet_and_introduce", "ask_business_situation", "diagnose_with_numbers", "present_product",
        "ask_for_commitment")
ANSWERS = {"ask_price": "explain_pricing", "ask_details": "explain_features", "ask_activation": "explain_activation",
           "accept": "confirm_next_steps", "decline": "polite_goodbye"}
SKIP_TARGETS = ("present_product", "explain_pricing", "explain_signup_steps", "ask_for_commitment")


class Salesperson:
    """salesperson_fn for run_call: (call so far) -> (thought, reply), from templates."""

    def __init__(self, product, visible, rng, noise=DEFAULT_NOISE):
        self.product, self.visible, self.rng, self.noise = product, visible, rng, noise
        self.slots = slot_values(product, visible)

    def next_intent(self, turns):
        """What a good salesperson does next, given the call so far."""
        if not turns:
            return "greet_and_introduce"
        done = {t["intent"] for t in turns if t["role"] == "sales" and t["labels"]["on_stage"]}
        last = turns[-1]["intent"] if turns[-1]["role"] == "customer" else None
        if last in ANSWERS:
            return ANSWERS[last]
        open_objection = self.open_objection(turns)
        if open_objection:
            return f"handle_{open_objection}_objection"
        if last == "ask_how_to_start" and "explain_signup_steps" not in done:
            return "explain_signup_steps"
        if last == "busy_brush_off" and "state_purpose" not in done:
            return "state_purpose"
        return next((intent for intent in PLAN if intent not in done), "ask_for_commitment")

    @staticmethod
    def open_objection(turns):
        """The objection type the customer raised last, unless an on-stage turn has handled it since."""
        for turn in reversed(turns):
            if turn["role"] == "sales" and turn["labels"]["on_stage"] and turn["intent"].startswith("handle_"):
                return None
            if turn["role"] == "customer" and turn["intent"].startswith("raise_"):
                return turn["intent"][len("raise_"):-len("_objection")]
        return None

    def __call__(self, call_so_far):
        turns = call_so_far["turns"]
        intent = self.next_intent(turns)
        stage = next((t["stage"] for t in reversed(turns) if t["role"] == "sales"), "opening")
        if self.rng.random() < self.noise:
            return self._mistake(intent, stage)
        return self._speak(intent, self.slots)

    def _speak(self, intent, slots, templates=None):
        entry = load_world().sales_templates[intent]
        text = self.rng.choice(templates or domain_texts(entry["texts"], self.product["domain"]))
        return fill(self.rng.choice(entry["thoughts"]), slots), fill(text, slots)

    def _mistake(self, intent, stage):
        """One realistic mistake in place of `intent`; the Manager will label it."""
        world = load_world()
        factual = [t for t in domain_texts(world.sales_templates[intent]["texts"], self.product["domain"])
                   if self._perturbable_slots(t)]
        skip_to = [i for i in SKIP_TARGETS if not is_legal_move(i, stage)
                   and STAGES.index(SALES_INTENTS[i]) > STAGES.index(stage)]
        possible = (("wrong_fact", factual), ("forbidden_promise", self.product["forbidden_promises"]),
                    ("pushy", True), ("generic", True), ("skipped_stage", skip_to))
        kinds = [kind for kind, can in possible if can]
        kind = self.rng.choice(kinds)
        if kind == "wrong_fact":
            return self._wrong_fact(intent, factual)
        if kind == "forbidden_promise":
            _, text = self._speak(intent, self.slots)
            promise = self.rng.choice(self.product["forbidden_promises"])
            thought = self.rng.choice(world.promise_thoughts)   # drawn before the sentence: the corpus relies on it
            return thought, f"{text} {self.rng.choice(world.promise_sentences[promise])}"
        if kind == "pushy":
            return self._speak("pressure_close", self.slots)
        if kind == "generic":
            return self._speak("generic_pitch", self.slots)
        return self._speak(self.rng.choice(skip_to), self.slots)

    def _perturbable_slots(self, template):
        """Slots of `template` whose value can be misstated: numbers of the sheet/profile, the product name."""
        keys = []
        for key in SLOT.findall(template):
            value = self.product.get(key, self.visible.get(key))
            if key == "product" or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                keys.append(key)
        return keys

    def _wrong_fact(self, intent, templates):
        """A template with one number or the product name misstated (a value nothing supports)."""
        world = load_world()
        template = self.rng.choice(templates)
        key = self.rng.choice(self._perturbable_slots(template))
        if key == "product":
            candidates = [p["name"] for p in world.products[self.product["domain"]] if p["id"] != self.product["id"]]
        else:
            value = self.product.get(key, self.visible.get(key))
            scaled = ([value * f for f in (0.5, 0.6, 0.75, 1.25, 1.5, 2.0)]
                      + [value + d for d in (-3, -2, -1, 1, 2, 3, 5, 10)])
            wrong = {round(v, 1) if isinstance(value, float) else round(v) for v in scaled if v > 0} - {value}
            candidates = [speak_value(key, v, world.money_fields) for v in sorted(wrong)]
        self.rng.shuffle(candidates)
        for candidate in candidates:
            thought, text = self._speak(intent, {**self.slots, key: candidate}, [template])
            if check_claims(text, self.product, self.visible).unsupported:
                return thought, text
        raise RuntimeError(f"could not misstate {key!r} of {self.product['id']} in {template!r}")


# ----------------------------------------------------------------------------------------------
# One call: the loop the corpus and the evaluation share.

class Call:
    """One call, advanced one salesperson reply at a time, so that many calls can be played together (the
    evaluation answers every live call's turn in one batch). `view()` is the call so far as the salesperson
    sees it; `step(thought, reply)`: the Manager labels the reply, the Customer answers; returns the
    customer's words (None when the call ended on the reply) and whether the call is over (`note`: fields kept on
    the salesperson's turn, an agent's record of how it made the reply). `record()`: the call in the corpus
    format."""

    def __init__(self, product, persona, rng, call_id="call", max_turns=MAX_TURNS):
        self.product, self.persona, self.call_id, self.max_turns = product, persona, call_id, max_turns
        self.manager = Manager(product, persona["visible"])
        self.customer = Customer(persona, product, rng)
        self.turns, self.over = [], False

    def view(self):
        """The call so far: its id, domain, product, the customer's visible profile and the turns (a copy)."""
        return {"id": self.call_id, "domain": self.product["domain"], "product": self.product,
                "customer": {"visible": self.persona["visible"]}, "turns": list(self.turns)}

    def step(self, thought, reply, note=None):
        if self.over:
            raise RuntimeError(f"{self.call_id}: the call is over; no more replies")
        stage_before = self.manager.stage
        intent, stage, labels = self.manager.label_turn(reply)
        self.turns.append({"role": "sales", "text": reply, "stage": stage, "intent": intent, "thought": thought,
                           "labels": labels, **(note or {})})
        customer = self.customer
        if customer.accepted or customer.declined or len(self.turns) >= self.max_turns:
            self.over = True
            return None, True
        reply_intent, text = customer.respond(reply, stage_before, self.turns)
        self.turns.append({"role": "customer", "text": text, "stage": stage, "intent": reply_intent})
        self.over = customer.hung_up or len(self.turns) >= self.max_turns
        return text, self.over

    def record(self):
        return {"id": self.call_id, "domain": self.product["domain"], "product": self.product,
                "customer": self.persona, "outcome": Manager.outcome(self.customer), "turns": self.turns}


def run_call(product, persona, salesperson_fn, rng, call_id="call", max_turns=MAX_TURNS):
    """Play one call to its end: salesperson_fn(call so far, Call.view()) -> (thought, reply). Returns the
    call dict of the corpus format."""
    call = Call(product, persona, rng, call_id, max_turns)
    while not call.over:
        call.step(*salesperson_fn(call.view()))
    return call.record()


def simulate_call(index, seed, noise=DEFAULT_NOISE, domains=None):
    """Call number `index` of the corpus with `seed`: its own random stream, so calls are independent."""
    world = load_world()
    rng = random.Random(f"{seed}:{index}")
    domain = rng.choice(domains or sorted(world.products))
    product = rng.choice(world.products[domain])
    persona = make_persona(domain, product, rng)
    salesperson = Salesperson(product, persona["visible"], random.Random(f"{seed}:{index}:sales"), noise)
    call_id = f"call-{seed}-{index:06d}"
    return run_call(product, persona, salesperson, rng, call_id)


# ----------------------------------------------------------------------------------------------
# Statistics of a corpus file.

def distinct_n(texts, n=2):
    """Distinct n-grams / all n-grams over whitespace tokens (lower-cased)."""
    grams, total = set(), 0
    for text in texts:
        tokens = text.lower().split()
        for i in range(len(tokens) - n + 1):
            grams.add(tuple(tokens[i:i + n]))
            total += 1
    return len(grams) / total if total else 0.0


def corpus_stats(calls):
    turns_per_call = [len(c["turns"]) for c in calls]
    sales = [t for c in calls for t in c["turns"] if t["role"] == "sales"]
    rules = Counter(t["labels"]["rule_broken"] for t in sales if t["labels"]["rule_broken"])
    outcomes = Counter(c["outcome"] for c in calls)
    return {
        "calls": len(calls),
        "turns_per_call": {"mean": sum(turns_per_call) / len(calls), "min": min(turns_per_call),
                           "max": max(turns_per_call)},
        "salesperson_turns": len(sales),
        "stages": {s: n for s, n in Counter(t["stage"] for c in calls for t in c["turns"]).most_common()},
        "sales_intents": dict(Counter(t["intent"] for t in sales).most_common()),
        "customer_intents": dict(Counter(t["intent"] for c in calls for t in c["turns"]
                                         if t["role"] == "customer").most_common()),
        "outcome_rates": {o: outcomes[o] / len(calls) for o in OUTCOMES},
        "noise_rate": sum(rules.values()) / len(sales),
        "rules_broken": dict(rules.most_common()),
        "off_stage_rate": sum(not t["labels"]["on_stage"] for t in sales) / len(sales),
        "unfaithful_rate": sum(not t["labels"]["faithful"] for t in sales) / len(sales),
        "distinct_2_sales": distinct_n([t["text"] for t in sales], 2),
    }


def print_stats(stats, out=None):
    out = out or sys.stdout
    for key, value in stats.items():
        if isinstance(value, dict):
            print(f"{key}:", file=out)
            for name, number in value.items():
                print(f"  {name:28s} {number:.3f}" if isinstance(number, float) else f"  {name:28s} {number}", file=out)
        else:
            print(f"{key:30s} {value:.3f}" if isinstance(value, float) else f"{key:30s} {value}", file=out)


# ----------------------------------------------------------------------------------------------
# CLI

def generate_corpus(dialogues, seed, noise=DEFAULT_NOISE, domains=None, progress=True):
    return [simulate_call(i, seed, noise, domains)
            for i in tqdm(range(dialogues), desc="simulating calls", unit="call", disable=not progress)]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Simulate sales calls (Customer, Salesperson, Manager) into a JSONL "
                                                 "corpus.")
    parser.add_argument("--config", help="take --dialogues, --seed and --noise from this config's data section")
    parser.add_argument("--dialogues", type=int, help="number of calls to simulate")
    parser.add_argument("--seed", type=int, help=f"default: {DataConfig.seed}")
    parser.add_argument("--out", help="output JSONL path (written atomically)")
    parser.add_argument("--noise", type=float, help=f"share of salesperson turns that are mistakes (default: "
                                                    f"{DataConfig.noise})")
    parser.add_argument("--recipe", metavar="PATH", help="write what the corpus is made from to PATH when it "
                                                         "differs from what PATH holds, and exit")
    parser.add_argument("--domains", default=None, help="comma-separated domains (default: all)")
    parser.add_argument("--stats", metavar="PATH", help="print statistics of a corpus file and exit")
    args = parser.parse_args(argv)
    try:
        if args.stats:
            print_stats(corpus_stats(load_corpus(args.stats)))
            return 0
        data = load_config(args.config).data     # no --config: config.py's defaults; an explicit flag wins
        for key in ("dialogues", "seed", "noise"):
            if getattr(args, key) is None:
                setattr(args, key, getattr(data, key))
        if args.out is None and args.recipe is None:
            parser.error("--out (or --recipe) is required, or --stats PATH")
        if args.recipe:
            update_recipe(args.recipe, {"dialogues": args.dialogues, "seed": args.seed, "noise": args.noise,
                                        "domains": args.domains})
            return 0
        if args.dialogues < 1:
            parser.error("--dialogues must be at least 1")
        if not 0.0 <= args.noise <= 1.0:
            parser.error("--noise must be in [0, 1]")
        world = load_world()
        domains = args.domains.split(",") if args.domains else None
        for domain in domains or ():
            if domain not in world.products:
                parser.error(f"--domains: unknown domain {domain!r} (known: {', '.join(sorted(world.products))})")
        calls = generate_corpus(args.dialogues, args.seed, args.noise, domains)
        write_corpus(args.out, calls)
        print(f"wrote {len(calls)} calls to {args.out}")
        return 0
    except (ConfigError, CorpusError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def update_recipe(path, recipe):
    """Write `recipe` to `path` unless it already holds it (then its date stays: nothing to rebuild)."""
    try:
        with open(path, encoding="utf-8") as handle:
            if json.load(handle) == recipe:
                return
            print(f"{path}: the corpus was made from other parameters, it will be simulated again")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    write_json(path, recipe, indent=1)


if __name__ == "__main__":
    sys.exit(main())
