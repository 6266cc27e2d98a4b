"""model.py against transformers' Qwen2ForCausalLM (the independent reference) on random tiny configs.

Float32 logits are checked against a float64 run of transformers' model, within a small factor of the
error transformers' own float32 run makes on the same inputs (tests/bounds.py): how far float32 lands
from the exact value depends on the CPU. Token-by-token comparisons (greedy generation, KV cache against
recomputation, the top-p nucleus) run in float64, where rounding cannot flip an argmax or a nucleus
boundary unless two values tie to within ~1e-15: the logic is what they test, not float32 rounding.
"""
import copy
import json
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import model as qwen
from bounds import assert_within_reference_error, dot_bound, unit_roundoff
from corpus import render_call_text
from files import fingerprint
from model import CheckpointError, Qwen2, Qwen2Config, generate, load_pretrained, load_with_tokenizer, save_pretrained
from simulate import simulate_call
from tiny import move_weights_off_init_
from tokenizer import ChatTokenizer


VOCAB = 97
# (query heads, key/value heads, tied): GQA ratios 1, 2 and 7, tied and untied lm_head.
SHAPES = [(4, 4, True), (4, 2, False), (7, 1, True), (7, 7, False)]
SHAPE_IDS = ["mha-tied", "gqa2-untied", "gqa7-tied", "mha-untied"]


def make_reference(heads, kv_heads, tied, seed=0):
    """A random transformers Qwen2ForCausalLM with every weight (biases and norms too) away from its init."""
    torch.manual_seed(seed)
    hf_config = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=heads * 8, intermediate_size=44, num_hidden_layers=2,
        num_attention_heads=heads, num_key_value_heads=kv_heads, rope_theta=5000.0 + 100 * seed,
        rms_norm_eps=1e-5, tie_word_embeddings=tied, max_position_embeddings=256)
    reference = transformers.Qwen2ForCausalLM._from_config(hf_config, attn_implementation="eager").eval()
    return move_weights_off_init_(reference, 0.15)


def ours_from(reference) -> Qwen2:
    config = Qwen2Config.from_hf_dict(reference.config.to_dict())
    ours = Qwen2(config).to(reference.dtype)   # float64 when the reference was made float64
    state = reference.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.weight")
    ours.load_state_dict(state, strict=True)
    return ours.eval()


def left_padded_batch(seed=1):
    """Three prompts of lengths 9, 5 and 2, left-padded with id 0: input_ids, attention_mask [3, 9]."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [9, 5, 2]
    input_ids = torch.zeros(3, 9, dtype=torch.long)
    attention_mask = torch.zeros(3, 9, dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, 9 - length:] = torch.randint(1, VOCAB, (length,), generator=generator)
        attention_mask[row, 9 - length:] = 1
    return input_ids, attention_mask


def reference_logits(reference, input_ids, attention_mask=None):
    """transformers 5 does not derive positions from the mask in forward(); pass them as generate() does."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return reference(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits


def float64(reference):
    """A float64 copy of a transformers model. Its eager attention turns padded rows into NaN in float64
    (transformers 5), so the copy uses SDPA, which handles them."""
    exact = copy.deepcopy(reference).double()
    exact.set_attn_implementation("sdpa")
    return exact


# ------------------------------------------------------------------------------------------- the forward pass

@pytest.mark.parametrize("heads,kv_heads,tied", SHAPES, ids=SHAPE_IDS)
def test_logits_match_transformers_with_and_without_padding(heads, kv_heads, tied):
    reference = make_reference(heads, kv_heads, tied)
    exact = float64(reference)
    ours = ours_from(reference)
    input_ids, attention_mask = left_padded_batch()

    full = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        assert_within_reference_error(ours(full), reference(full).logits, exact(full).logits)
        got = ours(input_ids, attention_mask)
    real = attention_mask.bool()
    assert_within_reference_error(got[real], reference_logits(reference, input_ids, attention_mask)[real],
                                  reference_logits(exact, input_ids, attention_mask)[real])
    assert torch.isfinite(got).all()  # pad positions too: no NaN leaks through fully masked rows

    # A padded row gets the logits it gets alone: within the bound of the row's exact logits alone.
    for row in range(3):
        alone = input_ids[row:row + 1][:, real[row]]
        assert_within_reference_error(got[row, real[row]], reference_logits(reference, alone)[0],
                                      reference_logits(exact, alone)[0])


