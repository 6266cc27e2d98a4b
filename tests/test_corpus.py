"""TeleSalesCorpus: validation errors that name file, line and field; the split; training samples and text."""
import copy
import json

import pytest

import corpus
from corpus import (
    CorpusError,
    chat_messages,
    load_corpus,
    render_call_text,
    split_calls,
    training_samples,
    write_corpus,
)
from simulate import generate_corpus
from tokenizer import split_thought


@pytest.fixture(scope="module")
def calls():
    return generate_corpus(60, seed=3, progress=False)


@pytest.fixture
def corpus_file(tmp_path, calls):
    path = tmp_path / "calls.jsonl"
    write_corpus(path, calls)
    return path


def test_round_trip(corpus_file, calls):
    assert load_corpus(corpus_file) == calls
    assert [p.name for p in corpus_file.parent.iterdir()] == ["calls.jsonl"]  # no temporary file left behind


def _corrupt(path, line_index, change):
    lines = path.read_text().splitlines()
    call = json.loads(lines[line_index])
    change(call)
    lines[line_index] = json.dumps(call)
    path.write_text("\n".join(lines) + "\n")


def _set(path_keys, value):
    def change(call):
        target = call
        for key in path_keys[:-1]:
            target = target[key]
        target[path_keys[-1]] = value
    return change


def _delete(path_keys):
    def change(call):
        target = call
        for key in path_keys[:-1]:
            target = target[key]
        del target[path_keys[-1]]
    return change


@pytest.mark.parametrize("change, field, words", [
    (_delete(["outcome"]), "outcome", "missing"),
    (_delete(["product", "price"]), "product.price", "missing"),
    (_set(["product", "price"], "49"), "product.price", "expected integer or number"),
    (_set(["turns", 2, "labels", "faithful"], "yes"), "turns[2].labels.faithful", "expected boolean"),
    (_set(["turns", 0, "labels", "on_stage"], 1), "turns[0].labels.on_stage", "expected boolean"),
    (_set(["outcome"], "maybe"), "outcome", "not one of"),
    (_set(["turns", 1, "stage"], "negotiation"), "turns[1].stage", "not one of"),
    (_set(["turns", 0, "intent"], "describe_business"), "turns[0].intent", "not one of"),
    (_set(["turns", 0, "labels", "rule_broken"], "rude"), "turns[0].labels.rule_broken", "not one of"),
    (_set(["turns", 1, "stage"], "closing"), "turns[1].stage", "not an allowed transition"),
    (_set(["turns", 0, "text"], "  "), "turns[0].text", "empty"),
    (_delete(["turns", 0, "thought"]), "turns[0].thought", "missing"),
    (_delete(["customer", "hidden", "patience"]), "customer.hidden.patience", "missing"),
])
def test_corrupt_lines_name_file_line_and_field(corpus_file, change, field, words):
    _corrupt(corpus_file, 4, change)
    with pytest.raises(CorpusError) as error:
        load_corpus(corpus_file)
    message = str(error.value)
    assert message.startswith(f"{corpus_file}:5: field '{field}'"), message
    assert words in message


def test_bad_json_and_duplicate_ids(corpus_file):
    lines = corpus_file.read_text().splitlines()
    corpus_file.write_text("\n".join(lines[:2] + ['{"id": "x", "domain": '] + lines[2:]) + "\n")
    with pytest.raises(CorpusError, match=rf"^{corpus_file}:3: not valid JSON"):
        load_corpus(corpus_file)
    corpus_file.write_text("\n".join(lines[:3] + [lines[1]]) + "\n")
    with pytest.raises(CorpusError, match=rf"^{corpus_file}:4: field 'id': .* already used on line 2"):
        load_corpus(corpus_file)


def test_a_byte_that_is_not_utf8_names_file_and_line(corpus_file):
    lines = corpus_file.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"text": "', b'"text": "Caf\xe9 ', 1)      # a Latin-1 byte, not UTF-8
    corpus_file.write_bytes(b"".join(lines))
    with pytest.raises(CorpusError, match=rf"^{corpus_file}:3: not UTF-8 \(byte 0xe9 at byte \d+ of the line\)"):
        load_corpus(corpus_file)
    assert len(load_corpus(corpus_file, skip_invalid=True)) == len(lines) - 1


def test_skip_invalid_skips_and_says_how_many(corpus_file, calls, capsys):
    lines = corpus_file.read_text().splitlines()
    lines[1], lines[7] = "not json", lines[7].replace('"outcome": "', '"outcome": "x')
    corpus_file.write_text("\n".join(lines) + "\n")
    kept = load_corpus(corpus_file, skip_invalid=True)
    assert [c["id"] for c in kept] == [c["id"] for i, c in enumerate(calls) if i not in (1, 7)]
    assert "skipped 2 invalid line(s)" in capsys.readouterr().err


def test_validate_cli(corpus_file, capsys):
    assert corpus.main(["validate", str(corpus_file)]) == 0
    assert "60 valid calls" in capsys.readouterr().out
    _corrupt(corpus_file, 0, _set(["domain"], 3))
    assert corpus.main(["validate", str(corpus_file)]) == 1
    assert f"{corpus_file}:1: field 'domain'" in capsys.readouterr().err
    assert corpus.main(["validate", str(corpus_file), "--skip-invalid"]) == 0


