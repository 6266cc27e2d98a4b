"""The composite reward of AI-Salesman's training engine (docs/design.md, "Rewards").

For a prompt (the call so far) with reference reply A*, a completion `<think>Th</think> reply` earns

    total = w_format * format + w_similarity * similarity + w_faithfulness * faithfulness + w_bayes * bayes

* format        1 if the answer is one non-empty thought block then a non-empty reply, and not truncated.
* similarity    cosine of reply and A* under the TF-IDF embedder of retrieval.py (in [0, 1]).
* faithfulness  share of the reply's checkable claims that the product sheet or visible profile supports;
                0 for a forbidden promise (sales.faithfulness: the same checker the Manager labels with).
* bayes         the Bayesian reasoning reward, prior + likelihood:
                    prior      = mean_t log P_ref(Th_t | c, Th_<t)          how coherent the thought is
                    likelihood = mean_t log P_ref(A*_t | c, Th, A*_<t)     how well it explains A*
                both under the *frozen reference* model, each length-normalised and floored at
                `bayes_floor` so that one absurd token cannot swamp the group.

With w_bayes = 0 the reference pass is skipped and both parts read as the floor (the no-bayes ablation).

A malformed or truncated completion never raises: it gets format 0, similarity 0, faithfulness 0 and
bayes = 2 * bayes_floor, the lowest value the term can take. Every term is returned separately for logs
and audits. Weights and their reasons live in config.RewardConfig.

Left out: a learned reward model or LLM judge (evaluate.py has the optional judge), and any reward for
the customer's reaction (that is the closed-loop evaluation's job, not a per-turn training signal).
"""

import torch

from model import pad_right, sequence_logprobs
from sales import faithfulness
from tokenizer import THINK_OPEN, format_assistant, split_thought


TERMS = ("format", "similarity", "faithfulness", "bayes")
# Everything CompositeReward returns: the weighted total, the terms, and the two halves of `bayes`.
REWARD_KEYS = ("total",) + TERMS + ("bayes_prior", "bayes_likelihood")


@torch.no_grad()
def bayes_terms(model, tokenizer, prompt_ids, thoughts, references):
    """Prior and likelihood of the Bayesian reward for a batch, under `model` (the frozen reference).

    Each sequence is the prompt followed by the answer `<think>Th</think>\nA*` written by
    tokenizer.format_assistant and encoded as one string, exactly as the model reads an answer, so a
    single forward pass yields both terms. The prior averages over the tokens that start inside Th, the
    likelihood over those that start inside A*. Returns two float32 tensors [B] of mean log-probs.
    """
    sequences, thought_masks, reference_masks = [], [], []
    for prompt, thought, reference in zip(prompt_ids, thoughts, references):
        answer = format_assistant(thought, reference)
        answer_ids, offsets = tokenizer.encode_with_offsets(answer)
        thought_start = len(THINK_OPEN)
        thought_end, reference_start = thought_start + len(thought), len(answer) - len(reference)
        sequences.append(list(prompt) + answer_ids)
        thought_masks.append([0] * len(prompt) + [int(thought_start <= a < thought_end) for a, _ in offsets])
        reference_masks.append([0] * len(prompt) + [int(a >= reference_start) for a, _ in offsets])
    device = model.lm_head_weight.device
    input_ids, attention_mask = pad_right(sequences, tokenizer.pad_id, device)
    prior_mask, _ = pad_right(thought_masks, 0, device)
    likelihood_mask, _ = pad_right(reference_masks, 0, device)
    logprobs = sequence_logprobs(model, input_ids, attention_mask, prior_mask | likelihood_mask)
    prior = (logprobs * prior_mask).sum(1) / prior_mask.sum(1).clamp(min=1)
    likelihood = (logprobs * likelihood_mask).sum(1) / likelihood_mask.sum(1).clamp(min=1)
    return prior.cpu(), likelihood.cpu()


class CompositeReward:
    """Scores completions of training samples (corpus.Sample); see the module docstring."""

    def __init__(self, config, reference_model, tokenizer, embedder):
        self.config = config              # config.RewardConfig
        self.reference_model = reference_model
        self.tokenizer = tokenizer
        self.embedder = embedder          # retrieval.HashedTfidfEmbedder fitted on the training corpus

    def weights(self):
        return {term: getattr(self.config, term) for term in TERMS}

    def __call__(self, samples, prompt_ids, completions, truncated):
        """samples: corpus.Sample per completion; prompt_ids: their token lists; completions: decoded
        text; truncated: bool per completion (no EOS within the length limit).

        Returns {term: float32 [N]} for each of TERMS plus "bayes_prior", "bayes_likelihood", "total".
        """
        n = len(completions)
        parsed = [split_thought(text) for text in completions]
        ok = torch.tensor([p.well_formed and not cut for p, cut in zip(parsed, truncated)])
        floor = self.config.bayes_floor
        terms = {"format": ok.float(),
                 "similarity": torch.zeros(n), "faithfulness": torch.zeros(n),
                 "bayes_prior": torch.full((n,), floor), "bayes_likelihood": torch.full((n,), floor)}
        rows = ok.nonzero().flatten().tolist()
        if rows:
            replies = [parsed[i].reply for i in rows]
            references = [samples[i].reference for i in rows]
            reply_vectors = self.embedder.encode(replies)
            reference_vectors = self.embedder.encode(references)
            cosine = (reply_vectors * reference_vectors).sum(axis=1).clip(0.0, 1.0)
            terms["similarity"][rows] = torch.as_tensor(cosine, dtype=torch.float32)
            terms["faithfulness"][rows] = torch.tensor(
                [faithfulness(parsed[i].reply, samples[i].product, samples[i].visible) for i in rows],
                dtype=torch.float32)
            if self.config.bayes != 0:  # an unweighted term is not worth a reference forward pass
                prior, likelihood = bayes_terms(self.reference_model, self.tokenizer,
                                                [prompt_ids[i] for i in rows],
                                                [parsed[i].thought for i in rows], references)
                terms["bayes_prior"][rows] = prior.clamp(min=floor)
                terms["bayes_likelihood"][rows] = likelihood.clamp(min=floor)
        terms["bayes"] = terms["bayes_prior"] + terms["bayes_likelihood"]
        terms["total"] = sum(weight * terms[term] for term, weight in self.weights().items())
        return terms