@pytest.mark.parametrize("tied", [True, False])
def test_hidden_states_and_lm_head_weight(tied):
    ours = ours_from(make_reference(4, 2, tied))
    input_ids, attention_mask = left_padded_batch()
    with torch.no_grad():
        hidden = ours.hidden_states(input_ids, attention_mask)
        assert hidden.shape == (3, 9, 32)
        # Two float32 products of the same vectors, maybe by different kernels: each within gamma_32 of
        # the exact dot product, whose terms add up to at most |hidden row| |weight row| (Cauchy-Schwarz).
        scale = hidden.norm(dim=-1).max() * ours.lm_head_weight.norm(dim=-1).max()
        difference = (hidden @ ours.lm_head_weight.T - ours(input_ids, attention_mask)).abs().max()
        assert difference <= 2 * dot_bound(32) * scale
    assert ours.lm_head_weight.shape == (VOCAB, 32)
    assert (ours.lm_head_weight is ours.model.embed_tokens.weight) == tied


def test_rmsnorm_takes_statistics_in_float32_for_half_precision_inputs():
    norm = qwen.RMSNorm(16, eps=1e-6).to(torch.float16)
    x = torch.randn(4, 16, dtype=torch.float64) * 1000  # x^2 overflows float16: only float32 statistics work
    expected = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6)
    got = norm(x.to(torch.float16))
    assert got.dtype == torch.float16
    # Rounding x to float16 moves each entry and the mean square by at most u16 (relative), so the
    # quotient by about 2 u16; rounding the result to float16 adds u16; float32 statistics add ~u32.
    assert ((got.double() - expected).abs() <= 4 * unit_roundoff(torch.float16) * expected.abs()).all()


def test_count_parameters_counts_tied_embedding_once():
    for tied in (True, False):
        reference = make_reference(4, 2, tied)
        assert qwen.count_parameters(ours_from(reference)) == reference.num_parameters()


# ------------------------------------------------------------------------------------------- generation

@pytest.mark.parametrize("heads,kv_heads,tied", SHAPES[:3], ids=SHAPE_IDS[:3])
def test_greedy_generation_matches_transformers(heads, kv_heads, tied):
    reference = float64(make_reference(heads, kv_heads, tied, seed=3))
    ours = ours_from(reference)
    input_ids, attention_mask = left_padded_batch()

    def theirs(**eos):
        return reference.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=20,
                                  do_sample=False, **eos)

    # No EOS: all 20 tokens of every row.
    expected = theirs(eos_token_id=None, pad_token_id=0)
    got = generate(ours, input_ids, attention_mask, max_new_tokens=20)
    assert got.shape == (3, 9 + 20)
    assert torch.equal(got, expected)

    # A forced EOS: the token row 0 emits at step 4. Row 0 stops there and is padded; others may go on.
    eos = int(expected[0, 9 + 4])
    expected = theirs(eos_token_id=eos, pad_token_id=VOCAB - 1)
    got = generate(ours, input_ids, attention_mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=VOCAB - 1)
    assert torch.equal(got, expected)
    first_eos = int((got[0, 9:] == eos).nonzero()[0])
    assert first_eos <= 4 and (got[0, 9 + first_eos + 1:] == VOCAB - 1).all()

    # A list of EOS ids that every row emits by step 3: generation ends early, for both.
    every_row_eos = sorted({int(t) for t in theirs(eos_token_id=None, pad_token_id=0)[:, 9 + 3]})
    expected = theirs(eos_token_id=every_row_eos, pad_token_id=0)
    got = generate(ours, input_ids, attention_mask, max_new_tokens=20, eos_token_id=every_row_eos, pad_token_id=0)
    assert got.shape[1] <= 9 + 4
    assert torch.equal(got, expected)


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_kv_cache_decoding_equals_full_recomputation(padded):
    ours = ours_from(float64(make_reference(7, 1, False, seed=5)))
    input_ids, attention_mask = left_padded_batch(seed=6)
    if not padded:
        input_ids, attention_mask = torch.randint(0, VOCAB, (3, 9)), torch.ones(3, 9, dtype=torch.long)
    cached = generate(ours, input_ids, attention_mask, max_new_tokens=16)

    sequence, mask = input_ids, attention_mask
    with torch.no_grad():
        for _ in range(16):
            next_token = ours(sequence, mask)[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, next_token], dim=1)
            mask = torch.cat([mask, torch.ones_like(next_token)], dim=1)
    assert torch.equal(cached, sequence)


