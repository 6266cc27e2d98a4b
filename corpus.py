"""TeleSalesCorpus: the schema of a simulated sales call, its validation, and calls -> training samples.

AI-Salesman (arXiv 2511.12133) trains on a corpus of telemarketing calls whose salesperson turns carry
a stage, an intent, a private thought and the Manager's labels. This module writes down the schema of
such a call in the vocabulary of sales.py (stages, intents, outcomes, rules); it validates a JSONL corpus
line by line (errors name the file, the line and the field), splits it by call, turns one call into one
training sample per salesperson turn (a ChatML prompt rendered by tokenizer.render_chat, the target
reply A*, its thought, stage, intent and labels), and renders whole calls as plain text for pretraining
the base model in exactly the chat format the policy is later prompted with.

Left out on purpose: the paper's Chinese corpus and its human annotation (we simulate our own, see
simulate.py), and any JSON-schema library: the schema is small enough to check by hand, with better
messages. The format is described in docs/design.md, "The corpus format".

CLI:
    python corpus.py split IN --train OUT1 --test OUT2 [--test-fraction 0.1] [--holdout-domain D] [--seed 0]
    python corpus.py validate PATH [--skip-invalid]
"""

import argparse
import json
import random
import sys
from dataclasses import dataclass

from files import write_jsonl
from sales import (
    CUSTOMER_INTENTS,
    INCOHERENT,
    OUTCOMES,
    ROLES,
    RULES,
    SALES_INTENTS,
    STAGE_TRANSITIONS,
    STAGES,
    slot_values,
    slotter_for,
)
from tokenizer import THINK_CLOSE, THINK_OPEN, format_assistant, render_chat


# ----------------------------------------------------------------------------------------------
# The fields of a call (their values' vocabulary, stages, intents, outcomes and rules, is sales.py's).

PRODUCT_LIST_FIELDS = ("features", "eligibility", "forbidden_promises")
PRODUCT_FIELDS = {"id": str, "name": str, "domain": str, "price": (int, float), "currency": str,
                  "billing": str, "term_months": int}
HIDDEN_FIELDS = {"budget": (int, float), "temperament": str, "needs": list, "objections": list,
                 "patience": int}


class CorpusError(ValueError):
    """A corpus line that does not follow the schema; the message names the file, line and field."""


# ----------------------------------------------------------------------------------------------
# Validation: one call (a parsed JSON line) against the schema. Errors carry the field's path.

def _type_name(types):
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join({int: "integer", float: "number", str: "string", bool: "boolean", list: "list",
                        dict: "object"}[t] for t in types)


def _check_type(value, types, field):
    types = types if isinstance(types, tuple) else (types,)
    is_bool = isinstance(value, bool)
    if (is_bool and bool not in types) or not isinstance(value, types):
        raise CorpusError(f"field '{field}': expected {_type_name(types)}, got {type(value).__name__} {value!r:.60}")


def _require(obj, key, types, path):
    field = f"{path}.{key}" if path else key
    if key not in obj:
        raise CorpusError(f"field '{field}': missing")
    _check_type(obj[key], types, field)
    return obj[key]


def _check_enum(value, allowed, field):
    if value not in allowed:
        raise CorpusError(f"field '{field}': {value!r} is not one of {', '.join(allowed)}")


def _check_flat_scalars(obj, path, allow_lists=()):
    for key, value in obj.items():
        if key in allow_lists:
            _check_type(value, list, f"{path}.{key}")
            for i, item in enumerate(value):
                _check_type(item, str, f"{path}.{key}[{i}]")
        else:
            _check_type(value, (str, int, float), f"{path}.{key}")


def validate_call(call):
    """Raise CorpusError (message starts with the offending field) unless `call` follows the schema."""
    _check_type(call, dict, "<call>")
    _require(call, "id", str, "")
    domain = _require(call, "domain", str, "")
    product = _require(call, "product", dict, "")
    for key, types in PRODUCT_FIELDS.items():
        _require(product, key, types, "product")
    for key in PRODUCT_LIST_FIELDS:
        _require(product, key, list, "product")
    _check_flat_scalars(product, "product", allow_lists=PRODUCT_LIST_FIELDS)
    if product["domain"] != domain:
        raise CorpusError(f"field 'product.domain': {product['domain']!r} differs from the call's domain {domain!r}")
    customer = _require(call, "customer", dict, "")
    visible = _require(customer, "visible", dict, "customer")
    _require(visible, "name", str, "customer.visible")
    _check_flat_scalars(visible, "customer.visible")
    hidden = _require(customer, "hidden", dict, "customer")
    for key, types in HIDDEN_FIELDS.items():
        _require(hidden, key, types, "customer.hidden")
    _check_enum(_require(call, "outcome", str, ""), OUTCOMES, "outcome")
    turns = _require(call, "turns", list, "")
    if not turns:
        raise CorpusError("field 'turns': empty")
    previous_stage = None
    for i, turn in enumerate(turns):
        path = f"turns[{i}]"
        _check_type(turn, dict, path)
        role = _require(turn, "role", str, path)
        _check_enum(role, ROLES, f"{path}.role")
        if not _require(turn, "text", str, path).strip():
            raise CorpusError(f"field '{path}.text': empty")
        stage = _require(turn, "stage", str, path)
        _check_enum(stage, STAGES, f"{path}.stage")
        intent = _require(turn, "intent", str, path)
        _check_enum(intent, tuple(SALES_INTENTS) + (INCOHERENT,) if role == "sales" else CUSTOMER_INTENTS,
                    f"{path}.intent")
        if role == "sales":
            _require(turn, "thought", str, path)
            labels = _require(turn, "labels", dict, path)
            _require(labels, "on_stage", bool, f"{path}.labels")
            _require(labels, "faithful", bool, f"{path}.labels")
            if "rule_broken" not in labels:
                raise CorpusError(f"field '{path}.labels.rule_broken': missing")
            if labels["rule_broken"] is not None:
                _check_enum(labels["rule_broken"], RULES, f"{path}.labels.rule_broken")
        if previous_stage is not None and stage not in STAGE_TRANSITIONS[previous_stage]:
            raise CorpusError(f"field '{path}.stage': {previous_stage} -> {stage} is not an allowed transition")
        previous_stage = stage


