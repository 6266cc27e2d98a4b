"""doga.py: the script library, the intent classifier and its stage machine, slot filling, the prompt
budget, and the agents end to end with a tiny random Qwen2 and a tiny trained tokenizer."""
import dataclasses
import os
import random
import re
from dataclasses import asdict

import numpy as np
import pytest
import torch

import doga
from config import GRPOConfig
from corpus import training_samples
from doga import (
    DogaAgent,
    DogaPlanner,
    IntentClassifier,
    PromptTooLong,
    ScriptLibrary,
    Slotter,
    StaticAgent,
    assemble_messages,
    context_vector,
    evaluate_intents,
    fill_slots,
    track_call,
)
from files import write_json
from model import Qwen2, Qwen2Config, save_pretrained
from plans import BEST_PLAN, next_move
from sales import MISTAKE_INTENTS, SALES_INTENTS, STAGE_TRANSITIONS, STAGES, load_world, slot_values
from simulate import make_persona, run_call, simulate_call
from tokenizer import ChatTokenizer, format_assistant, render_chat


def on_stage_intents(stage):
    """The intents a salesperson may use next in `stage`, read off the transition table by hand."""
    return {intent for intent, target in SALES_INTENTS.items()
            if target in STAGE_TRANSITIONS[stage] and intent not in MISTAKE_INTENTS}


@pytest.fixture(scope="module")
def calls():
    return [simulate_call(i, seed=7) for i in range(360)]


@pytest.fixture(scope="module")
def library(calls):
    return ScriptLibrary.build(calls[:300], progress=False)


@pytest.fixture(scope="module")
def tokenizer(calls):
    texts = [render_chat([{"role": "user", "content": t["text"]}]) for c in calls[:100] for t in c["turns"]]
    return ChatTokenizer.train(texts, vocab_size=400)


def test_classifier_beats_majority_baseline_by_a_wide_margin(library, calls):
    report = evaluate_intents(IntentClassifier(library), calls[300:])
    assert report["turns"] > 300
    assert report["accuracy"] > 0.8
    assert report["accuracy"] > report["majority_accuracy"] + 0.5
    assert report["confusion"].sum() == report["turns"]
    assert np.trace(report["confusion"]) == round(report["accuracy"] * report["turns"])


def test_stage_machine_masks_illegal_intents(library, calls):
    # Hand-checked against sales.STAGE_TRANSITIONS: from the opening only opening or analysis intents.
    assert on_stage_intents("opening") == {"greet_and_introduce", "state_purpose", "ask_business_situation",
                                           "diagnose_with_numbers"}
    classifier = IntentClassifier(library)
    noisy = IntentClassifier(library, label_noise=0.5, seed=1)
    call = calls[300]
    for index in range(0, len(call["turns"]), 2):
        vector = context_vector(library.embedder, call["product"], call["customer"]["visible"], call["turns"][:index])
        for stage in STAGES:        # the same context asked in every stage: only that stage's moves may win
            for model in (classifier, noisy):
                scores = model.scores(vector, stage)
                for intent, score in zip(model.intents, scores):
                    assert np.isfinite(score) == (intent in on_stage_intents(stage)), (stage, intent)
                assert model.predict(vector, stage) in on_stage_intents(stage)


def test_label_noise_flips_the_asked_share(library, calls):
    clean = IntentClassifier(library)
    noisy = IntentClassifier(library, label_noise=0.2, seed=3)
    asked = flipped = 0
    for call in calls[:150]:
        for index in range(0, len(call["turns"]), 2):
            vector = context_vector(library.embedder, call["product"], call["customer"]["visible"],
                                    call["turns"][:index])
            stage, _ = track_call(call["turns"][:index])
            legal_choices = int(np.isfinite(clean.scores(vector, stage)).sum())
            if legal_choices < 2:
                continue
            asked += 1
            prediction = noisy.predict_turns(call["product"], call["customer"]["visible"], call["turns"][:index])
            flipped += prediction != clean.predict(vector, stage)
            assert prediction in on_stage_intents(stage)
            assert prediction == noisy.predict_turns(call["product"], call["customer"]["visible"],
                                                     call["turns"][:index])     # reproducible, whatever the order
    assert asked > 300 and 0.15 < flipped / asked < 0.25


