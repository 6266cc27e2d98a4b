"""pretrain.py: its data (one row per call from its system prompt, outlines with no loss, batches of
similar length), the tokenizer it reuses only when it still fits, the folder it refuses, and Ctrl-C."""
import copy
import json
import sys

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

import pretrain
from config import Config, PretrainConfig, TokenizerConfig
from corpus import render_call_text, write_corpus
from files import fingerprint, write_json
from model import Qwen2, Qwen2Config, load_with_tokenizer
from pretrain import batches_of_similar_length, call_rows
from runs import RunLock
from simulate import simulate_call
from tokenizer import SPECIAL_TOKENS, ChatTokenizer


@pytest.fixture(scope="module")
def calls():
    return [simulate_call(i, seed=11) for i in range(6)]


@pytest.fixture(scope="module")
def tokenizer(calls):
    return ChatTokenizer.train([render_call_text(c) for c in calls], vocab_size=400)


def test_a_row_is_the_whole_call_and_its_outlines_get_no_loss(calls, tokenizer):
    outlines = {calls[0]["id"]: {i: f"Outline: say line {i}." for i, t in enumerate(calls[0]["turns"])
                                 if t["role"] == "sales"}}
    inputs, targets = call_rows(calls, tokenizer, seq_len=10_000, outlines=outlines)
    for call, ids, labels in zip(calls, inputs, targets):
        # Message by message, the encoding is the encoding of the whole rendered call (plus <|endoftext|>).
        expected = tokenizer.encode(render_call_text(call, outlines.get(call["id"]))) + [tokenizer.endoftext_id]
        assert ids == expected[:-1]
        assert len(labels) == len(ids)
        kept = [token for token, label in zip(expected[1:], labels) if label != -100]
        if call["id"] not in outlines:
            assert labels == expected[1:]                                  # the whole call is learned
        else:
            text = tokenizer.decode(kept)
            assert "Outline:" not in text and call["turns"][0]["text"] in text   # outlines only are masked
            masked = len(labels) - len(kept)
            assert masked == sum(len(tokenizer.encode(f"<|im_start|>system\nOutline: say line {i}.<|im_end|>\n"))
                                 for i in outlines[call["id"]])
    short, _ = call_rows(calls[:1], tokenizer, seq_len=50)
    assert len(short[0]) == 50 and short[0][0] == tokenizer.im_start_id        # cut at the end, never the start


def test_the_loss_is_the_mean_nll_of_the_scored_tokens_only():
    """causal_lm_loss against float64 cross-entropy of the full logits: the same value and the same gradient,
    though only the scored positions go through the output layer (outline and padding targets are -100)."""
    torch.manual_seed(0)
    model = Qwen2(Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1))
    inputs = torch.randint(0, 50, (3, 12))
    targets = torch.randint(0, 50, (3, 12))
    targets[0, 3:7] = -100                                   # an outline
    targets[2, 8:] = -100                                    # padding
    loss = pretrain.causal_lm_loss(model, inputs, targets)
    ours = torch.autograd.grad(loss, list(model.parameters()))
    reference = copy.deepcopy(model).double()
    expected = torch.nn.functional.cross_entropy(reference(inputs).flatten(0, 1), targets.flatten(), ignore_index=-100)
    grads = torch.autograd.grad(expected, list(reference.parameters()))
    # float32 against float64, a first-order bound: each float32 rounding adds at most u = 2**-24 relative error,
    # and the loss passes through about 150 in sequence (dot products of 16 to 32 terms, a log-sum-exp over 50
    # logits, a mean of 29 terms): |error| <= ~150 u = 9e-6 of the loss. The backward pass doubles the chain,
    # and a gradient entry that sums terms of both signs loses its relative accuracy, hence the absolute floor
    # far below the entries' size (O(1e-2) to O(1)).
    assert abs(loss.item() - expected.item()) <= 2e-5 * expected.item()
    for g, r in zip(ours, grads):
        assert torch.allclose(g.double(), r, rtol=1e-4, atol=1e-6)


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


# ----------------------------------------------------------------------------------------------
# The tokenizer, the folder, Ctrl-C.