def test_generation_default_pad_is_first_eos_and_output_feeds_training():
    ours = ours_from(make_reference(4, 2, True, seed=7))
    input_ids, attention_mask = left_padded_batch()
    free = generate(ours, input_ids, attention_mask, max_new_tokens=12)
    eos = [int(free[0, 9 + 2]), VOCAB + 5]
    got = generate(ours, input_ids, attention_mask, max_new_tokens=12, eos_token_id=eos)
    row0 = got[0, 9:]
    assert int(row0[2]) == eos[0]
    assert (row0[3:] == eos[0]).all()
    # The ids are ordinary tensors (not inference-mode ones): a training pass can backpropagate through them.
    ours(got).sum().backward()
    assert ours.model.embed_tokens.weight.grad is not None


def test_sampling_is_reproducible_with_a_seeded_generator():
    ours = ours_from(make_reference(4, 2, False, seed=8))
    input_ids, attention_mask = left_padded_batch()

    def sample(seed, top_p=0.9):
        return generate(ours, input_ids, attention_mask, max_new_tokens=20, temperature=1.0, top_p=top_p,
                        generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(11), sample(11))
    assert not torch.equal(sample(11), sample(12))
    # A vanishing nucleus keeps only the most likely token: greedy.
    assert torch.equal(sample(13, top_p=1e-9), generate(ours, input_ids, attention_mask, max_new_tokens=20))


def test_top_p_samples_only_from_the_nucleus():
    ours = ours_from(float64(make_reference(4, 2, False, seed=9)))
    prompt = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(2)).repeat(200, 1)
    with torch.no_grad():
        probabilities = torch.softmax(ours(prompt[:1])[0, -1].double() / 3.0, -1)
    ordered, order = probabilities.sort(descending=True)
    nucleus_size = int((ordered.cumsum(0) < 0.5).sum()) + 1  # smallest prefix with mass >= 0.5
    assert nucleus_size >= 3
    sampled = generate(ours, prompt, max_new_tokens=1, temperature=3.0, top_p=0.5,
                       generator=torch.Generator().manual_seed(0))[:, -1]
    assert set(sampled.tolist()) <= set(order[:nucleus_size].tolist())
    assert len(set(sampled.tolist())) >= 2


def test_generate_rejects_right_padding_and_bad_sampling_knobs():
    ours = ours_from(make_reference(4, 2, True))
    input_ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="left-padded"):
        generate(ours, input_ids, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="top_p"):
        generate(ours, input_ids, temperature=1.0, top_p=0.0)


# ------------------------------------------------------------------------------------------- checkpoints

def test_config_round_trips_and_reads_both_transformers_layouts(tmp_path):
    config = Qwen2Config(vocab_size=11, hidden_size=16, intermediate_size=20, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, rope_theta=12345.0, eos_token_id=[3, 4])
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
    assert Qwen2Config.from_json(tmp_path / "config.json") == config
    hf = transformers.Qwen2Config.from_pretrained(tmp_path)
    assert hf.rope_parameters["rope_theta"] == 12345.0 and hf.num_key_value_heads == 2
    # A transformers 4.x / Qwen2.5 style file: top-level rope_theta, rope_scaling null, sliding window off.
    legacy = {k: v for k, v in config.to_hf_dict().items() if k != "rope_parameters"}
    legacy.update(rope_scaling=None, use_sliding_window=False, sliding_window=32768, max_window_layers=21)
    assert Qwen2Config.from_hf_dict(legacy) == config