def test_library_templates_are_slotted_and_counted(library, calls):
    keys = set(slot_values(calls[0]["product"], calls[0]["customer"]["visible"])) | {
        k for c in calls for k in slot_values(c["product"], c["customer"]["visible"])}
    assert len(library.templates) > 50
    for meta in library.templates.metadata:
        assert not re.search(r"\d", meta["text"])                       # every number became a slot
        assert set(meta["slots"]) <= keys
        assert meta["intent"] not in MISTAKE_INTENTS and meta["support"] >= 1
        assert meta["uses"] >= meta["support"] and 0 < meta["conversion_rate"] <= 1
    # The library reproduces the world's own templates: a filled one slots back to itself.
    world_templates = {t for entry in load_world().sales_templates.values()
                       for texts in entry["texts"].values() for t in texts}
    assert sum(m["text"] in world_templates for m in library.templates.metadata) >= 0.9 * len(library.templates)


def test_slot_round_trip_and_missing_values():
    product = load_world().products["restaurant_marketing"][0]
    visible = make_persona("restaurant_marketing", product, random.Random(0))["visible"]
    values = slot_values(product, visible)
    template = "{product} is {price} {billing}, on a {term_months}-month term, for {restaurant}."
    spoken = fill_slots(template, values)
    assert "{" not in spoken and Slotter(product, visible)(spoken) == template
    assert fill_slots(template, {k: v for k, v in values.items() if k != "restaurant"}) is None
    assert fill_slots("Hi {name}", {"name": "{oops}"}) is None            # a value may not smuggle a slot in


def test_outlines_never_leave_a_slot(library, calls):
    planner = DogaPlanner(library, k=3)
    for call in calls[300:330]:
        product = {k: v for k, v in call["product"].items() if k != "highlight"}   # a missing value
        visible = call["customer"]["visible"]
        for index, turn in enumerate(call["turns"]):
            if turn["role"] != "sales":
                continue
            outline = planner.plan(product, visible, call["turns"][:index])
            assert outline.intent in on_stage_intents(outline.stage)
            assert len(outline.lines) <= 3
            for line in outline.lines:
                assert "{" not in line and "}" not in line
            by_id = {m["id"]: m for m in library.templates.metadata}
            for template_id in outline.template_ids:
                assert "highlight" not in by_id[template_id]["slots"]
                assert call["domain"] in by_id[template_id]["domains"]       # no other domain's lines