def test_split_by_call_and_hold_out_a_domain(corpus_file, calls, tmp_path):
    train_path, test_path = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    assert corpus.main(["split", str(corpus_file), "--train", str(train_path), "--test", str(test_path),
                        "--test-fraction", "0.2"]) == 0
    train, test = load_corpus(train_path), load_corpus(test_path)
    assert len(test) == 12 and len(train) == 48
    assert sorted(c["id"] for c in train + test) == sorted(c["id"] for c in calls)
    again = split_calls(calls, 0.2, seed=0)
    assert [[c["id"] for c in part] for part in again] == [[c["id"] for c in part] for part in (train, test)]
    assert split_calls(calls, 0.2, seed=1)[1] != test

    held_train, held_test = split_calls(calls, 0.1, holdout_domain="home_broadband")
    assert all(c["domain"] != "home_broadband" for c in held_train)
    assert {c["id"] for c in calls if c["domain"] == "home_broadband"} <= {c["id"] for c in held_test}
    with pytest.raises(ValueError, match="no call has that domain"):
        split_calls(calls, 0.1, holdout_domain="cars")


def _chatml(messages, generation_prompt):
    """ChatML written out by hand, independent of tokenizer.render_chat."""
    text = "".join("<|im_start|>" + m["role"] + "\n" + m["content"] + "<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if generation_prompt else "")


def test_training_samples(calls):
    call = calls[0]
    samples = training_samples(call)
    sales_indices = [i for i, t in enumerate(call["turns"]) if t["role"] == "sales"]
    assert [s.turn_index for s in samples] == sales_indices
    for sample in samples:
        turn = call["turns"][sample.turn_index]
        assert sample.target_reply == turn["text"] and sample.thought == turn["thought"]
        assert (sample.stage, sample.intent, sample.labels) == (turn["stage"], turn["intent"], turn["labels"])
        assert sample.product is call["product"] and sample.visible is call["customer"]["visible"]
        history = [{"role": "assistant" if t["role"] == "sales" else "user", "content": t["text"]}
                   for t in call["turns"][:sample.turn_index]]
        assert sample.messages[1:] == history and sample.messages[0]["role"] == "system"
        assert sample.prompt == _chatml(sample.messages, generation_prompt=True)
        assert "<think>" not in "".join(m["content"] for m in sample.messages[1:])
    system = samples[0].messages[0]["content"]
    assert call["product"]["name"] in system and call["customer"]["visible"]["name"] in system
    assert f"${call['product']['price']:,}" in system
    assert "budget" not in system and call["customer"]["hidden"]["temperament"] not in system


def test_render_call_text(calls):
    call = calls[1]
    text = render_call_text(call)
    messages = [{"role": "system", "content": training_samples(call)[0].messages[0]["content"]}]
    for turn in call["turns"]:
        content = f"<think>{turn['thought']}</think>\n{turn['text']}" if turn["role"] == "sales" else turn["text"]
        messages.append({"role": "assistant" if turn["role"] == "sales" else "user", "content": content})
    assert text == _chatml(messages, generation_prompt=False)
    answers = [block.split("<|im_end|>")[0] for block in text.split("<|im_start|>assistant\n")[1:]]
    parsed = [split_thought(a) for a in answers]
    sales = [t for t in call["turns"] if t["role"] == "sales"]
    assert [(p.thought, p.reply, p.well_formed) for p in parsed] == [(t["thought"], t["text"], True) for t in sales]


def test_write_corpus_leaves_the_old_file_when_writing_fails(tmp_path, calls):
    path = tmp_path / "out.jsonl"
    write_corpus(path, calls[:2])
    before = path.read_bytes()
    broken = copy.deepcopy(calls[:3])
    broken[2]["product"]["price"] = object()  # not JSON-serialisable: the write fails midway
    with pytest.raises(TypeError):
        write_corpus(path, broken)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_outlines_stand_before_the_turns_they_guided(calls):
    """DOGA's outline as system messages: before each salesperson turn it guided, and last before the turn to
    speak; a sample's prompt shows the outlines up to its own turn only."""
    call = calls[0]
    sales = [i for i, t in enumerate(call["turns"]) if t["role"] == "sales"]
    outlines = {i: f"Outline {i}" for i in sales}
    messages = chat_messages(call["product"], call["customer"]["visible"], call["turns"][:sales[2]], outlines)
    roles = [m["role"] for m in messages]
    assert roles[0] == "system" and roles[-1] == "system" and messages[-1]["content"] == f"Outline {sales[2]}"
    assert [m["content"] for m in messages if m["role"] == "system"][1:] == [f"Outline {i}" for i in sales[:3]]
    for position, message in enumerate(messages[1:-1], start=1):
        if message["role"] == "system":
            assert messages[position + 1]["role"] == "assistant"      # each outline is right before its turn
    samples = training_samples(call, outlines)
    for sample in samples:
        shown = [m["content"] for m in sample.messages if m["role"] == "system"][1:]
        assert shown == [f"Outline {i}" for i in sales if i <= sample.turn_index]
        before = call["turns"][sample.turn_index - 1]["stage"] if sample.turn_index else "opening"
        assert sample.stage_before == before
    plain = training_samples(call)
    assert [s.prompt for s in plain] == [s.prompt for s in training_samples(call, {})]
    text = render_call_text(call, {i: w for i, w in outlines.items()})
    assert text.count("<|im_start|>system\n") == 1 + len(sales)