@pytest.mark.parametrize("tied", [True, False])
def test_our_checkpoint_loads_in_transformers_and_back(tmp_path, tied):
    ours = ours_from(make_reference(7, 1, tied, seed=4))
    save_pretrained(ours, tmp_path / "ckpt")
    input_ids, attention_mask = left_padded_batch()
    theirs = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "ckpt", attn_implementation="eager").eval()
    assert theirs.config.tie_word_embeddings == tied
    with torch.no_grad():
        expected = ours(input_ids, attention_mask)
        real = attention_mask.bool()
        assert_within_reference_error(expected[real], reference_logits(theirs, input_ids, attention_mask)[real],
                                      reference_logits(float64(theirs), input_ids, attention_mask)[real])
        assert torch.equal(load_pretrained(tmp_path / "ckpt")(input_ids, attention_mask), expected)
    assert ("lm_head.weight" in load_file(tmp_path / "ckpt" / "model.safetensors")) != tied


@pytest.mark.parametrize("sharded", [False, True], ids=["single-file", "sharded"])
def test_transformers_checkpoint_loads_in_ours(tmp_path, sharded):
    reference = make_reference(4, 2, False, seed=2)
    reference.save_pretrained(tmp_path, max_shard_size="20KB" if sharded else "5GB")
    assert (tmp_path / "model.safetensors.index.json").exists() == sharded
    ours = load_pretrained(tmp_path)
    input_ids, attention_mask = left_padded_batch()
    with torch.no_grad():
        real = attention_mask.bool()
        assert_within_reference_error(ours(input_ids, attention_mask)[real],
                                      reference_logits(reference, input_ids, attention_mask)[real],
                                      reference_logits(float64(reference), input_ids, attention_mask)[real])
    half = load_pretrained(tmp_path, dtype=torch.bfloat16)
    assert half.lm_head_weight.dtype == torch.bfloat16
    assert generate(half, input_ids, attention_mask, max_new_tokens=3).shape == (3, 12)