def load_corpus(path, skip_invalid=False):
    """Read a JSONL corpus and validate every line. Returns the list of calls.

    A bad line raises CorpusError naming the file, the line number and the field; with skip_invalid=True
    bad lines are skipped and their count is reported on stderr (never silently)."""
    calls, seen_ids, skipped = [], {}, 0
    with open(path, "rb") as handle:   # bytes: a line that is not UTF-8 is reported like any other bad line
        for line_number, raw in enumerate(handle, start=1):
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise CorpusError(f"not UTF-8 (byte 0x{raw[error.start]:02x} at byte {error.start + 1} of the "
                                      "line)") from None
                if not line.strip():
                    continue
                try:
                    call = json.loads(line)
                except json.JSONDecodeError as error:
                    raise CorpusError(f"not valid JSON ({error.msg} at column {error.colno})") from None
                validate_call(call)
                if call["id"] in seen_ids:
                    raise CorpusError(f"field 'id': {call['id']!r} already used on line {seen_ids[call['id']]}")
            except CorpusError as error:
                if not skip_invalid:
                    raise CorpusError(f"{path}:{line_number}: {error}") from None
                skipped += 1
                continue
            seen_ids[call["id"]] = line_number
            calls.append(call)
    if skipped:
        print(f"{path}: skipped {skipped} invalid line(s)", file=sys.stderr)
    return calls


def write_corpus(path, calls):
    """Write calls as JSONL, atomically (files.write_jsonl): a failed write leaves the old file."""
    write_jsonl(path, calls)


def split_calls(calls, test_fraction=0.1, holdout_domain=None, seed=0):
    """Split by call (never by turn). A held-out domain goes entirely to the test split; the other
    domains are shuffled with `seed` and split by `test_fraction`. Returns (train, test), each in the
    input's order."""
    if holdout_domain is not None and not any(call["domain"] == holdout_domain for call in calls):
        raise ValueError(f"--holdout-domain {holdout_domain!r}: no call has that domain")
    held_out = [i for i, call in enumerate(calls) if call["domain"] == holdout_domain]
    rest = [i for i, call in enumerate(calls) if call["domain"] != holdout_domain]
    random.Random(seed).shuffle(rest)
    test_ids = set(held_out) | set(rest[:round(len(rest) * test_fraction)])
    train = [call for i, call in enumerate(calls) if i not in test_ids]
    test = [call for i, call in enumerate(calls) if i in test_ids]
    return train, test


# ----------------------------------------------------------------------------------------------
# Prompts: the system prompt, the chat history, and training samples.

def system_prompt(product, visible, slots=False):
    """The salesperson's instructions: its role, the product sheet and the visible customer profile,
    every value written the way it is spoken (sales.slot_values: '$49', 'a, b and c'). With `slots` the model
    writes values as slots (tokenizer.ChatTokenizer.slots): each line names its slot beside the value
    ('- {price} = $49'), so a reader of the prompt sees both what the model knows and what it writes."""
    spoken = slot_values(product, visible)
    sheet_keys = [key for key in product if key not in ("id", "domain", "currency", "forbidden_promises")]
    slot_names = ["product" if key == "name" else key for key in sheet_keys]

    def line(key, slot):
        return f"- {{{slot}}} = {spoken[slot]}" if slots else f"- {key}: {spoken[slot]}"

    sheet = "\n".join(line(key, slot) for key, slot in zip(sheet_keys, slot_names))
    profile = "\n".join(line(key, key) for key in visible)
    values = " Write each value below as its {slot}." if slots else ""
    return (f"You are a telesales agent. Use only the facts below.{values} Think in one sentence inside "
            f"{THINK_OPEN}{THINK_CLOSE}, then reply in one or two sentences.\n"
            f"Product:\n{sheet}\nNever promise: {'; '.join(product['forbidden_promises'])}\n"
            f"Customer:\n{profile}")


