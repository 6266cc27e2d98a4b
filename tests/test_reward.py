"""Composite reward: each term on hand-made cases; `bayes` against a direct float64 computation."""
import copy

import numpy as np
import pytest
import torch

from config import RewardConfig
from corpus import render_call_text, training_samples
from model import Qwen2, Qwen2Config
from retrieval import HashedTfidfEmbedder
from reward import CompositeReward, bayes_terms
from sales import faithfulness
from simulate import simulate_call
from tokenizer import ChatTokenizer, format_assistant


@pytest.fixture(scope="module")
def tiny():
    calls = [simulate_call(i, seed=3, noise=0.0) for i in range(12)]
    tokenizer = ChatTokenizer.train([render_call_text(c) for c in calls], vocab_size=400)
    torch.manual_seed(0)
    model = Qwen2(Qwen2Config(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              rope_theta=1e4)).eval()
    samples = [s for c in calls for s in training_samples(c)]
    embedder = HashedTfidfEmbedder().fit([s.reference for s in samples])
    return calls, tokenizer, model, samples, embedder


def direct_bayes(model, tokenizer, prompt, thought, reference):
    """float64, no batching, no kernel: the answer text encoded whole after the prompt, full logits,
    log_softmax gathered by hand; a token belongs to the thought (reference) when the text decoded
    before it ends inside the thought (at or after the start of the reference)."""
    model64 = copy.deepcopy(model).double()
    prompt_ids = tokenizer.encode(prompt)
    answer = format_assistant(thought, reference)
    answer_ids = tokenizer.encode(answer)
    starts = [len(tokenizer.decode(answer_ids[:i])) for i in range(len(answer_ids))]
    thought_start = answer.index(thought)
    reference_start = answer.rindex(reference)
    ids = torch.tensor([prompt_ids + answer_ids])
    logprobs = torch.log_softmax(model64(ids)[0].double(), dim=-1)          # [T, V]

    def mean_over(chosen):
        positions = [len(prompt_ids) + i for i, keep in enumerate(chosen) if keep]
        return np.mean([logprobs[t - 1, ids[0, t]].item() for t in positions])
    return (mean_over([thought_start <= s < thought_start + len(thought) for s in starts]),
            mean_over([s >= reference_start for s in starts]))


def test_bayes_matches_float64_direct_computation(tiny):
    _, tokenizer, model, samples, _ = tiny
    chosen = samples[:5]
    thoughts = ["Ask about their orders first.", "Price worries them.", "x", "Close now.", "Explain the steps."]
    prior, likelihood = bayes_terms(model, tokenizer, [tokenizer.encode(s.prompt) for s in chosen], thoughts,
                                    [s.reference for s in chosen])
    for i, (sample, thought) in enumerate(zip(chosen, thoughts)):   # batch rows differ in length: padding
        expected_prior, expected_likelihood = direct_bayes(model, tokenizer, sample.prompt, thought,
                                                           sample.reference)
        assert prior[i].item() == pytest.approx(expected_prior, abs=1e-4)
        assert likelihood[i].item() == pytest.approx(expected_likelihood, abs=1e-4)


def test_terms_and_weighted_total(tiny):
    _, tokenizer, model, samples, embedder = tiny
    config = RewardConfig(format=1.0, similarity=2.0, faithfulness=0.5, bayes=0.1)
    reward = CompositeReward(config, model, tokenizer, embedder)
    sample = next(s for s in samples if "$" in s.reference)      # a reply that states a price
    price = f"${sample.product['price']}"
    wrong = sample.reference.replace(price, f"${sample.product['price'] + 17}")
    promise = sample.reference + " " + sample.product["forbidden_promises"][0].capitalize() + "."
    completions = [format_assistant("Quote the real price.", sample.reference),
                   format_assistant("Quote a price.", wrong),
                   format_assistant("Promise anything.", promise),
                   "no thought block at all", "<think>unclosed", format_assistant("", "empty thought"),
                   format_assistant("Fine.", sample.reference)]
    truncated = [False] * 6 + [True]
    terms = reward([sample] * 7, [tokenizer.encode(sample.prompt)] * 7, completions, truncated)

    assert terms["format"].tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert terms["similarity"][0].item() == pytest.approx(1.0, abs=1e-5)       # reply == reference
    vectors = embedder.encode([wrong, sample.reference]).astype(np.float64)
    assert terms["similarity"][1].item() == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-5)
    assert terms["faithfulness"][0].item() == 1.0
    assert terms["faithfulness"][1].item() == pytest.approx(faithfulness(wrong, sample.product, sample.visible))
    assert terms["faithfulness"][1].item() < 1.0                                # the wrong price is caught
    assert terms["faithfulness"][2].item() == 0.0                               # forbidden promise
    # malformed or truncated: the defined floor on every term, no exception
    for row in (3, 4, 5, 6):
        assert terms["similarity"][row] == 0 and terms["faithfulness"][row] == 0
        assert terms["bayes"][row].item() == 2 * config.bayes_floor
    prior, likelihood = bayes_terms(model, tokenizer, [tokenizer.encode(sample.prompt)],
                                    ["Quote the real price."], [sample.reference])
    assert terms["bayes"][0].item() == pytest.approx(max(prior.item(), -10) + max(likelihood.item(), -10), abs=1e-5)
    expected_total = (1.0 * terms["format"] + 2.0 * terms["similarity"] + 0.5 * terms["faithfulness"]
                      + 0.1 * terms["bayes"])
    torch.testing.assert_close(terms["total"], expected_total)


def test_all_malformed_batch_never_calls_the_model(tiny):
    _, tokenizer, _, samples, embedder = tiny
    reward = CompositeReward(RewardConfig(), reference_model=None, tokenizer=tokenizer, embedder=embedder)
    terms = reward(samples[:2], [[1, 2], [3]], ["", "<think>a</think>"], [False, False])
    assert terms["total"].tolist() == [pytest.approx(0.1 * 2 * -10.0)] * 2
