"""The three-agent simulation: determinism, legal stages, noise, outcomes that follow play, labels that agree
with the product sheets."""
import json
import math
import random
import re
from collections import Counter

import pytest

import simulate
from corpus import load_corpus, validate_call
from sales import (
    MISTAKE_INTENTS,
    OUTCOMES,
    SALES_INTENTS,
    STAGE_TRANSITIONS,
    STAGES,
    check_claims,
    customer_reaction,
    domain_texts,
    fill,
    load_world,
    slot_values,
)
from simulate import generate_corpus, make_persona, run_call


@pytest.fixture(scope="module")
def calls():
    return generate_corpus(400, seed=7, noise=0.3, progress=False)


@pytest.fixture(scope="module")
def clean_and_noisy():
    return (generate_corpus(500, seed=11, noise=0.0, progress=False),
            generate_corpus(500, seed=11, noise=0.6, progress=False))


def sales_turns(calls):
    return [(call, turn) for call in calls for turn in call["turns"] if turn["role"] == "sales"]


# ----------------------------------------------------------------------------------------------
# The generated corpus

def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    paths = [tmp_path / name for name in ("a.jsonl", "b.jsonl", "c.jsonl")]
    for path, seed in zip(paths, (5, 5, 6)):
        assert simulate.main(["--dialogues", "40", "--seed", str(seed), "--out", str(path)]) == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_every_call_validates_and_stages_follow_the_table(calls):
    for call in calls:
        validate_call(call)
        assert call["outcome"] in OUTCOMES
        stages = [turn["stage"] for turn in call["turns"]]
        assert stages[0] == "opening"
        for before, after in zip(stages, stages[1:]):
            assert after in STAGE_TRANSITIONS[before], (call["id"], before, after)
        roles = [turn["role"] for turn in call["turns"]]
        assert roles[::2] == ["sales"] * len(roles[::2]) and set(roles[1::2]) <= {"customer"}


def test_on_stage_means_the_intent_belongs_to_the_adjudicated_stage(calls):
    for call in calls:
        stage = "opening"
        for turn in call["turns"]:
            if turn["role"] != "sales":
                continue
            target = SALES_INTENTS[turn["intent"]]
            expected = target in STAGE_TRANSITIONS[stage] and turn["intent"] not in MISTAKE_INTENTS
            assert turn["labels"]["on_stage"] == expected
            stage = target if expected else stage
            assert turn["stage"] == stage


def test_noise_rate_is_within_tolerance_of_the_setting(calls, clean_and_noisy):
    turns = sales_turns(calls)
    rate = sum(turn["labels"]["rule_broken"] is not None for _, turn in turns) / len(turns)
    standard_error = math.sqrt(0.3 * 0.7 / len(turns))
    assert abs(rate - 0.3) < 4 * standard_error + 0.01, rate
    clean, _ = clean_and_noisy
    assert all(turn["labels"] == {"on_stage": True, "faithful": True, "rule_broken": None}
               for _, turn in sales_turns(clean))
    assert {turn["labels"]["rule_broken"] for _, turn in turns} == {None, "wrong_fact", "forbidden_promise",
                                                                    "pushy", "generic", "skipped_stage"}


def test_a_noise_free_salesperson_converts_significantly_more(clean_and_noisy):
    clean, noisy = clean_and_noisy
    p1 = sum(c["outcome"] == "converted" for c in clean) / len(clean)
    p2 = sum(c["outcome"] == "converted" for c in noisy) / len(noisy)
    pooled = (p1 + p2) / 2
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * 2 / len(clean))
    assert z > 3.0, (p1, p2, z)


def _sheet_facts(call):
    """(every number, every money amount) written in the product sheet or visible profile: an independent reading."""
    sources = [call["product"], call["customer"]["visible"]]
    written = json.dumps(sources)
    numbers = {float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?:\.\d+)?", written)}
    money = {float(n.replace(",", "")) for n in re.findall(r"\$(\d[\d,]*(?:\.\d+)?)", written)}
    money |= {float(v) for source in sources for k, v in source.items() if k in load_world().money_fields}
    return numbers, money


def _claims_hold(text, call):
    numbers, money = _sheet_facts(call)
    said_money = {float(n.replace(",", "")) for n in re.findall(r"\$(\d[\d,]*(?:\.\d+)?)", text)}
    said = {float(n.replace(",", "")) for n in re.findall(r"(?<![\w.$,])\d[\d,]*(?:\.\d+)?", text)}
    return said_money <= money and said <= numbers


def test_faithfulness_labels_agree_with_the_product_sheets(calls):
    world = load_world()
    checked_wrong = 0
    for call, turn in sales_turns(calls):
        product, visible = call["product"], call["customer"]["visible"]
        check = check_claims(turn["text"], product, visible)
        assert turn["labels"]["faithful"] == (not check.forbidden and not check.unsupported)
        others = [p["name"] for ps in world.products.values() for p in ps if p["name"] != product["name"]]
        names_other = any(name in turn["text"] for name in others)
        if turn["labels"]["faithful"]:
            assert _claims_hold(turn["text"], call) and not names_other, turn["text"]
        if turn["labels"]["rule_broken"] == "forbidden_promise":
            sentences = [s for promise in product["forbidden_promises"] for s in world.promise_sentences[promise]]
            assert any(turn["text"].endswith(s) for s in sentences)
        if turn["labels"]["rule_broken"] == "wrong_fact":
            # a number nothing states, another product, or a true number of another subject: then the text is
            # none of its move's templates said with the call's own values
            checked_wrong += 1
            slots = slot_values(product, visible)
            right = {fill(text, slots) for text in domain_texts(world.sales_templates[turn["intent"]]["texts"],
                                                                 product["domain"])}
            assert not _claims_hold(turn["text"], call) or names_other or turn["text"] not in right, turn["text"]
    assert checked_wrong > 20