def test_prompt_respects_max_prompt_length(tokenizer, calls):
    call = calls[0]
    header = "You are a salesperson. " + "Facts. " * 20
    history = [{"role": "assistant" if t["role"] == "sales" else "user", "content": t["text"]} for t in call["turns"]]
    guidance = [f"Proven line: {t['text']}" for t in call["turns"][:6]]
    full = len(tokenizer.encode_chat([{"role": "system", "content": header}] + history))
    for budget in (full // 3, full // 2, full, full * 3):
        messages, kept = assemble_messages(tokenizer, header, "Outline:", guidance, history, budget)
        assert len(tokenizer.encode_chat(messages)) <= budget
        assert messages[0]["content"].startswith(header)              # the header is never cut
        assert messages[-1] == history[-1]                             # the latest message stays
        assert guidance[:len(kept)] == kept                            # guidance is dropped from the end
    messages, kept = assemble_messages(tokenizer, header, "Outline:", guidance, history, full * 3)
    assert kept == guidance and messages[1:] == history
    with pytest.raises(PromptTooLong):
        assemble_messages(tokenizer, header, "Outline:", guidance, history, 10)


def test_library_save_load_round_trip(library, calls, tmp_path):
    library.save(str(tmp_path / "lib"))
    loaded = ScriptLibrary.load(str(tmp_path / "lib"))
    assert loaded.templates.metadata == library.templates.metadata
    assert loaded.summary == library.summary
    call = calls[310]
    turns = call["turns"][:5]
    a = DogaPlanner(library).plan(call["product"], call["customer"]["visible"], turns)
    b = DogaPlanner(loaded).plan(call["product"], call["customer"]["visible"], turns)
    assert a == b
    with pytest.raises(FileNotFoundError, match="no script library"):
        ScriptLibrary.load(str(tmp_path / "missing"))


def test_agents_run_end_to_end_with_a_tiny_model(library, tokenizer, calls):
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    model = Qwen2(config).eval()
    call = calls[320]
    view = {**call, "turns": call["turns"][:5]}
    for agent in (DogaAgent(model, tokenizer, library, max_prompt_length=2048, max_new_tokens=8),
                  StaticAgent(model, tokenizer, library, max_prompt_length=2048, max_new_tokens=8)):
        thought, reply, outline = agent.respond(view)
        assert isinstance(thought, str) and isinstance(reply, str)
        assert (outline is None) == isinstance(agent, StaticAgent)
        played = run_call(call["product"], call["customer"], lambda view: agent.respond(view)[:2], random.Random(0),
                          max_turns=4)
        assert [t["role"] for t in played["turns"]] == ["sales", "customer", "sales", "customer"]
    doga = DogaAgent(model, tokenizer, library, max_prompt_length=2048, max_new_tokens=4)
    _, _, outline = doga.respond(view)
    assert outline.intent in on_stage_intents(outline.stage)


def test_the_doga_agent_never_says_a_reply_twice(library, tokenizer, calls, monkeypatch):
    """DogaAgent.say: a reply the salesperson already said in the call, word for word, is said as the outline's
    first line not said yet, and noted; a new reply is said as written; where every line of the outline was said,
    the model's reply stands. The static agent says what the model wrote."""
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    model = Qwen2(config).eval()
    agent = DogaAgent(model, tokenizer, library, max_prompt_length=2048, max_new_tokens=8)
    call = calls[320]
    view = {**call, "turns": call["turns"][:5]}
    said = [t["text"] for t in view["turns"] if t["role"] == "sales"]
    outline = agent.planner.plan(call["product"], call["customer"]["visible"], view["turns"])
    fresh = [line for line in outline.lines if line not in said]
    assert len(said) == 3 and fresh
    assert agent.say(format_assistant("Again.", said[1]), view) == \
        ("Again.", fresh[0], {"from_outline": True, "model_reply": said[1]})
    customer = next(t["text"] for t in view["turns"] if t["role"] == "customer")   # the customer's words: not said
    assert agent.say(format_assistant("Echo.", customer), view) == ("Echo.", customer, {})
    assert agent.say(format_assistant("New.", "A reply never said."), view) == ("New.", "A reply never said.", {})
    # A model that writes slots repeats what the customer heard: the reply is compared as heard, values said.
    values = slot_values(call["product"], call["customer"]["visible"])
    key = sorted(values)[0]
    slotted = DogaAgent(model, ChatTokenizer(tokenizer.tokenizer, slots=True), library, max_prompt_length=2048,
                        max_new_tokens=8)
    earlier = {**view, "turns": view["turns"][:4] + [{**view["turns"][4], "text": f"It is {values[key]}."}]}
    assert slotted.say(format_assistant("Slots.", f"It is {{{key}}}."), earlier)[2]["from_outline"]
    static = StaticAgent(model, tokenizer, library, max_prompt_length=2048, max_new_tokens=8)
    assert static.say(format_assistant("Again.", said[1]), view) == ("Again.", said[1], {})
    monkeypatch.setattr(agent.planner, "plan", lambda *_: dataclasses.replace(outline, lines=[said[0], "New line."]))
    assert agent.say(format_assistant("Again.", said[0]), view)[1] == "New line."     # the first one not said yet
    monkeypatch.setattr(agent.planner, "plan", lambda *_: dataclasses.replace(outline, lines=said))
    assert agent.say(format_assistant("Again.", said[0]), view) == ("Again.", said[0], {})


def test_many_plans_at_once_equal_one_at_a_time(library, calls):
    """plan_many (a corpus planned in one go) gives the outlines plan gives call by call."""
    prefixes = [(c["product"], c["customer"]["visible"], c["turns"][:i]) for c in calls[300:312]
                for i, t in enumerate(c["turns"]) if t["role"] == "sales"]
    together = DogaPlanner(library).plan_many(prefixes)
    alone = [DogaPlanner(library).plan(*prefix) for prefix in prefixes]
    assert together == alone


def test_recorded_outlines_are_the_ones_the_calls_were_played_with(library, calls):
    """record_outlines, run by another planner after the calls, stores on each salesperson turn the outline that
    was planned before it during the call, the noisy classifier's flips included (they depend on the call so
    far, not on the planner)."""
    for noise in (0.0, 0.5):
        planner = DogaPlanner(library, IntentClassifier(library, label_noise=noise, seed=3))
        told, played = [], []
        for call in calls[340:346]:
            def top_line(view):
                outline = planner.plan(view["product"], view["customer"]["visible"], view["turns"])
                told.append(outline.record())
                return "", outline.lines[0] if outline.lines else outline.goal
            played.append(run_call(call["product"], call["customer"], top_line, random.Random(call["id"])))
        DogaPlanner(library, IntentClassifier(library, label_noise=noise, seed=3)).record_outlines(played)
        recorded = [t["outline"] for c in played for t in c["turns"] if t["role"] == "sales"]
        assert recorded == told and len(told) > 20
        assert all(r["line"] in (t["text"] for c in played for t in c["turns"]) for r in recorded)
    flipped = DogaPlanner(library, IntentClassifier(library, label_noise=1.0, seed=3))
    flipped.record_outlines(played)                                   # another classifier: other outlines
    assert [t["outline"] for c in played for t in c["turns"] if t["role"] == "sales"] != recorded


def test_planned_moves_outline_the_plans_move(library, calls):
    """With `moves`, the outline names the move the plan asks for after the call so far (plans.next_move), never
    the classifier's; its lines are that move's templates; and the outlines recorded after the calls are the ones
    they were played with."""
    plan = BEST_PLAN
    planner = DogaPlanner(library, moves=plan)
    by_id = {m["id"]: m for m in library.templates.metadata}
    told, played = [], []
    for call in calls[340:352]:
        def top_line(view):
            outline = planner.plan(view["product"], view["customer"]["visible"], view["turns"])
            assert outline.intent == next_move(plan, view["turns"])
            assert all(by_id[i]["intent"] == outline.intent for i in outline.template_ids)
            told.append(outline.record())
            return "", outline.lines[0] if outline.lines else outline.goal
        played.append(run_call(call["product"], call["customer"], top_line, random.Random(call["id"])))
    classified = [DogaPlanner(library).plan(c["product"], c["customer"]["visible"], c["turns"][:i]).intent
                  for c in played for i, t in enumerate(c["turns"]) if t["role"] == "sales"]
    assert [r["intent"] for r in told] != classified                    # the plan, not the classifier, chose
    DogaPlanner(library, moves=plan).record_outlines(played)
    assert [t["outline"] for c in played for t in c["turns"] if t["role"] == "sales"] == told
    # The same words with another customer intent are another situation for a plan: the outline is not the one
    # remembered for the words alone.
    call = played[0]
    turns = call["turns"][:4]
    assert turns[3]["role"] == "customer"
    versions = [turns[:3] + [{**turns[3], "intent": intent}] for intent in ("acknowledge", "raise_trust_objection")]
    for version in versions:
        assert planner.plan(call["product"], call["customer"]["visible"], version).intent == next_move(plan, version)
    assert next_move(plan, versions[0]) != next_move(plan, versions[1])


def test_doga_prompt_is_the_training_prompt(library, tokenizer, calls):
    """Train as it infers: for a call so far, the DOGA agent prompts exactly as GRPO's pool and pretraining
    render it (corpus.chat_messages with the planner's outlines before every salesperson turn)."""
    model = Qwen2(Qwen2Config(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32,
                              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)).eval()
    agent = DogaAgent(model, tokenizer, library, max_prompt_length=10_000)
    call = calls[330]
    [outlines] = agent.planner.outline_messages([(call["product"], call["customer"]["visible"], call["turns"])],
                                        next_turn=False)
    for sample in training_samples(call, outlines):
        prompt_ids, outline = agent.prompt({**call, "turns": call["turns"][:sample.turn_index]})
        assert prompt_ids == tokenizer.encode(sample.prompt)
        assert sample.messages[-1] == {"role": "system", "content": outline.message()}
    # over budget: the oldest history goes first; the system prompt, the customer's words and the outline stay
    last = {**call, "turns": call["turns"][:max(i for i, t in enumerate(call["turns"]) if t["role"] == "sales")]}
    full = len(agent.prompt(last)[0])
    short = DogaAgent(model, tokenizer, library, max_prompt_length=full // 2)
    ids, outline = short.prompt(last)
    text = tokenizer.decode(ids)
    assert len(ids) <= full // 2 and text.startswith("<|im_start|>system\nYou are a telesales agent")
    assert text.endswith(f"{outline.message()}<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def chat_folders(library, tokenizer, tmp_path_factory):
    """A tiny random model (with its tokenizer) and the library, saved where `doga.py chat` reads them."""
    root = tmp_path_factory.mktemp("chat")
    torch.manual_seed(0)
    model = Qwen2(Qwen2Config(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    save_pretrained(model, str(root / "model"))
    tokenizer.save(str(root / "model"))
    library.save(str(root / "scripts"))
    return ["chat", "--model", str(root / "model"), "--library", str(root / "scripts")]


def typed(monkeypatch, lines):
    """Feed `lines` to input() one by one; an exception class in the list is raised instead."""
    lines = iter(lines)

    def fake_input(prompt=""):
        line = next(lines)
        if isinstance(line, type):
            raise line
        return line
    monkeypatch.setattr("builtins.input", fake_input)


def test_chat_ends_cleanly_on_ctrl_d_and_ctrl_c(chat_folders, monkeypatch, capsys):
    typed(monkeypatch, ["Hello?", EOFError])
    assert doga.main(chat_folders) == 0
    out = capsys.readouterr().out
    assert out.count("salesperson> ") == 2 and out.rstrip().endswith("call ended")
    typed(monkeypatch, [KeyboardInterrupt])
    assert doga.main(chat_folders) == 130
    captured = capsys.readouterr()
    assert captured.err.strip() == "interrupted: call ended" and "Traceback" not in captured.err


def test_chat_uses_the_lengths_the_model_was_trained_with(chat_folders, monkeypatch, capsys):
    """A model GRPO trained carries its run's record (run.json): chat prompts and answers within the lengths it
    recorded, here a prompt budget far above the default (a message the default refuses is taken) and
    answers of 3 tokens."""
    model_dir = chat_folders[2]
    message = " ".join(["tell me everything about the price"] * 400)
    length = len(ChatTokenizer.load(model_dir).encode(message))
    assert length > GRPOConfig().max_prompt_length                 # too long for the default budget
    trained = GRPOConfig(max_prompt_length=2 * length + 1000, max_completion_length=3)
    write_json(os.path.join(model_dir, "run.json"), {"config": {"grpo": asdict(trained)}})
    answer_lengths, generate = [], doga.generate_completions

    def recorded(model, prompts, max_new_tokens, *args):
        answer_lengths.append(max_new_tokens)
        return generate(model, prompts, max_new_tokens, *args)
    monkeypatch.setattr(doga, "generate_completions", recorded)
    typed(monkeypatch, [message, EOFError])
    try:
        assert doga.main(chat_folders) == 0
    finally:
        os.remove(os.path.join(model_dir, "run.json"))
    out = capsys.readouterr().out
    assert out.startswith(f"prompts of up to {trained.max_prompt_length} tokens, answers of up to 3 (")
    assert "does not fit" not in out and out.count("salesperson> ") == 2
    assert answer_lengths == [3, 3]


def test_chat_survives_a_message_too_long_for_the_prompt(chat_folders, monkeypatch, capsys):
    typed(monkeypatch, [" ".join(["tell me everything about the price"] * 400), "And the price?", "/quit"])
    assert doga.main(chat_folders) == 0
    out = capsys.readouterr().out
    assert "that message does not fit the model's prompt: " in out and "more than max_prompt_length" in out
    assert out.count("salesperson> ") == 2                        # the call went on after the refusal
