"""The composite reward of AI-Salesman's training engine (docs/design.md, "Rewards").

For a prompt (the call so far) with target reply A* (what the corpus's salesperson said), a completion
`<think>Th</think> reply` earns the terms below. A model that writes values as slots (`{price}`, see
tokenizer.py) is judged on what the customer would hear: the similarity, faithfulness and manager terms read the
reply and A* with their slots said (sales.heard; a slot this call has no value for is an unsupported claim); the
Bayesian terms score the text as the model writes it.

    total = w_format * format + w_similarity * similarity + w_faithfulness * faithfulness
            + w_manager * manager + w_bayes * bayes

* format        1 if the answer is one non-empty thought block then a non-empty reply, and not truncated.
* similarity    cosine of reply and A* under the TF-IDF embedder of retrieval.py, both with their names and
                numbers masked (sales.mask_values) and the reply's bare number lists dropped: it measures the
                phrasing of the move, so repeating the customer's name or a number is no likeness.
* faithfulness  precision x coverage - (1 - precision), over *distinct* claims (sales.check_claims, the
                checker the Manager labels with), in [-1, 1]: precision is the share of the reply's numbers the
                sheet or profile supports, each about its own subject (another product's, company's,
                customer's or business's name counts as wrong, the product's own name does not raise it);
                coverage is the share of A*'s facts the reply states. A claim-free reply earns nothing where A*
                gives facts, and a wrong claim costs: leaving a fact out beats getting it wrong. A forbidden
                promise scores -1.
* manager       the Manager's view of the move (sales.stage_move on the reply's intent in the stage the call
                was in): 1 for the move A* made, 0.5 for another on-stage move, 0 for an off-stage move, a
                mistake (pressure, a generic pitch) or words that are not speech (sales.is_speech).
* bayes         the Bayesian reasoning reward, prior + likelihood:
                    prior      = mean_t log P_ref(Th_t | c, Th_<t)          how coherent the thought is
                    likelihood = mean_t log P_ref(A*_t | c, Th, A*_<t)     how well it explains A*
                both under the frozen reference model (`ref_model`), each length-normalised and floored at
                `bayes_floor` so that one absurd token cannot swamp the group.

No term can be raised by saying less, by repeating a name or a number, or by a minimal answer: tests on
hand-made replies to real corpus turns check each (tests/test_reward.py, tests/test_reward_ranks.py, whose
mutants show that each rule is guarded). Beside the reward, every completion
is measured on what it *does* (BEHAVIOUR_KEYS: an on-stage move, the target reply's move, claim-free where
the target reply states facts), logged per step, so that reward hacking shows as it happens.

With w_bayes = 0 the ref_model pass is skipped and both parts read as the floor (the no-bayes ablation).
Otherwise it runs each distinct prompt once, and the answers of its rows (a GRPO group) attend to that
prompt's keys and values (model.continuation_logprobs).

A malformed or truncated completion never raises: it gets format 0, similarity, faithfulness and manager
0 (what it says is not judged) and bayes = 2 * bayes_floor, the lowest value the term can take.
Every term is returned separately for logs and audits. Weights and their reasons live in config.RewardConfig.

Left out: a learned reward model or LLM judge (evaluate.py has the optional judge), and any term that reads
the simulated customer's own rules (a real deployment has no such customer to ask).
"""

import torch

from model import Continuations, continuation_logprobs, pad_right
from retrieval import HashedTfidfEmbedder
from sales import (
    check_claims,
    classify_sales_intent,
    heard,
    mask_values,
    stage_move,
    without_lists,
)
from tokenizer import THINK_OPEN, format_assistant, split_thought


TERMS = ("format", "similarity", "faithfulness", "manager", "bayes")
# Everything CompositeReward returns: the weighted total, the terms, and the two halves of `bayes`.
REWARD_KEYS = ("total",) + TERMS + ("bayes_prior", "bayes_likelihood")
# What the replies *do*, measured on every completion and logged beside the reward, never weighted: an
# on-stage move, the move of the target reply, and claim-free where the target reply states facts. A reward that
# rises while these fall is being gamed.
BEHAVIOUR_KEYS = ("on_stage", "intent_match", "claim_free")
# The manager term for an on-stage move other than the target reply's: a good move, but not the one a good
# salesperson made here (the target reply's move earns 1, an off-stage move or a mistake 0).
OTHER_MOVE_CREDIT = 0.5
# What a wrong claim costs the faithfulness term, per unit of lost precision: a wrong fact is worse than none.
WRONG_FACT_COST = 1.0


@torch.no_grad()
def bayes_terms(model, tokenizer, prompt_ids, thoughts, target_replies):
    """Prior and likelihood of the Bayesian reward for a batch, under `model` (the frozen ref_model).

    Each sequence is the prompt followed by the answer `<think>Th</think>\nA*` written by
    tokenizer.format_assistant and encoded as one string, exactly as the model reads an answer, so a
    single forward pass yields both terms. The prior averages over the tokens that start inside Th, the
    likelihood over those that start inside A*. Returns two float32 tensors [B] of mean log-probs.
    A prompt shared by several rows (a GRPO group) is run once and its answers attend to its keys and
    values (model.continuation_logprobs).
    """
    answers, thought_masks, target_masks = [], [], []
    for thought, target in zip(thoughts, target_replies):
        answer = format_assistant(thought, target)
        answer_ids, offsets = tokenizer.encode_with_offsets(answer)
        thought_start = len(THINK_OPEN)
        thought_end, target_start = thought_start + len(thought), len(answer) - len(target)
        answers.append(answer_ids)
        thought_masks.append([int(thought_start <= a < thought_end) for a, _ in offsets])
        target_masks.append([int(a >= target_start) for a, _ in offsets])
    device = model.lm_head_weight.device
    sequences = Continuations.from_lists(prompt_ids, answers, tokenizer.pad_id, device)
    prior_mask, _ = pad_right(thought_masks, 0, device)                      # [B, La]
    likelihood_mask, _ = pad_right(target_masks, 0, device)
    logprobs = continuation_logprobs(model, sequences, prior_mask | likelihood_mask)
    prior = (logprobs * prior_mask).sum(1) / prior_mask.sum(1).clamp(min=1)
    likelihood = (logprobs * likelihood_mask).sum(1) / likelihood_mask.sum(1).clamp(min=1)
    return prior.cpu(), likelihood.cpu()


