"""Composite reward: each term on hand-made cases; `bayes` against a direct float64 computation; and the
reward rewards selling: hand-made replies to real corpus turns are ordered as a sales coach would order them.

Tolerances follow from error bounds (tests/bounds.py): `bayes` within a small factor of the error the
direct computation makes in float32 on the same inputs; a similarity, one float32 dot product of unit
vectors, within gamma_m of the exact value for its m non-zero terms.
"""
import contextlib
import copy
import re

import numpy as np
import pytest
import torch

from bounds import assert_within_reference_error, dot_bound, unit_roundoff
from config import RewardConfig
from corpus import training_samples
from full_sequence import full_sequence_step
from reward import CompositeReward, bayes_terms, fit_similarity_embedder
from sales import NUMBER, check_claims, fill, is_good_turn, load_world, mask_values, slot_values
from simulate import simulate_call
from tiny import tiny_chat_model
from tokenizer import format_assistant


@pytest.fixture(scope="module")
def tiny():
    calls = [simulate_call(i, seed=3, noise=0.0) for i in range(12)]
    tokenizer, model = tiny_chat_model(calls)
    samples = [s for c in calls for s in training_samples(c) if is_good_turn(s.labels)]
    return calls, tokenizer, model, samples, fit_similarity_embedder(samples)


def direct_bayes(model, tokenizer, prompt, thought, reference, dtype=torch.float64):
    """No batching, no kernel, in `dtype` (float64: the exact value): the answer text encoded whole after
    the prompt, full logits, log_softmax gathered by hand; a token belongs to the thought (reference) when
    the text decoded before it ends inside the thought (at or after the start of the reference)."""
    model64 = copy.deepcopy(model).to(dtype)
    prompt_ids = tokenizer.encode(prompt)
    answer = format_assistant(thought, reference)
    answer_ids = tokenizer.encode(answer)
    starts = [len(tokenizer.decode(answer_ids[:i])) for i in range(len(answer_ids))]
    thought_start = answer.index(thought)
    reference_start = answer.rindex(reference)
    ids = torch.tensor([prompt_ids + answer_ids])
    logprobs = torch.log_softmax(model64(ids)[0], dim=-1)                   # [T, V]

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
                                    [s.target_reply for s in chosen])
    exact, plain = [], []                                           # batch rows differ in length: padding
    for sample, thought in zip(chosen, thoughts):
        exact.append(direct_bayes(model, tokenizer, sample.prompt, thought, sample.target_reply))
        plain.append(direct_bayes(model, tokenizer, sample.prompt, thought, sample.target_reply, torch.float32))
    assert_within_reference_error(torch.stack([prior, likelihood], 1), np.array(plain), np.array(exact))


def test_bayes_runs_a_prompt_shared_by_several_rows_once_with_the_same_result(tiny):
    """A GRPO group: several thoughts after one prompt. Each distinct prompt run once, or each prompt repeated
    in its rows (tests/full_sequence.py): both equal the direct float64 computation."""
    _, tokenizer, model, samples, _ = tiny
    rows = [samples[3]] * 3 + [samples[7]] * 2
    thoughts = ["Ask about their orders first.", "Price worries them.", "x", "Close now.", "Explain the steps."]
    prompts = [tokenizer.encode(s.prompt) for s in rows]
    expected = [direct_bayes(model, tokenizer, s.prompt, t, s.target_reply) for s, t in zip(rows, thoughts)]
    for path in (contextlib.nullcontext, full_sequence_step):
        with path():
            prior, likelihood = bayes_terms(model, tokenizer, prompts, thoughts, [s.target_reply for s in rows])
        for i, (expected_prior, expected_likelihood) in enumerate(expected):
            assert prior[i].item() == pytest.approx(expected_prior, abs=1e-4)
            assert likelihood[i].item() == pytest.approx(expected_likelihood, abs=1e-4)