def test_save_is_atomic_and_keeps_other_files(tmp_path, monkeypatch):
    first = ours_from(make_reference(4, 2, True, seed=1))
    save_pretrained(first, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "tokenizer.json").write_text("{}")
    input_ids = torch.randint(0, VOCAB, (1, 5))
    with torch.no_grad():
        first_logits = first(input_ids)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(qwen, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(ours_from(make_reference(4, 2, True, seed=2)), tmp_path / "ckpt")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no half-written folder left behind
    with torch.no_grad():
        assert torch.equal(load_pretrained(tmp_path / "ckpt")(input_ids), first_logits)

    second = ours_from(make_reference(4, 2, True, seed=2))
    save_pretrained(second, tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert (tmp_path / "ckpt" / "tokenizer.json").read_text() == "{}"
    with torch.no_grad():
        assert torch.equal(load_pretrained(tmp_path / "ckpt")(input_ids), second(input_ids))


# ------------------------------------------------------------------------------------------- bad checkpoints

@pytest.fixture
def good_checkpoint(tmp_path):
    save_pretrained(ours_from(make_reference(4, 2, False)), tmp_path / "ckpt")
    return tmp_path / "ckpt"


def rewrite_tensors(folder, change):
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def rewrite_config(folder, change):
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def truncate(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def make_sharded_with_missing_shard(folder):
    index = {"metadata": {}, "weight_map": {name: "model-00001-of-00002.safetensors"
                                            for name in load_file(folder / "model.safetensors")}}
    (folder / "model.safetensors").rename(folder / "model-00002-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


BAD_CHECKPOINTS = {
    "missing-folder": (lambda f: shutil.rmtree(f), ["ckpt", "not found"]),
    "missing-config": (lambda f: (f / "config.json").unlink(), ["config.json", "not found"]),
    "config-not-json": (lambda f: (f / "config.json").write_text("{oops"), ["config.json", "JSON"]),
    "config-missing-field": (lambda f: rewrite_config(f, lambda c: c.pop("hidden_size")),
                             ["config.json", "hidden_size", "missing"]),
    "config-sliding-window": (lambda f: rewrite_config(f, lambda c: c.update(use_sliding_window=True)),
                              ["config.json", "use_sliding_window"]),
    "config-yarn": (lambda f: rewrite_config(f, lambda c: c.update(rope_parameters={"rope_type": "yarn"})),
                    ["config.json", "rope_parameters", "yarn"]),
    "config-fractional-width": (lambda f: rewrite_config(f, lambda c: c.update(hidden_size=32.5)),
                                ["config.json", "hidden_size", "32.5", "whole number"]),
    "missing-weights": (lambda f: (f / "model.safetensors").unlink(), ["ckpt", "model.safetensors"]),
    "missing-tensor": (lambda f: rewrite_tensors(f, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
                       ["model.safetensors", "missing tensor model.layers.1.mlp.up_proj.weight"]),
    "missing-untied-head": (lambda f: rewrite_tensors(f, lambda t: t.pop("lm_head.weight")),
                            ["model.safetensors", "missing tensor lm_head.weight"]),
    "unexpected-tensor": (lambda f: rewrite_tensors(f, lambda t: t.update({"model.layers.9.extra": torch.ones(2)})),
                          ["model.safetensors", "unexpected tensor model.layers.9.extra"]),
    "misshaped-tensor": (lambda f: rewrite_tensors(
        f, lambda t: t.update({"model.layers.0.self_attn.k_proj.bias": torch.ones(8)})),
        ["model.safetensors", "model.layers.0.self_attn.k_proj.bias", "shape (8,)", "(16,)"]),
    "config-disagrees": (lambda f: rewrite_config(f, lambda c: c.update(intermediate_size=50)),
                         ["model.safetensors", "model.layers.0.mlp.gate_proj.weight", "shape (44, 32)",
                          "config.json implies (50, 32)"]),
    "truncated-weights": (truncate, ["model.safetensors", "truncated"]),
    "missing-shard": (make_sharded_with_missing_shard, ["model-00001-of-00002.safetensors", "not found"]),
}


@pytest.mark.parametrize("damage", list(BAD_CHECKPOINTS))
def test_bad_checkpoints_raise_a_clear_error(good_checkpoint, damage):
    corrupt, phrases = BAD_CHECKPOINTS[damage]
    corrupt(good_checkpoint)
    with pytest.raises(CheckpointError) as error:
        load_pretrained(good_checkpoint)
    for phrase in phrases:
        assert phrase in str(error.value)


def test_a_tokenizer_swapped_for_another_of_the_same_size_is_refused(tmp_path):
    """Two tokenizers of the same size, trained on other calls: either one's ids fit the embedding, so only
    the fingerprint recorded with the weights tells that the second is not the one they were trained with."""
    calls = [simulate_call(i, seed=3) for i in range(6)]
    ours = ChatTokenizer.train([render_call_text(c) for c in calls[:3]], 300)
    other = ChatTokenizer.train([render_call_text(c) for c in calls[3:]], 300)
    assert ours.vocab_size == other.vocab_size == 300 and ours.tokenizer.to_str() != other.tokenizer.to_str()
    model = Qwen2(Qwen2Config(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1))
    save_pretrained(model, tmp_path / "ckpt", ours)
    recorded = json.loads((tmp_path / "ckpt" / "config.json").read_text())["tokenizer_fingerprint"]
    assert recorded == fingerprint(tmp_path / "ckpt" / "tokenizer.json")
    assert load_with_tokenizer(tmp_path / "ckpt")[1].tokenizer.to_str() == ours.tokenizer.to_str()
    other.save(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=rf"^{tmp_path}/ckpt/tokenizer.json: not the tokenizer these weights "
                                              rf"were trained with \({tmp_path}/ckpt/config.json records "):
        load_with_tokenizer(tmp_path / "ckpt")
    ours.save(tmp_path / "ckpt")                                   # the right one back: loads again
    load_with_tokenizer(tmp_path / "ckpt")