def coverage(reply, target):
    """The share of the target reply's distinct facts the reply states (each about its own subject), 1 when
    the target reply states none."""
    return len(reply.facts & target.facts) / len(target.facts) if target.facts else 1.0


def faithfulness_score(reply, target):
    """Faithfulness of a reply from its ClaimCheck and the target reply's, in [-1, 1]: facts earn, falsehoods cost.

        faithfulness = precision x coverage - WRONG_FACT_COST x (1 - precision)

    precision  distinct supported numbers / (distinct numbers + distinct wrong names), 1 when there are none.
               The product's and the company's own names are facts, but they do not raise precision: naming
               the product cannot excuse a wrong price.
    coverage   share of the target reply's distinct facts the reply states, 1 when it states none.
    So the target reply's facts said right score 1, nothing checkable where it gives facts 0, and
    a wrong number -1: leaving a fact out always beats getting it wrong, as it does with a real customer.
    A forbidden promise scores -1."""
    if reply.forbidden:
        return -1.0
    checked = reply.numbers + len(reply.wrong)
    precision = reply.numbers / checked if checked else 1.0
    return precision * coverage(reply, target) - WRONG_FACT_COST * (1.0 - precision)


def heard_target(sample):
    """A sample's target reply as the customer hears it (sales.heard)."""
    return heard(sample.target_reply, sample.product, sample.visible)


def fit_similarity_embedder(samples):
    """The similarity term's embedder, fitted on the masked target replies of training samples."""
    return HashedTfidfEmbedder().fit([mask_values(heard_target(s), s.product, s.visible) for s in samples])


class CompositeReward:
    """Scores completions of training samples (corpus.Sample); see the module docstring."""

    def __init__(self, config, ref_model, tokenizer, embedder):
        self.config = config              # config.RewardConfig
        self.ref_model = ref_model
        self.tokenizer = tokenizer
        self.embedder = embedder          # fit_similarity_embedder: fitted on masked target replies

    def weights(self):
        return {term: getattr(self.config, term) for term in TERMS}

    def __call__(self, samples, prompt_ids, completions, truncated):
        """samples: corpus.Sample per completion; prompt_ids: their token lists; completions: decoded
        text; truncated: bool per completion (no EOS within the length limit).

        Returns {key: float32 [N]} for every key of REWARD_KEYS and BEHAVIOUR_KEYS.
        """
        n = len(completions)
        parsed = [split_thought(text) for text in completions]
        replies = [heard(p.reply, s.product, s.visible) for p, s in zip(parsed, samples)]   # what would be heard
        ok = torch.tensor([p.well_formed and not cut for p, cut in zip(parsed, truncated)])
        floor = self.config.bayes_floor
        judged = ("similarity", "faithfulness", "manager")                      # 0 unless well formed
        terms = {"format": ok.float(), **{key: torch.zeros(n) for key in judged + BEHAVIOUR_KEYS},
                 "bayes_prior": torch.full((n,), floor), "bayes_likelihood": torch.full((n,), floor)}
        for i, (text, sample) in enumerate(zip(replies, samples)):
            # What the reply does, on every completion (a malformed one still says something).
            intent = classify_sales_intent(text, sample.stage_before)
            on_stage, _ = stage_move(intent, sample.stage_before)
            reply = check_claims(text, sample.product, sample.visible)
            target = check_claims(heard_target(sample), sample.product, sample.visible)
            terms["on_stage"][i] = float(on_stage)
            terms["intent_match"][i] = float(intent == sample.intent)
            terms["claim_free"][i] = float(bool(target.facts) and not reply.facts and not reply.wrong)
            if ok[i]:
                terms["manager"][i] = (1.0 if intent == sample.intent else OTHER_MOVE_CREDIT) if on_stage else 0.0
                terms["faithfulness"][i] = faithfulness_score(reply, target)
        rows = ok.nonzero().flatten().tolist()
        if rows:
            masked = [mask_values(without_lists(replies[i]), samples[i].product, samples[i].visible) for i in rows]
            targets = [mask_values(heard_target(samples[i]), samples[i].product, samples[i].visible) for i in rows]
            cosine = (self.embedder.encode(masked) * self.embedder.encode(targets)).sum(axis=1).clip(0.0, 1.0)
            terms["similarity"][rows] = torch.as_tensor(cosine, dtype=torch.float32)
            if self.config.bayes != 0:  # an unweighted term is not worth a ref_model forward pass
                prior, likelihood = bayes_terms(self.ref_model, self.tokenizer,
                                                [prompt_ids[i] for i in rows], [parsed[i].thought for i in rows],
                                                [samples[i].target_reply for i in rows])
                terms["bayes_prior"][rows] = prior.clamp(min=floor)
                terms["bayes_likelihood"][rows] = likelihood.clamp(min=floor)
        terms["bayes"] = terms["bayes_prior"] + terms["bayes_likelihood"]
        terms["total"] = sum(weight * terms[term] for term, weight in self.weights().items())
        return terms