def replay_customer(persona, turns):
    """The customer of a recorded call after `turns`, rebuilt from the recorded intents and labels alone: (Counter
    of the moves it heard, objections not yet raised, the open objection or None, patience left). An
    independent reading of simulate.Customer.respond's bookkeeping; its interest, which has noise, is not."""
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


def test_a_customer_replayed_from_the_record_is_the_one_that_played(monkeypatch):
    """replay_customer (the customer's state rebuilt from the record) against the live customer of each
    call: before every salesperson turn, the same moves heard, objections not yet raised, open objection and
    patience; and sales.customer_reaction in that state gives the reaction and the hang-up the call recorded."""
    live = {}                                    # turn index -> the live customer's state before that turn
    respond = simulate.Customer.respond

    def recording(self, text, stage_before, history):
        live[len(history) - 1] = (dict(self.heard), list(self.pending), self.open_objection, self.patience)
        return respond(self, text, stage_before, history)

    monkeypatch.setattr(simulate.Customer, "respond", recording)
    reactions = {"challenge_claim", "annoyed", "unimpressed", "confused"}
    checked, reacted = 0, 0
    for index in range(150):
        live.clear()
        call = simulate.simulate_call(index, seed=13, noise=0.4)
        states, turns = dict(live), call["turns"]
        for at, turn in enumerate(turns):
            if turn["role"] != "sales" or at + 1 >= len(turns):
                continue
            heard, pending, open_objection, patience = replay_customer(call["customer"], turns[:at])
            assert (dict(heard), pending, open_objection, patience) == states[at]
            stage_before = turns[at - 1]["stage"] if at else STAGES[0]
            _, annoyance, reaction, _ = customer_reaction(turn["intent"], not turn["labels"]["faithful"],
                                                          stage_before, heard[turn["intent"]], open_objection)
            answer = turns[at + 1]["intent"]
            if answer == "hang_up":
                assert patience - annoyance <= 0
            elif reaction is not None:
                assert answer == reaction
                reacted += 1
            else:
                assert answer not in reactions
            checked += 1
    assert checked > 500 and reacted > 50


def test_an_external_salesperson_plays_against_the_customer():
    world, rng = load_world(), random.Random(0)
    product = world.products["home_broadband"][1]
    persona = make_persona("home_broadband", product, rng)
    seen = []

    def pushy(call_so_far):
        seen.append(call_so_far)
        return "I must push.", "Stop hesitating and let me put you down for it right now."

    call = run_call(product, persona, pushy, random.Random(1))
    validate_call(call)
    assert call["outcome"] == "hung_up" and call["turns"][-1]["intent"] == "hang_up"
    assert all(t["labels"]["rule_broken"] == "pushy" for t in call["turns"] if t["role"] == "sales")
    assert "hidden" not in seen[-1]["customer"] and len(seen[-1]["turns"]) == len(call["turns"]) - 2


def test_stats_cli_prints_the_summary(tmp_path, capsys):
    path = tmp_path / "calls.jsonl"
    arguments = ["--dialogues", "30", "--seed", "1", "--out", str(path), "--domains", "business_insurance"]
    assert simulate.main(arguments) == 0
    assert {c["domain"] for c in load_corpus(path)} == {"business_insurance"}
    capsys.readouterr()
    assert simulate.main(["--stats", str(path)]) == 0
    out = capsys.readouterr().out
    for key in ("calls", "turns_per_call", "stages", "sales_intents", "outcome_rates", "noise_rate",
                "distinct_2_sales"):
        assert key in out
    assert re.search(r"^calls\s+30$", out, re.M)
    for stage in ("opening", "business_analysis"):
        assert stage in STAGES and stage in out


def test_a_stepped_call_equals_run_call_on_the_same_replies():
    """simulate.Call advanced reply by reply, as the evaluation steps it, against run_call with the same
    salesperson and the same random streams: the same call, turn for turn."""
    world = load_world()
    for index in range(40):
        rng = random.Random(f"step:{index}")
        product = rng.choice([p for ps in world.products.values() for p in ps])
        persona = make_persona(product["domain"], product, rng)
        speaker = simulate.Salesperson(product, persona["visible"], random.Random(index), 0.3)
        looped = run_call(product, persona, speaker, random.Random(f"c{index}"), call_id="x")
        call = simulate.Call(product, persona, random.Random(f"c{index}"), call_id="x")
        speaker, heard = simulate.Salesperson(product, persona["visible"], random.Random(index), 0.3), []
        while not call.over:
            words, over = call.step(*speaker(call.view()))
            heard.append(words)
        assert call.record() == looped
        assert [w for w in heard if w is not None] == [t["text"] for t in looped["turns"] if t["role"] == "customer"]
        assert None not in heard[:-1]                          # only the last reply can end the call unanswered
        with pytest.raises(RuntimeError, match="over"):
            call.step("", "One more thing.")