def written(text, product, visible, slots):
    """A salesperson's text as the model writes it: with `slots`, this call's values replaced by their slots
    (sales.Slotter); a text whose value two slots share (a 3-month term and 3 activation days) stays as
    spoken, since no slot can be told from the other."""
    if not slots:
        return text
    slotted = slotter_for(product, visible)(text)
    return text if slotted is None else slotted


def chat_messages(product, visible, turns, outlines=None, slots=False):
    """System prompt, then the call so far: customer -> user, salesperson -> assistant (its reply only, as the
    model writes it: `written`). The customer's words are the customer's, values and all.

    outlines: {turn index: text}, DOGA's outline for a salesperson turn (doga.Outline.message), each a system
    message just before the turn it guided; the one at index len(turns) guides the turn about to be spoken and
    comes last. Without outlines the prompt is the plain one."""
    outlines = outlines or {}
    messages = [{"role": "system", "content": system_prompt(product, visible, slots)}]
    for index, turn in enumerate(turns):
        if index in outlines:
            messages.append({"role": "system", "content": outlines[index]})
        sales = turn["role"] == "sales"
        messages.append({"role": "assistant" if sales else "user",
                         "content": written(turn["text"], product, visible, slots) if sales else turn["text"]})
    if len(turns) in outlines:
        messages.append({"role": "system", "content": outlines[len(turns)]})
    return messages


@dataclass
class Sample:
    call_id: str
    turn_index: int      # index of the salesperson turn in call["turns"]
    messages: list       # system + history, ChatML roles
    prompt: str          # render_chat(messages): ends with the open assistant turn
    target_reply: str    # A*, the reply the corpus's salesperson spoke: what the reward compares a completion with
    thought: str         # the thought recorded with it
    stage: str           # the stage after the turn (the Manager's label)
    intent: str
    labels: dict
    domain: str
    product: dict
    visible: dict
    stage_before: str    # the stage the call was in when the salesperson spoke: the Manager judges the move by it


def training_samples(call, outlines=None, slots=False):
    """One Sample per salesperson turn of `call`. With outlines ({turn index: text}, see chat_messages) each
    prompt carries DOGA's outline before every salesperson turn so far and before the one to speak. With
    `slots` the prompt, the target reply and the thought write values as slots (`written`)."""
    product, visible = call["product"], call["customer"]["visible"]
    samples = []
    for index, turn in enumerate(call["turns"]):
        if turn["role"] != "sales":
            continue
        shown = {i: text for i, text in (outlines or {}).items() if i <= index}
        messages = chat_messages(product, visible, call["turns"][:index], shown, slots)
        stage_before = call["turns"][index - 1]["stage"] if index else STAGES[0]
        samples.append(Sample(call["id"], index, messages, render_chat(messages),
                              written(turn["text"], product, visible, slots),
                              written(turn["thought"], product, visible, slots), turn["stage"], turn["intent"],
                              turn["labels"], call["domain"], product, visible, stage_before))
    return samples


def call_messages(call, outlines=None, slots=False):
    """A whole call as chat messages, salesperson turns as `<think>thought</think>\\nreply` (outlines and slots as
    in chat_messages): what the base model is pretrained on, in the exact format the policy is prompted and
    answers in."""
    product, visible = call["product"], call["customer"]["visible"]
    messages = chat_messages(product, visible, call["turns"], outlines, slots)
    answers = iter(format_assistant(written(t["thought"], product, visible, slots),
                                    written(t["text"], product, visible, slots))
                   for t in call["turns"] if t["role"] == "sales")
    return [{"role": "assistant", "content": next(answers)} if m["role"] == "assistant" else m for m in messages]


def render_call_text(call, outlines=None, slots=False):
    """call_messages rendered as one ChatML text."""
    return render_chat(call_messages(call, outlines, slots), add_generation_prompt=False)


# ----------------------------------------------------------------------------------------------
# CLI

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    split = commands.add_parser("split", help="split a corpus by call into train and test files")
    split.add_argument("input")
    split.add_argument("--train", required=True)
    split.add_argument("--test", required=True)
    split.add_argument("--test-fraction", type=float, default=0.1)
    split.add_argument("--holdout-domain", default=None, help="put every call of this domain in the test split")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--skip-invalid", action="store_true")
    validate = commands.add_parser("validate", help="check every line of a corpus")
    validate.add_argument("path")
    validate.add_argument("--skip-invalid", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "validate":
            calls = load_corpus(args.path, skip_invalid=args.skip_invalid)
            print(f"{args.path}: {len(calls)} valid calls")
            return 0
        if not 0.0 <= args.test_fraction < 1.0:
            parser.error("--test-fraction must be in [0, 1)")
        calls = load_corpus(args.input, skip_invalid=args.skip_invalid)
        train, test = split_calls(calls, args.test_fraction, args.holdout_domain, args.seed)
        write_corpus(args.train, train)
        write_corpus(args.test, test)
        print(f"{args.input}: {len(train)} train calls -> {args.train}, {len(test)} test calls -> {args.test}")
        return 0
    except (CorpusError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