MODEL = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
         "num_key_value_heads": 1, "tie_word_embeddings": True}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two corpus folders of different calls, and the calls of the first."""
    root = tmp_path_factory.mktemp("corpora")
    calls = [simulate_call(i, seed=3) for i in range(12)]
    for name, chosen in (("a", calls[:8]), ("b", calls[4:])):
        write_corpus(str(root / name / "train.jsonl"), chosen)
    return root, calls[:8]


def test_the_tokenizer_is_reused_only_when_it_fits(corpora, tmp_path, capsys):
    root, calls = corpora
    corpus = str(root / "a" / "train.jsonl")
    out = str(tmp_path)
    first = pretrain.get_tokenizer(out, corpus, calls, 300, False)
    assert first.vocab_size == 300
    assert json.loads((tmp_path / "tokenizer_record.json").read_text())["tokenizer"] == fingerprint(
        tmp_path / "tokenizer.json")
    pretrain.get_tokenizer(out, corpus, calls, 300, False)
    assert "reused" in capsys.readouterr().out

    assert pretrain.get_tokenizer(out, corpus, calls, 320, False).vocab_size == 320      # another vocabulary size
    assert "made for another vocab size, trained again" in capsys.readouterr().out
    pretrain.get_tokenizer(out, str(root / "b" / "train.jsonl"), calls, 320, False)      # another corpus
    assert "made for another corpus, trained again" in capsys.readouterr().out
    slotted = pretrain.get_tokenizer(out, str(root / "b" / "train.jsonl"), calls, 320, True)   # values as slots
    assert "made for another slots, trained again" in capsys.readouterr().out and slotted.slots
    assert ChatTokenizer.load(out).slots and "{price}" in slotted.decode(slotted.encode("a {price} b"))
    pretrain.get_tokenizer(out, str(root / "b" / "train.jsonl"), calls, 320, False)
    assert "made for another slots, trained again" in capsys.readouterr().out and not ChatTokenizer.load(out).slots

    # One made by an older pretrain.py whose pre-tokenizer split on whitespace: the pipeline differs.
    old = Tokenizer(models.BPE())
    old.pre_tokenizer = pre_tokenizers.Whitespace()
    old.train_from_iterator([render_call_text(c) for c in calls],
                            trainers.BpeTrainer(vocab_size=320, special_tokens=list(SPECIAL_TOKENS)))
    ChatTokenizer(old).save(out)
    write_json(tmp_path / "tokenizer_record.json",
               {"corpus": fingerprint(corpus), "vocab_size": 320, "slots": False,
                "pipeline": pretrain.text_pipeline(ChatTokenizer(old)),
                "tokenizer": fingerprint(tmp_path / "tokenizer.json")})
    rebuilt = pretrain.get_tokenizer(out, corpus, calls, 320, False)
    assert "made for another pipeline, trained again" in capsys.readouterr().out
    assert pretrain.text_pipeline(rebuilt) != pretrain.text_pipeline(ChatTokenizer(old))


def test_a_tokenizer_from_elsewhere_is_refused(corpora, tmp_path):
    root, calls = corpora
    corpus = str(root / "a" / "train.jsonl")
    ChatTokenizer.train([render_call_text(c) for c in calls[:3]], 300).save(str(tmp_path))   # same size, other ids
    with pytest.raises(ValueError, match=r"tokenizer.json: not made by pretrain.py for this folder \(there is no "
                                         r"readable tokenizer_record.json beside it\)"):
        pretrain.get_tokenizer(str(tmp_path), corpus, calls, 300, False)
    (tmp_path / "tokenizer.json").unlink()
    pretrain.get_tokenizer(str(tmp_path), corpus, calls, 300, False)
    ChatTokenizer.train([render_call_text(c) for c in calls[:3]], 300).save(str(tmp_path))   # swapped afterwards
    with pytest.raises(ValueError, match=r"not made by pretrain.py for this folder \(it has changed since\)"):
        pretrain.get_tokenizer(str(tmp_path), corpus, calls, 300, False)


def tiny_config(steps=3):
    return Config(tokenizer=TokenizerConfig(vocab_size=300), model=dict(MODEL),
                  pretrain=PretrainConfig(steps=steps, batch_size=2, seq_len=32, warmup_steps=1), source="test")


def test_pretraining_refuses_a_folder_that_holds_a_model(corpora, tmp_path):
    root, _ = corpora
    pretrain.train(tiny_config(), str(root / "a"), str(tmp_path / "base"))
    assert not (tmp_path / "base" / ".lock").exists()              # the lock is not carried into the model
    assert {"metrics.jsonl", "tokenizer_record.json"} <= {p.name for p in (tmp_path / "base").iterdir()}
    load_with_tokenizer(tmp_path / "base")                         # the weights name the tokenizer they learnt
    assert json.loads((tmp_path / "base" / "config.json").read_text())["tokenizer_fingerprint"] == fingerprint(
        tmp_path / "base" / "tokenizer.json")
    with pytest.raises(ValueError, match=r"base: already holds a model \(config.json, model.safetensors\); "
                                         r"pretraining would replace it"):
        pretrain.train(tiny_config(), str(root / "a"), str(tmp_path / "base"))


def test_ctrl_c_ends_with_one_line_naming_the_step(corpora, tmp_path, monkeypatch, capsys):
    root, _ = corpora
    real_loss, calls = pretrain.causal_lm_loss, []

    def interrupted_in_step_3(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_loss(*args)
    monkeypatch.setattr(pretrain, "causal_lm_loss", interrupted_in_step_3)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"tokenizer": {"vocab_size": 300}, "model": MODEL,
                                  "pretrain": {"steps": 5, "batch_size": 2, "seq_len": 32, "warmup_steps": 1}}))
    monkeypatch.setattr(sys, "argv", ["pretrain.py", "--config", str(config), "--data", str(root / "a"),
                                      "--out", str(tmp_path / "base")])
    with pytest.raises(SystemExit) as exit_:
        pretrain.main()
    assert exit_.value.code == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("interrupted after 2 of 5 steps; no model was saved (pretraining does "
                                            "not resume): run the same command again to start over")
    RunLock(str(tmp_path / "base")).acquire().release()             # the lock went with the run
