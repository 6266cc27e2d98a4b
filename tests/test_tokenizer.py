"""Tokenizer and chat-format tests: hand-written expected strings, round trips, bad input."""
import json

import pytest

from tokenizer import IM_END, IM_START, SPECIAL_TOKENS, ChatTokenizer, format_assistant, render_chat, split_thought


TEXTS = [
    "Hello, this is Dana from DeliveryBoost. Do you have a minute?",
    "We have 420 monthly orders and a 4.6 rating.",
    "The Growth Package costs $299 per month for 12 months.",
    "<think>The customer worries about price.</think>\nIt pays for itself at 40 extra orders.",
] * 20


@pytest.fixture(scope="module")
def tok():
    return ChatTokenizer.train(TEXTS, vocab_size=400)


def test_render_chat_is_chatml_exactly():
    messages = [{"role": "system", "content": "You sell."}, {"role": "user", "content": "Hi"}]
    assert render_chat(messages) == (
        "<|im_start|>system\nYou sell.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert render_chat(messages, add_generation_prompt=False).endswith("Hi<|im_end|>\n")
    with pytest.raises(ValueError, match="message 0"):
        render_chat([{"role": "user"}])


def test_special_tokens_are_single_ids_and_round_trip(tok):
    text = render_chat([{"role": "user", "content": "We have 420 monthly orders."}])
    ids = tok.encode(text)
    assert ids[0] == tok.im_start_id
    assert ids.count(tok.eos_id) == 1
    assert tok.decode(ids) == text
    assert tok.vocab_size <= 400
    for special in SPECIAL_TOKENS:
        assert len(tok.encode(special)) == 1
    # bytes never seen in training still round-trip (byte-level alphabet)
    odd = "Prix: 12€ — naïve ✓"
    assert tok.decode(tok.encode(odd)) == odd
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text.replace(IM_START, "").replace(IM_END, "")


def test_save_load_round_trip(tok, tmp_path):
    tok.save(tmp_path)
    again = ChatTokenizer.load(str(tmp_path))
    assert again.encode(TEXTS[2]) == tok.encode(TEXTS[2])
    assert (again.eos_id, again.pad_id, again.im_start_id) == (tok.eos_id, tok.pad_id, tok.im_start_id)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        ChatTokenizer.load(str(tmp_path))
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable tokenizer.json"):
        ChatTokenizer.load(str(tmp_path))


def test_tokenizer_without_chatml_tokens_is_rejected(tok, tmp_path):
    data = json.loads(tok.tokenizer.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != IM_END]
    del data["model"]["vocab"][IM_END]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="<\\|im_end\\|>"):
        ChatTokenizer.load(str(tmp_path))


@pytest.mark.parametrize("text, thought, reply, ok", [
    (format_assistant("Ask about orders.", "How many orders a month?"), "Ask about orders.", "How many orders a month?",
     True),
    ("<think> x </think>  hi <|im_end|>", "x", "hi", True),
    ("<think></think>\nhi", "", "hi", False),            # empty thought
    ("<think>plan</think>\n", "plan", "", False),         # empty reply
    ("<think>plan without end", "", "plan without end", False),  # unclosed
    ("no thought at all", "", "no thought at all", False),
    ("<think>a</think><think>b</think>reply", "", "reply", False),  # two blocks
    ("", "", "", False),
])
def test_split_thought(text, thought, reply, ok):
    parsed = split_thought(text)
    assert (parsed.thought, parsed.reply, parsed.well_formed) == (thought, reply, ok)


def test_every_digit_is_its_own_token():
    """Qwen2's pre-tokenization: BPE never merges digits, so a number is the same digit tokens wherever it
    stands (trained here on texts full of repeated numbers, which byte-level BPE alone would merge)."""
    tok = ChatTokenizer.train(["Orders: 648, 648, 648. Price: $49, $49, $1,250. Rating 4.2 or 100 or 500."] * 50,
                              vocab_size=300)
    for text in (" 648", "$49", " 100", " 500", " 4.2", "$1,250"):
        pieces = [tok.decode([i]) for i in tok.encode(text)]
        assert all(not any(c.isdigit() for c in p) or (len(p.strip()) == 1) for p in pieces), pieces
        assert "".join(pieces) == text
    assert [tok.decode([i]) for i in tok.encode(" 648")] == [" ", "6", "4", "8"]