def test_terms_and_weighted_total(tiny):
    _, tokenizer, model, samples, embedder = tiny
    config = RewardConfig(format=1.0, similarity=2.0, faithfulness=0.5, manager=0.7, bayes=0.1)
    reward = CompositeReward(config, model, tokenizer, embedder)
    sample = next(s for s in samples if "$" in s.target_reply)      # a reply that states a price
    price = f"${sample.product['price']}"
    wrong = sample.target_reply.replace(price, f"${sample.product['price'] + 17}")
    promise = sample.target_reply + " " + sample.product["forbidden_promises"][0].capitalize() + "."
    completions = [format_assistant("Quote the real price.", sample.target_reply),
                   format_assistant("Quote a price.", wrong),
                   format_assistant("Promise anything.", promise),
                   "no thought block at all", "<think>unclosed", format_assistant("", "empty thought"),
                   format_assistant("Fine.", sample.target_reply)]
    truncated = [False] * 6 + [True]
    terms = reward([sample] * 7, [tokenizer.encode(sample.prompt)] * 7, completions, truncated)

    assert terms["format"].tolist() == [1, 1, 1, 0, 0, 0, 0]
    masked = [mask_values(text, sample.product, sample.visible) for text in (wrong, sample.target_reply)]
    vectors = embedder.encode(masked).astype(np.float64)
    # reply == reference: the float32 sum of squares of a unit vector (entries rounded to float32: 2u on
    # the sum; the products: u) is within gamma_m of 1, m its non-zero entries.
    assert abs(terms["similarity"][0].item() - 1) <= dot_bound(np.count_nonzero(vectors[1]) + 3)
    m = np.count_nonzero(vectors[0] * vectors[1])                  # the terms of the dot product
    assert abs(terms["similarity"][1].item() - vectors[0] @ vectors[1]) <= dot_bound(m) + unit_roundoff()
    assert terms["faithfulness"][0].item() == 1.0
    # By hand: the wrong price is one wrong number among the reply's numbers; it covers every fact but the price.
    reply, reference = (check_claims(text, sample.product, sample.visible) for text in (wrong, sample.target_reply))
    precision = reply.numbers / (reply.numbers + 1)
    expected = precision * (len(reference.facts) - 1) / len(reference.facts) - (1 - precision)
    assert terms["faithfulness"][1].item() == pytest.approx(expected)
    assert terms["faithfulness"][2].item() == -1.0                              # forbidden promise
    assert terms["manager"][0].item() == 1.0                                    # the reference's own move
    # malformed or truncated: the defined floor on every term, no exception
    for row in (3, 4, 5, 6):
        assert terms["similarity"][row] == 0 and terms["faithfulness"][row] == 0 and terms["manager"][row] == 0
        assert terms["bayes"][row].item() == 2 * config.bayes_floor
    exact = direct_bayes(model, tokenizer, sample.prompt, "Quote the real price.", sample.target_reply)
    plain = direct_bayes(model, tokenizer, sample.prompt, "Quote the real price.", sample.target_reply, torch.float32)
    assert min(exact) > config.bayes_floor                          # the floor does not apply: no clamp
    assert_within_reference_error(terms["bayes"][:1], [sum(plain)], [sum(exact)])
    expected_total = (1.0 * terms["format"] + 2.0 * terms["similarity"] + 0.5 * terms["faithfulness"]
                      + 0.7 * terms["manager"] + 0.1 * terms["bayes"])
    torch.testing.assert_close(terms["total"], expected_total)


# ----------------------------------------------------------------------------------------------
# The reward rewards selling: hand-made replies to real corpus turns, scored with the default weights.
# Every reply of a case shares one thought, so the Bayesian term (same prompt, same thought, same reference)
# is the same for all of them and the order comes from what the replies say.

def total_rewards(tiny, sample, replies):
    _, tokenizer, model, _, embedder = tiny
    reward = CompositeReward(RewardConfig(), model, tokenizer, embedder)
    completions = [format_assistant("Answer the customer.", reply) for reply in replies]
    terms = reward([sample] * len(replies), [tokenizer.encode(sample.prompt)] * len(replies), completions,
                   [False] * len(replies))
    return terms["total"].tolist()


def turns_with_facts(tiny, intents=("explain_pricing", "present_product", "diagnose_with_numbers")):
    """Good reference turns of these intents that state at least one number."""
    _, _, _, samples, _ = tiny
    chosen = [s for s in samples if s.intent in intents and
              check_claims(s.target_reply, s.product, s.visible).numbers]
    assert len(chosen) >= 3
    return chosen[:6]


def spoken_numbers(text):
    return [m.group(0).strip() for m in NUMBER.finditer(text)]


