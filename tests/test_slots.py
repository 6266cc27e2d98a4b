"""Values as slots: the model writes `{price}`, the call's record says it, and everything that judges a reply judges
what the customer hears.

References: the corpus's own spoken turns (written then heard must give them back word for word), hand-made
cases, and the same reply said with values, which every judge must score exactly as its slotted form.
"""
import json
import random

import pytest

from config import RewardConfig
from corpus import chat_messages, system_prompt, training_samples, written
from doga import Agent
from reward import CompositeReward, fit_similarity_embedder
from sales import check_claims, heard, is_good_turn, load_world, slot_values
from simulate import Call, make_persona, simulate_call
from tokenizer import SLOTS_FILE, ChatTokenizer, format_assistant


@pytest.fixture(scope="module")
def calls():
    return [simulate_call(i, seed=11, noise=0.2) for i in range(60)]


def test_a_written_turn_is_heard_as_it_was_said(calls):
    slotted = 0
    for call in calls:
        product, visible = call["product"], call["customer"]["visible"]
        for turn in call["turns"]:
            if turn["role"] == "sales":
                for text in (turn["text"], turn["thought"]):
                    mine = written(text, product, visible, slots=True)
                    assert heard(mine, product, visible) == text
                    slotted += mine != text
    assert slotted > 100                      # the corpus does state the call's values, and they became slots


def test_a_diagnosis_names_slots_not_numbers(calls):
    for call in calls:
        product, visible = call["product"], call["customer"]["visible"]
        for sample in training_samples(call, slots=True):
            if sample.intent == "diagnose_with_numbers" and is_good_turn(sample.labels):
                values = slot_values(product, visible)
                said = [slot for slot, value in values.items() if value.strip() and value in heard(
                    sample.target_reply, product, visible) and slot in visible]
                assert said and all("{" + slot + "}" in sample.target_reply for slot in said), sample.target_reply
                assert not any(ch.isdigit() for ch in sample.target_reply), sample.target_reply
                return
    pytest.fail("no good diagnosis turn in the sample of calls")


def test_the_prompt_shows_values_and_their_slots():
    product = load_world().products["home_broadband"][0]
    visible = make_persona("home_broadband", product, random.Random(0))["visible"]
    raw, slotted = system_prompt(product, visible), system_prompt(product, visible, slots=True)
    assert f"- price: ${product['price']}" in raw and "{" not in raw
    assert f"- {{price}} = ${product['price']}" in slotted and f"- {{name}} = {visible['name']}" in slotted
    messages = chat_messages(product, visible, [{"role": "sales", "text": f"Hello {visible['name']}."},
                                                {"role": "customer", "text": f"I'm {visible['name']}."}], slots=True)
    assert messages[1]["content"] == "Hello {name}." and messages[2]["content"] == f"I'm {visible['name']}."


def test_a_slot_the_call_has_no_value_for_is_an_unsupported_claim():
    product = load_world().products["home_broadband"][0]
    visible = make_persona("home_broadband", product, random.Random(1))["visible"]
    assert heard("Only {price} {billing}.", product, visible) == f"Only ${product['price']} per month."
    said = heard("Your cover goes up to {coverage_limit}.", product, visible)
    assert said == "Your cover goes up to {coverage_limit}."
    check = check_claims(said, product, visible)
    assert check.unsupported == ["{coverage_limit}"] and ("slot", "coverage_limit") in check.wrong
    # The Manager labels such a reply unfaithful, as the customer hears it.
    call = Call(product, make_persona("home_broadband", product, random.Random(1)), random.Random(2))
    call.step("", "Hello, this is about your cover of {coverage_limit}.")
    assert call.turns[0]["labels"]["faithful"] is False


def test_the_reward_judges_what_the_customer_hears(calls):
    """A slotted completion scores exactly as the same words said with values, on every term but bayes (off)."""
    good = [c for c in calls if c["outcome"] == "converted"][:8]
    raw = [s for c in good for s in training_samples(c) if is_good_turn(s.labels)]
    slotted = [s for c in good for s in training_samples(c, slots=True) if is_good_turn(s.labels)]
    assert [s.target_reply for s in slotted] != [s.target_reply for s in raw]
    embedder = fit_similarity_embedder(raw)
    reward = CompositeReward(RewardConfig(bayes=0.0), None, None, embedder)
    for samples in (raw, slotted):
        completions = [format_assistant(s.thought, s.target_reply) for s in samples]
        scores = reward(samples, [[0]] * len(samples), completions, [False] * len(samples))
        if samples is raw:
            expected = scores
        for key in ("total", "similarity", "faithfulness", "manager", "on_stage", "intent_match"):
            assert scores[key].tolist() == expected[key].tolist(), key
    # and a slot the call lacks costs what a wrong number costs
    sample = next(s for s in slotted if "{price}" in s.target_reply)
    wrong = sample.target_reply.replace("{price}", "{coverage_limit}")
    [right_score, wrong_score] = reward([sample, sample], [[0], [0]],
                                        [format_assistant("t", sample.target_reply), format_assistant("t", wrong)],
                                        [False, False])["faithfulness"].tolist()
    assert right_score == 1.0 and wrong_score < 0


def test_the_agent_hears_its_answer_with_the_calls_values(calls):
    call = calls[0]
    product, visible = call["product"], call["customer"]["visible"]
    thought, reply = Agent.hear(format_assistant("{name} runs {product}?", "Hello {name}, {product} is {price}."), call)
    assert reply == f"Hello {visible['name']}, {product['name']} is {slot_values(product, visible)['price']}."
    assert thought == f"{visible['name']} runs {product['name']}?"


def test_the_tokenizer_carries_how_its_model_writes_values(tmp_path):
    tokenizer = ChatTokenizer.train(["hello {price} world"] * 3, 300, slots=True)
    tokenizer.save(tmp_path)
    assert json.loads((tmp_path / SLOTS_FILE).read_text()) == {"slots": True}
    assert ChatTokenizer.load(str(tmp_path)).slots is True
    (tmp_path / SLOTS_FILE).unlink()                      # a checkpoint from elsewhere: values as they are
    assert ChatTokenizer.load(str(tmp_path)).slots is False
    (tmp_path / SLOTS_FILE).write_text('{"slots": "yes"}')
    with pytest.raises(ValueError, match="true or false"):
        ChatTokenizer.load(str(tmp_path))


def test_nearly_every_turn_that_states_a_value_is_slotted(calls):
    """Nearly every salesperson turn that states a value can be written with slots: the few whose value two slots
    share stay as spoken (corpus.written)."""
    stated = ambiguous = 0
    for call in calls:
        product, visible = call["product"], call["customer"]["visible"]
        for turn in call["turns"]:
            if turn["role"] == "sales" and check_claims(turn["text"], product, visible).facts:
                stated += 1
                ambiguous += written(turn["text"], product, visible, True) == turn["text"]
    assert stated > 100 and ambiguous / stated < 0.05
