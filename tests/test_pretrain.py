"""pretrain.py's data: one row per call from its system prompt, outlines with no loss, batches of similar length."""
import pytest

from corpus import render_call_text
from pretrain import batches_of_similar_length, call_rows
from simulate import simulate_call
from tokenizer import ChatTokenizer


@pytest.fixture(scope="module")
def calls():
    return [simulate_call(i, seed=11) for i in range(6)]


@pytest.fixture(scope="module")
def tokenizer(calls):
    return ChatTokenizer.train([render_call_text(c) for c in calls], vocab_size=400)


def test_a_row_is_the_whole_call_and_its_outlines_get_no_loss(calls, tokenizer):
    whispers = {calls[0]["id"]: {i: f"Outline: say line {i}." for i, t in enumerate(calls[0]["turns"])
                                 if t["role"] == "sales"}}
    inputs, targets = call_rows(calls, tokenizer, seq_len=10_000, whispers=whispers)
    for call, ids, labels in zip(calls, inputs, targets):
        # Message by message, the encoding is the encoding of the whole rendered call (plus <|endoftext|>).
        expected = tokenizer.encode(render_call_text(call, whispers.get(call["id"]))) + [tokenizer.endoftext_id]
        assert ids == expected[:-1]
        assert len(labels) == len(ids)
        kept = [token for token, label in zip(expected[1:], labels) if label != -100]
        if call["id"] not in whispers:
            assert labels == expected[1:]                                  # the whole call is learned
        else:
            text = tokenizer.decode(kept)
            assert "Outline:" not in text and call["turns"][0]["text"] in text   # outlines only are masked
            masked = len(labels) - len(kept)
            assert masked == sum(len(tokenizer.encode(f"<|im_start|>system\nOutline: say line {i}.<|im_end|>\n"))
                                 for i in whispers[call["id"]])
    short, _ = call_rows(calls[:1], tokenizer, seq_len=50)
    assert len(short[0]) == 50 and short[0][0] == tokenizer.im_start_id        # cut at the end, never the start


def test_batches_of_similar_length_see_every_row_once_a_pass():
    lengths = [(7 * i) % 101 for i in range(40)]
    batches = batches_of_similar_length(lengths, batch_size=4, steps=30, seed=0, pool=2)
    assert len(batches) == 30 and all(len(b) == 4 for b in batches)
    first_pass = sorted(row for batch in batches[:10] for row in batch)
    assert first_pass == list(range(40))
    # within a batch the lengths are close: each pool of 8 rows is sorted before it is cut
    spread = sum(max(lengths[r] for r in b) - min(lengths[r] for r in b) for b in batches) / len(batches)
    shuffled = sum(max(lengths[r] for r in b) - min(lengths[r] for r in b) for b in
                   [list(range(i, i + 4)) for i in range(0, 40, 4)]) / 10
    assert spread < shuffled
    assert batches == batches_of_similar_length(lengths, batch_size=4, steps=30, seed=0, pool=2)