def test_stating_the_facts_beats_saying_nothing_checkable(tiny):
    for sample in turns_with_facts(tiny):
        claim_free = mask_values(sample.target_reply, sample.product, sample.visible).replace("{", "").replace("}", "")
        correct, empty = total_rewards(tiny, sample, [sample.target_reply, "Let me tell you more about it."])
        assert correct > empty
        assert check_claims(claim_free, sample.product, sample.visible).total == 0
        assert correct > total_rewards(tiny, sample, [claim_free])[0]


def test_repeating_a_name_or_a_number_gains_nothing(tiny):
    for sample in turns_with_facts(tiny):
        number = spoken_numbers(sample.target_reply)[0]
        once, names, numbers = total_rewards(tiny, sample, [
            sample.target_reply,
            sample.target_reply + f" {sample.product['name']}, {sample.product['name']}, {sample.product['name']}.",
            sample.target_reply + f" Yes, {number}. {number}!"])
        assert names <= once and numbers <= once


def test_a_minimal_answer_scores_below_a_correct_one(tiny):
    _, _, _, samples, _ = tiny
    for sample in turns_with_facts(tiny) + [s for s in samples if s.intent == "greet_and_introduce"][:3]:
        correct, minimal = total_rewards(tiny, sample, [sample.target_reply, "y"])
        assert minimal < correct


def test_a_wrong_number_scores_below_leaving_it_out(tiny):
    # diagnose_with_numbers: the reference's only facts are the customer's numbers, so leaving one out and
    # getting it wrong both miss it; the wrong one must still score lower
    for sample in turns_with_facts(tiny) + turns_with_facts(tiny, intents=("diagnose_with_numbers",)):
        number = spoken_numbers(sample.target_reply)[0]
        digits = re.sub(r"[^\d.]", "", number)
        wrong = sample.target_reply.replace(number, number.replace(digits, str(int(float(digits)) + 17)), 1)
        left_out = sample.target_reply.replace(number, "", 1)
        assert check_claims(wrong, sample.product, sample.visible).unsupported
        wrong_total, left_out_total = total_rewards(tiny, sample, [wrong, left_out])
        assert wrong_total < left_out_total


def test_pushy_and_off_stage_replies_score_below_the_on_stage_one(tiny):
    _, _, _, samples, _ = tiny
    templates = load_world().sales_templates
    cases = [s for s in samples if s.stage_before in ("business_analysis", "product_introduction")][:6]
    assert cases
    for sample in cases:
        slots = slot_values(sample.product, sample.visible)
        pushy = fill(templates["pressure_close"]["texts"]["any"][0], slots)
        early = fill(templates["greet_and_introduce"]["texts"]["any"][0], slots)   # back to the opening: off-stage
        on_stage, pushy_total, off_stage_total = total_rewards(tiny, sample, [sample.target_reply, pushy, early])
        assert pushy_total < on_stage and off_stage_total < on_stage


def test_behaviour_measures(tiny):
    """What the replies do, beside the reward: on-stage share, same move as the reference, claim-free misses."""
    _, tokenizer, model, _, embedder = tiny
    sample = turns_with_facts(tiny)[0]
    reward = CompositeReward(RewardConfig(), model, tokenizer, embedder)
    replies = [sample.target_reply, "Let me tell you more about it.", "Honestly, you need to sign up right now."]
    terms = reward([sample] * 3, [tokenizer.encode(sample.prompt)] * 3,
                   [format_assistant("Go.", r) for r in replies], [False] * 3)
    assert terms["intent_match"].tolist() == [1.0, 0.0, 0.0]
    assert terms["on_stage"][0] == 1.0 and terms["on_stage"][2] == 0.0        # pressure is never on-stage
    assert terms["claim_free"].tolist() == [0.0, 1.0, 1.0]


def test_all_malformed_batch_never_calls_the_model(tiny):
    _, tokenizer, _, samples, embedder = tiny
    reward = CompositeReward(RewardConfig(), ref_model=None, tokenizer=tokenizer, embedder=embedder)
    terms = reward(samples[:2], [[1, 2], [3]], ["", "<think>a</think>"], [False, False])
    assert terms["total"].tolist() == [pytest.approx(0.1 * 2 * -10.0)] * 2
