"""DOGA, the Dynamic Outline-Guided Agent: AI-Salesman's inference engine (arXiv 2511.12133).

Before the model speaks, DOGA decides *what* the call needs next and shows the model proven ways to
say it. Offline and per turn:

1. **Script library** (`ScriptLibrary.build`, CLI `build`). From the training calls, keep the salesperson
   turns the Manager labelled on-stage and faithful; replace product and customer values by slots
   (`{price}`, `{monthly_orders}`, `{product}`: the slot names of `sales.slot_values`, the one place
   values are spoken); merge near-duplicates per intent (cosine of TF-IDF vectors, retrieval.py); keep
   the templates said in converted calls, each with its support (uses in converted calls), its uses in
   all calls and its conversion rate. Each template is keyed by the mean *context* it was said in, so
   that retrieval asks "what did successful salespeople say in situations like this one?".
2. **Intent classifier** (`IntentClassifier`, CLI `eval-intent`). A context is the customer's last
   words, the salesperson's previous line and the intents already achieved in the call, slotted and
   embedded. Its label is the next salesperson intent of the training call. Prediction is a
   similarity-weighted vote of the nearest training contexts *in the same stage*, masked by the finite
   state machine of sales.STAGE_TRANSITIONS: only intents whose stage may follow the current stage
   (and never a mistake intent) can win. Ours, not the paper's: with `moves` (a plans.Plan), the move the plan
   asks for replaces the classifier's (docs/design.md, "Planned moves").
3. **Outline and prompt** (`DogaPlanner.plan`, `assemble_messages`). Track the stage, classify the next
   intent, retrieve the top-k templates of that intent, fill their slots from the visible profile and
   the product sheet (a template with a slot we cannot fill is skipped, never spoken half-filled), and
   append the outline (stage goal + filled lines) to the system prompt, within max_prompt_length tokens.
4. **Agents**. `DogaAgent` speaks with the outline; `StaticAgent`, the baseline, shares every line of
   code but replaces the per-turn outline by one static few-shot block. Both parse `<think>..</think>`
   answers with tokenizer.split_thought.

Left out on purpose: the paper's LLM-based intent recogniser and its learned script ranker. A k-NN
vote over TF-IDF contexts is transparent (every prediction can be traced to the training turns that
caused it), trains in seconds and is fast enough to run per turn on a CPU (bench/retrieval.py).
See docs/design.md, "DOGA".

Why one module: the four steps share one definition of a turn's context (`context_parts`, slotted by
`sales.Slotter`), used offline to key the library and per turn to classify and retrieve; kept in one file, the
offline and the online side cannot drift apart, and the file reads in the order above.

CLI:
    python doga.py build --corpus data/train.jsonl --out DIR
    python doga.py eval-intent --library DIR --corpus data/test.jsonl
    python doga.py chat --model DIR --library DIR [--product ID] [--persona SEED]
"""

import argparse
import json
import os
import random
import re
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from config import GRPOConfig
from corpus import CorpusError, chat_messages, load_corpus, system_prompt
from files import write_json
from model import generate_completions, load_with_tokenizer
from plans import next_move
from retrieval import CosineIndex, HashedTfidfEmbedder
from runs import recorded_config
from sales import (
    GOOD_INTENTS,
    SALES_INTENTS,
    SLOT,
    STAGES,
    Slotter,
    classify_sales_intent,
    fill_slots,
    heard,
    is_good_turn,
    is_legal_move,
    load_world,
    slot_values,
    slotter_for,
    stage_move,
)
from simulate import make_persona
from tokenizer import split_thought


# What each stage is for: the first line of every outline.
STAGE_GOALS = {
    "opening": "Greet the customer by name, say who you are and why you call, and check they have a minute.",
    "business_analysis": "Ask about their situation and diagnose it with their own numbers.",
    "product_introduction": "Present the product that fits, with its exact facts from the sheet.",
    "objection_handling": ("Acknowledge the concern, then answer it with true facts; "
                           "never promise what the sheet forbids."),
    "operational_guidance": "Explain concretely how to sign up and how soon it is active.",
    "closing": "Ask for the commitment, or confirm the next steps, or say goodbye politely.",
}
if set(STAGE_GOALS) != set(STAGES):
    raise ImportError(f"doga.py: STAGE_GOALS covers {sorted(STAGE_GOALS)}, sales.STAGES is {STAGES}")


# ----------------------------------------------------------------------------------------------
# The stage machine: where a call is now, by the Manager's own rule (sales.stage_move).

def track_call(turns):
    """Replay the call so far through the stage machine. Returns (stage now, intents achieved).

    Turns of the corpus or of simulate.run_call carry the Manager's stage and labels: they are used as
    they are. A turn without them (a live chat, a Sample's messages) is classified with
    sales.classify_sales_intent and moves the stage by the Manager's own rule, sales.stage_move.
    """
    stage, achieved = STAGES[0], []
    for turn in turns:
        if turn["role"] != "sales":
            continue
        if "labels" in turn and "stage" in turn:
            if turn["labels"]["on_stage"]:
                achieved.append(turn["intent"])
            stage = turn["stage"]
            continue
        intent = turn.get("intent") or classify_sales_intent(turn["text"], stage)
        on_stage, stage = stage_move(intent, stage)
        if on_stage:
            achieved.append(intent)
    return stage, achieved


# ----------------------------------------------------------------------------------------------
# Contexts: what the classifier and the retriever look at before a salesperson turn.

CONTEXT_WEIGHTS = (1.0, 0.5, 0.5)   # customer's last words, salesperson's previous line, intents achieved


def context_parts(turns, slotter):
    """(customer's last words, salesperson's previous line, intents achieved), slotted, for the
    salesperson turn that follows `turns`."""
    customer = next((t["text"] for t in reversed(turns) if t["role"] == "customer"), "")
    sales = next((t["text"] for t in reversed(turns) if t["role"] == "sales"), "")
    _, achieved = track_call(turns)
    history = " ".join(f"did_{intent}" for intent in achieved) or "call_start"
    return (slotter(customer) or customer, slotter(sales) or sales, history)


def context_vector(embedder, product, visible, turns):
    """The unit context vector [D] before the salesperson turn that follows `turns`."""
    return embed_contexts(embedder, [context_parts(turns, slotter_for(product, visible))])[0]


def embed_contexts(embedder, parts):
    """parts: list of (customer, sales, history) -> unit vectors float32 [N, D] (weighted sum of the
    three TF-IDF vectors)."""
    vectors = embedder.encode([text for triple in parts for text in triple])      # [3N, D]
    vectors = vectors.reshape(len(parts), 3, -1)
    combined = np.einsum("npd,p->nd", vectors, np.asarray(CONTEXT_WEIGHTS, dtype=np.float32))
    return combined / np.maximum(np.linalg.norm(combined, axis=1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------------------------
# The script library.

@dataclass
class ScriptLibrary:
    """Templates keyed by context (rows grouped by intent) and training contexts (rows grouped by
    stage, metadata holds the counts of the next intent), sharing one fitted embedder."""
    embedder: HashedTfidfEmbedder
    # templates' metadata: id, intent, stage, text, slots, support, uses, conversion_rate, variants, domains
    templates: CosineIndex
    contexts: CosineIndex        # metadata: stage, counts {intent: n}
    summary: dict = field(default_factory=dict)

    @classmethod
    def build(cls, calls, n_features=2**10, merge_threshold=0.9, min_support=1, progress=True):
        """Build from training calls (corpus dicts). See the module docstring, step 1.

        n_features is 2**10, smaller than the embedder's default: contexts are short and templated, intent
        accuracy is the same as with 2**12 (0.941 vs 0.942 on a 2000-call corpus), and the per-stage
        context block a turn scans stays a few MB."""
        if not calls:
            raise ValueError("ScriptLibrary.build: no calls")
        lines = []        # good salesperson turns: (intent, slotted text, converted?, context parts)
        contexts = {}     # (stage, context parts) -> Counter of the next intent
        dropped = Counter()
        for call in tqdm(calls, desc="reading calls", disable=not progress):
            slotter = Slotter(call["product"], call["customer"]["visible"])
            for index, turn in enumerate(call["turns"]):
                if turn["role"] != "sales" or not turn["labels"]["on_stage"]:
                    continue
                before = call["turns"][:index]
                stage, _ = track_call(before)
                parts = context_parts(before, slotter)
                contexts.setdefault((stage, parts), Counter())[turn["intent"]] += 1
                if not is_good_turn(turn["labels"]):        # on-stage already: it is unfaithful
                    dropped["unfaithful"] += 1
                    continue
                text = slotter(turn["text"])
                if text is None:
                    dropped["ambiguous value"] += 1
                elif re.search(r"\d", text):
                    dropped["number not on the sheet"] += 1  # would be false for another customer
                else:
                    lines.append((turn["intent"], text, call["outcome"] == "converted", parts, call["domain"]))
        texts = sorted({line[1] for line in lines} | {t for _, parts in contexts for t in parts})
        embedder = HashedTfidfEmbedder(n_features=n_features).fit(texts)

        templates = _merge_templates(embedder, lines, merge_threshold, min_support)
        template_index = CosineIndex(dim=n_features)
        if templates:
            keys = embed_contexts(embedder, [p for t in templates for p in t.pop("contexts")])
            sizes = np.cumsum([0] + [t.pop("n_contexts") for t in templates])
            mean_keys = np.add.reduceat(keys, sizes[:-1], axis=0)                 # [T, D]
            template_index.add(mean_keys, templates)

        context_keys = sorted(contexts, key=lambda key: (STAGES.index(key[0]), key[1]))  # grouped by stage
        context_index = CosineIndex(dim=n_features)
        context_index.add(embed_contexts(embedder, [parts for _, parts in context_keys]),
                          [{"stage": stage, "counts": dict(contexts[(stage, parts)])} for stage, parts in context_keys])
        summary = {"calls": len(calls), "converted_calls": sum(c["outcome"] == "converted" for c in calls),
                   "good_lines": len(lines), "dropped_lines": dict(dropped), "templates": len(template_index),
                   "contexts": len(context_index), "n_features": n_features, "merge_threshold": merge_threshold,
                   "min_support": min_support,
                   "templates_per_intent": dict(Counter(m["intent"] for m in template_index.metadata))}
        return cls(embedder, template_index, context_index, summary)

    def retrieve(self, context_vectors, intent, k):
        """Templates of `intent` whose contexts are most like each of context_vectors [Q, D]: per query, the
        metadata dicts, best first."""
        scores, rows = self.templates.search(context_vectors, k, where={"intent": intent})
        return [[dict(self.templates.metadata[row], score=float(score)) for score, row in zip(query_scores, query_rows)]
                for query_scores, query_rows in zip(scores, rows)]

    def save(self, folder):
        os.makedirs(folder, exist_ok=True)
        self.embedder.save(os.path.join(folder, "embedder.npz"))
        self.templates.save(os.path.join(folder, "templates"))
        self.contexts.save(os.path.join(folder, "contexts"))
        write_json(os.path.join(folder, "library.json"), self.summary, indent=1)

    @classmethod
    def load(cls, folder):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder}: no script library here (build one with `python doga.py build`)")
        summary_path = os.path.join(folder, "library.json")
        try:
            with open(summary_path, encoding="utf-8") as handle:
                summary = json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{summary_path}: unreadable library summary ({error})") from None
        library = cls(HashedTfidfEmbedder.load(os.path.join(folder, "embedder.npz")),
                      CosineIndex.load(os.path.join(folder, "templates")),
                      CosineIndex.load(os.path.join(folder, "contexts")), summary)
        for name, index in (("templates", library.templates), ("contexts", library.contexts)):
            if len(index) and index.dim != library.embedder.n_features:
                raise ValueError(f"{folder}/{name}.npz: vectors have dimension {index.dim}, "
                                 f"embedder.npz has {library.embedder.n_features} features")
        return library


def _merge_templates(embedder, lines, threshold, min_support):
    """Group good lines by intent, merge near-duplicate texts (cosine >= threshold, greedily, the most
    used text first) and keep the groups used at least `min_support` times in converted calls."""
    templates = []
    for intent in GOOD_INTENTS:
        uses = {}                        # slotted text -> [converted uses, all uses, contexts, domains]
        for line_intent, text, converted, parts, domain in lines:
            if line_intent == intent:
                entry = uses.setdefault(text, [0, 0, [], set()])
                entry[0] += converted
                entry[1] += 1
                entry[2].append(parts)
                entry[3].add(domain)
        texts = sorted(uses, key=lambda t: (-uses[t][0], -uses[t][1], t))
        if not texts:
            continue
        vectors = embedder.encode(texts)
        leaders, members = [], []        # leader rows into texts, and each group's member rows
        for row, vector in enumerate(vectors):
            similarity = vectors[leaders] @ vector if leaders else np.zeros(0)
            if len(similarity) and similarity.max() >= threshold:
                members[int(similarity.argmax())].append(row)
            else:
                leaders.append(row)
                members.append([row])
        for group in members:
            support = sum(uses[texts[r]][0] for r in group)
            if support < min_support:
                continue
            total = sum(uses[texts[r]][1] for r in group)
            leader = texts[group[0]]
            contexts = [p for r in group for p in uses[texts[r]][2]]
            templates.append({"id": f"{intent}-{len(templates)}", "intent": intent, "stage": SALES_INTENTS[intent],
                              "text": leader, "slots": sorted(set(SLOT.findall(leader))), "support": support,
                              "uses": total, "conversion_rate": round(support / total, 4), "variants": len(group),
                              "domains": sorted(set().union(*(uses[texts[r]][3] for r in group))),
                              "contexts": contexts, "n_contexts": len(contexts)})
    return templates


# ----------------------------------------------------------------------------------------------
# The intent classifier.

class IntentClassifier:
    """k-NN over the library's training contexts in the current stage, masked by the stage machine.

    label_noise > 0 flips that share of the *predicted* intents to another legal intent, drawn uniformly:
    the ablation "DOGA with 20% of intent labels flipped" is IntentClassifier(library, label_noise=0.2).
    Each flip is decided by `seed` and the call so far (`situation`: product, profile and turns; not
    the call order), so it is reproducible however calls are batched. Flipping the *training* labels
    instead changed nothing we could see: a k-NN vote over similar contexts absorbs random flips.
    """

    def __init__(self, library, k=10, label_noise=0.0, seed=0):
        if not 0.0 <= label_noise <= 1.0:
            raise ValueError(f"IntentClassifier: label_noise must be in [0, 1], got {label_noise}")
        self.library, self.k = library, k
        self.label_noise, self.seed = label_noise, seed
        self.intents = GOOD_INTENTS
        counts = np.zeros((len(library.contexts), len(self.intents)), dtype=np.float32)  # [N, I]
        column = {intent: i for i, intent in enumerate(self.intents)}
        for row, meta in enumerate(library.contexts.metadata):
            for intent, n in meta["counts"].items():
                counts[row, column[intent]] += n
        self.counts = counts
        self.stage_rows = {stage: library.contexts.rows_matching({"stage": stage}) for stage in STAGES}
        self.stage_prior = {stage: counts[rows].sum(axis=0) for stage, rows in self.stage_rows.items()}
        self.legal = {stage: np.array([is_legal_move(i, stage) for i in self.intents]) for stage in STAGES}

    def scores(self, context_vectors, stage):
        """Masked votes per intent for contexts [Q, D] (or one [D]) in one stage: float32 [Q, I] (or [I]);
        illegal intents are -inf."""
        single = context_vectors.ndim == 1
        context_vectors = np.atleast_2d(context_vectors)
        legal = self.legal[stage]
        votes = np.zeros((len(context_vectors), len(self.intents)), dtype=np.float32)           # [Q, I]
        if len(self.stage_rows[stage]):
            similarity, rows = self.library.contexts.search(context_vectors, self.k, where={"stage": stage})
            votes = np.einsum("qk,qki->qi", np.maximum(similarity, 0.0), self.counts[rows])       # [Q, k] x [Q, k, I]
        nothing_legal = ~(votes * legal).any(axis=1)              # nothing legal nearby: the stage's legal prior
        votes[nothing_legal] = self.stage_prior[stage] + 1e-3
        scores = np.where(legal, votes, -np.inf).astype(np.float32)
        return scores[0] if single else scores

    def predict(self, context_vector, stage, situation=""):
        return self.predict_many(context_vector[None, :], [stage], [situation])[0]

    def predict_many(self, context_vectors, stages, situations):
        """The next intent for each context [Q, D] in its stage (a list of Q), scored a stage at a time."""
        intents = [None] * len(stages)
        for stage in sorted(set(stages)):
            rows = [i for i, s in enumerate(stages) if s == stage]
            for row, scores in zip(rows, self.scores(context_vectors[rows], stage)):
                best = int(np.argmax(scores))
                if self.label_noise > 0:
                    rng = np.random.default_rng([self.seed, zlib.crc32(situations[row].encode())])
                    others = np.flatnonzero(np.isfinite(scores) & (np.arange(len(scores)) != best))  # other legal moves
                    if rng.random() < self.label_noise and len(others):
                        best = int(rng.choice(others))
                intents[row] = self.intents[best]
        return intents

    def predict_turns(self, product, visible, turns):
        """The next salesperson intent after `turns` of a call with this product and profile."""
        stage, _ = track_call(turns)
        return self.predict(context_vector(self.library.embedder, product, visible, turns), stage,
                            situation(product, visible, turns))


def situation(product, visible, turns):
    """A call so far as one string: what decides an IntentClassifier's label flips."""
    return json.dumps([product.get("id"), visible, [t["text"] for t in turns]], sort_keys=True)


def evaluate_intents(classifier, calls):
    """Accuracy of the classifier on the on-stage salesperson turns of `calls`, with the majority-class
    baseline (the most frequent intent of the library's training contexts) and a confusion matrix."""
    majority = classifier.intents[int(np.argmax(classifier.counts.sum(axis=0)))]
    truths, predictions = [], []
    for call in calls:
        product, visible = call["product"], call["customer"]["visible"]
        for index, turn in enumerate(call["turns"]):
            if turn["role"] == "sales" and turn["labels"]["on_stage"]:
                truths.append(turn["intent"])
                predictions.append(classifier.predict_turns(product, visible, call["turns"][:index]))
    if not truths:
        raise ValueError("evaluate_intents: no on-stage salesperson turns to evaluate")
    labels = sorted(set(truths) | set(predictions), key=list(SALES_INTENTS).index)
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for truth, prediction in zip(truths, predictions):
        confusion[labels.index(truth), labels.index(prediction)] += 1
    return {"turns": len(truths), "accuracy": float(np.mean([t == p for t, p in zip(truths, predictions)])),
            "majority_intent": majority, "majority_accuracy": float(np.mean([t == majority for t in truths])),
            "labels": labels, "confusion": confusion}


# ----------------------------------------------------------------------------------------------
# The outline: one turn's plan.

@dataclass
class Outline:
    stage: str             # the stage the call is in now
    intent: str            # the predicted next intent
    goal: str              # STAGE_GOALS of the intent's stage
    lines: list            # retrieved templates, slots filled, best first
    template_ids: list
    templates: list        # the same templates as written, slots and all (what a model that writes slots reads)

    def full_text(self):
        """The whole outline, for a person (make chat's /outline): the move and its goal, then every retrieved
        line."""
        step = self.intent.replace("_", " ")
        return "\n".join([f"Next step: {step} ({SALES_INTENTS[self.intent].replace('_', ' ')}). Goal: {self.goal}"]
                         + [f"Proven line: {line}" for line in self.lines])

    def message(self, slots=False):
        """The outline as the short system message put just before the salesperson speaks: the move, then the
        best proven line, written as the model writes (slots or values). Short on purpose: one stands before
        every salesperson turn of a DOGA prompt."""
        line = (self.templates if slots else self.lines)[:1] or [self.goal]
        return f"Outline: {self.intent.replace('_', ' ')}. Proven line: {line[0]}"

    def record(self):
        """What the outline message tells, as a played call keeps it on the turn it preceded: the move and the line
        (the best retrieved one, or the stage goal when no template could be filled)."""
        return {"intent": self.intent, "line": self.lines[0] if self.lines else self.goal}


class DogaPlanner:
    """Per turn: stage -> next intent -> top-k templates of that intent -> slots filled -> Outline.

    Templates said in the call's own domain come first; templates of other domains are used only when
    none of the own domain fits (a domain held out of training still gets its shared lines). Only templates
    this call can fill are used, also when the model reads them with their slots (`slots`: the outline messages
    write values as the model does). Plans are remembered by the call so far: a DOGA prompt shows the outline of
    every earlier salesperson turn, so the same plans are asked for again turn after turn.

    `moves`: a plans.Plan, or None (the default, the paper's DOGA). With a plan, the next move is the one the plan
    asks for (plans.next_move: it answers the customer's words and asks again for a planned move the reply did not
    make) instead of the classifier's; retrieval and the outline are the same. A plan reads the Manager's labels
    and the customer's intents, as the turns of a played call (simulate.Call) carry them."""

    def __init__(self, library, classifier=None, k=3, slots=False, moves=None):
        self.library = library
        self.classifier = classifier or IntentClassifier(library)
        self.k = k
        self.slots = slots
        self.moves = moves
        self._plans = {}              # _key(product, visible, turns) -> Outline

    def plan(self, product, visible, turns):
        return self.plan_many([(product, visible, turns)])[0]

    def plan_many(self, calls_so_far, chunk=4096):
        """Outlines for many (product, visible, turns): contexts embedded together, the classifier and the
        retriever asked once per stage and per intent, so a whole corpus is planned in seconds."""
        keys = [self._key(*call) for call in calls_so_far]
        todo = list({key: call for key, call in zip(keys, calls_so_far) if key not in self._plans}.items())
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            calls = [call for _, call in part]
            stages = [track_call(turns)[0] for _, _, turns in calls]
            vectors = embed_contexts(self.library.embedder,
                                     [context_parts(turns, slotter_for(p, v)) for p, v, turns in calls])  # [Q, D]
            intents = (self.classifier.predict_many(vectors, stages, [situation(*call) for call in calls])
                       if self.moves is None else [next_move(self.moves, turns) for _, _, turns in calls])
            candidates = [None] * len(calls)
            for intent in sorted(set(intents)):
                rows = [i for i, x in enumerate(intents) if x == intent]
                for row, templates in zip(rows, self.library.retrieve(vectors[rows], intent, 4 * self.k)):
                    candidates[row] = templates                             # spares for unfillable ones
            for (key, (product, visible, _)), stage, intent, found in zip(part, stages, intents, candidates):
                self._plans[key] = self._outline(product, visible, stage, intent, found)
        if len(self._plans) > 200_000:                              # a long evaluation: keep memory bounded
            self._plans = {key: self._plans[key] for key in keys}
        return [self._plans[key] for key in keys]

    def _key(self, product, visible, turns):
        """What a plan depends on: the call so far (situation), and with planned moves the intents the plan reads."""
        if self.moves is None:
            return situation(product, visible, turns)
        return situation(product, visible, turns) + json.dumps([t.get("intent") for t in turns])

    def _outline(self, product, visible, stage, intent, candidates):
        values = slot_values(product, visible)
        own_domain = [t for t in candidates if product.get("domain") in t["domains"]]
        lines, ids, texts = [], [], []
        for template in own_domain or candidates:
            filled = fill_slots(template["text"], values)
            if filled is not None and filled not in lines:
                lines.append(filled)
                ids.append(template["id"])
                texts.append(template["text"])
            if len(lines) == self.k:
                break
        return Outline(stage, intent, STAGE_GOALS[SALES_INTENTS[intent]], lines, ids, texts)

    def record_outlines(self, calls):
        """Store on every salesperson turn of played `calls` the outline put before it (turn["outline"],
        Outline.record), planned from the call as it stood then. Plans are deterministic and remembered, so
        these are the outlines the agent was prompted with, not new ones."""
        positions = [(call, i) for call in calls for i, turn in enumerate(call["turns"]) if turn["role"] == "sales"]
        outlines = self.plan_many([(call["product"], call["customer"]["visible"], call["turns"][:i])
                                   for call, i in positions])
        for (call, i), outline in zip(positions, outlines):
            call["turns"][i]["outline"] = outline.record()

    def outline_messages(self, calls, next_turn=True):
        """For each (product, visible, turns): {turn index: Outline.message()} for every salesperson turn of
        `turns` and, with next_turn, for the turn after them (index len(turns)), each planned from the call as
        it stood before that turn: the outlines corpus.chat_messages puts in a DOGA prompt."""
        positions = [(n, index) for n, (_, _, turns) in enumerate(calls) for index in range(len(turns) + next_turn)
                     if index == len(turns) or turns[index]["role"] == "sales"]
        planned = self.plan_many([(calls[n][0], calls[n][1], calls[n][2][:index]) for n, index in positions])
        messages = [{} for _ in calls]
        for (n, index), outline in zip(positions, planned):
            messages[n][index] = outline.message(self.slots)
        return messages


# ----------------------------------------------------------------------------------------------
# The prompt: system header + guidance lines + history, within max_prompt_length tokens.

class PromptTooLong(ValueError):
    pass


def assemble_messages(tokenizer, header, title, guidance, history, max_prompt_length):
    """ChatML messages for the next salesperson turn, at most `max_prompt_length` tokens.

    The system message is `header` (never cut), then `title` and the `guidance` lines that fit. When the prompt
    is too long, guidance lines are dropped from the last one up, then history messages from the oldest on (the
    customer's latest message stays). Returns (messages, guidance kept). Raises PromptTooLong when even
    the header and the latest message do not fit.
    """
    guidance, history = list(guidance), list(history)
    while True:
        system = header if not guidance else f"{header}\n{title}\n" + "\n".join(f"- {line}" for line in guidance)
        messages = [{"role": "system", "content": system}] + history
        length = len(tokenizer.encode_chat(messages))
        if length <= max_prompt_length:
            return messages, guidance
        if guidance:
            guidance.pop()
        elif len(history) > 1:
            history.pop(0)
        else:
            raise PromptTooLong(f"the system header and the latest message take {length} tokens, more than "
                                f"max_prompt_length={max_prompt_length}")


def fit_history(tokenizer, messages, max_prompt_length):
    """Drop the oldest messages after the system prompt (never the last two: the customer's latest words and
    the outline of this turn) until the prompt fits max_prompt_length tokens. Raises PromptTooLong."""
    messages = list(messages)
    while True:
        length = len(tokenizer.encode_chat(messages))
        if length <= max_prompt_length:
            return messages
        if len(messages) <= 3:
            raise PromptTooLong(f"the system prompt and the latest messages take {length} tokens, more than "
                                f"max_prompt_length={max_prompt_length}")
        del messages[1]


def as_call_view(call):
    """(product, visible, turns) from a call dict (corpus / run_call view) or a corpus.Sample."""
    if isinstance(call, dict) and "turns" in call:
        return call["product"], call["customer"]["visible"], call["turns"]
    if hasattr(call, "messages") and hasattr(call, "product"):
        turns = [{"role": "sales" if m["role"] == "assistant" else "customer", "text": m["content"]}
                 for m in call.messages if m["role"] != "system"]
        return call.product, call.visible, turns
    raise TypeError(f"expected a call dict with 'turns' or a corpus.Sample, got {type(call).__name__}")


# ----------------------------------------------------------------------------------------------
# The agents: DOGA and the static few-shot baseline share everything but the prompt.

class Agent:
    """A salesperson around a causal LM: prompt -> model.generate_completions -> `<think>` parsing -> the reply as
    the customer hears it. The model writes values as its tokenizer says (`tokenizer.slots`): its prompts are
    written the same way, and its answers are heard with the call's values (`hear`). Prompt and answer lengths
    default to the policy's training lengths (config.GRPOConfig)."""

    def __init__(self, model, tokenizer, library, max_prompt_length=GRPOConfig.max_prompt_length,
                 max_new_tokens=GRPOConfig.max_completion_length, temperature=0.0, top_p=1.0, seed=0):
        self.model, self.tokenizer, self.library = model, tokenizer, library
        self.slots = tokenizer.slots
        self.max_prompt_length, self.max_new_tokens = max_prompt_length, max_new_tokens
        self.temperature, self.top_p = temperature, top_p
        self.generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)

    def prompt(self, call):
        """(prompt token ids, Outline or None) for a call so far, within max_prompt_length. Subclasses differ
        only here; evaluate.py batches many prompts through one generate call."""
        raise NotImplementedError

    @staticmethod
    def hear(text, call):
        """A generated answer -> (thought, reply) as heard: parsed (tokenizer.split_thought), then each slot said
        with the call's value (sales.heard; a slot the call has no value for stays, an unsupported claim)."""
        product, visible, _ = as_call_view(call)
        answer = split_thought(text)
        return heard(answer.thought, product, visible), heard(answer.reply, product, visible)

    def say(self, text, call):
        """A generated answer -> (thought, reply, note): what the agent says in the call so far. Here the answer
        as heard (`hear`) and an empty note; note holds the fields simulate.Call.step keeps on the turn."""
        thought, reply = self.hear(text, call)
        return thought, reply, {}

    def respond(self, call):
        """The next salesperson turn for a call so far (call dict or Sample): (thought, reply, outline), the
        reply as the customer hears it (`say`)."""
        prompt_ids, outline = self.prompt(call)
        [(completion, _)] = generate_completions(self.model, [prompt_ids], self.max_new_tokens, self.tokenizer.eos_id,
                                                 self.tokenizer.pad_id, self.temperature, self.top_p,
                                                 self.generator if self.temperature > 0 else None)
        thought, reply, _ = self.say(self.tokenizer.decode(completion, skip_special_tokens=True), call)
        return thought, reply, outline


class DogaAgent(Agent):
    """The outline-guided agent: each turn, a fresh outline from DogaPlanner, put just before the turn."""

    def __init__(self, model, tokenizer, library, classifier=None, k=3, moves=None, **generation):
        super().__init__(model, tokenizer, library, **generation)
        self.planner = DogaPlanner(library, classifier, k, slots=self.slots, moves=moves)

    def prompt(self, call):
        """The plain prompt with DOGA's outline before every salesperson turn, the one about to be
        spoken included (corpus.chat_messages): the format the policy is trained on (train as it infers)."""
        product, visible, turns = as_call_view(call)
        [outlines] = self.planner.outline_messages([(product, visible, turns)])
        messages = fit_history(self.tokenizer, chat_messages(product, visible, turns, outlines, self.slots),
                               self.max_prompt_length)
        return self.tokenizer.encode_chat(messages), self.planner.plan(product, visible, turns)

    def say(self, text, call):
        """Agent.say, except that the agent never says a reply twice in a call: where the model's reply is one
        the salesperson already said word for word, the outline's first proven line not said yet is said instead,
        and the turn is noted `from_outline`, with the model's words as `model_reply`. Why: a model this small
        has about one line per move and says it again each time the move comes back (a plan may ask for a move
        twice, a customer may ask again), where a person would put it another way. Where the outline's every
        line was said too, the model's reply stands."""
        thought, reply, note = super().say(text, call)
        product, visible, turns = as_call_view(call)
        said = {turn["text"] for turn in turns if turn["role"] == "sales"}
        if reply in said:
            lines = self.planner.plan(product, visible, turns).lines
            fresh = next((line for line in lines if line not in said), None)
            if fresh is not None:
                return thought, fresh, {"from_outline": True, "model_reply": reply}
        return thought, reply, note


class StaticAgent(Agent):
    """The baseline: the plain prompt with one static few-shot block in the system prompt instead of the
    outlines: for each stage, the most supported template of the library (of the call's domain when there
    is one) this call can fill, written as the model writes. The block is the same on every turn of a call."""

    title = "Examples of good lines, one per stage:"

    def prompt(self, call):
        product, visible, turns = as_call_view(call)
        values, guidance = slot_values(product, visible), []
        for stage in STAGES:
            candidates = sorted((m for m in self.library.templates.metadata if m["stage"] == stage),
                                key=lambda m: (product.get("domain") not in m["domains"], -m["support"], m["id"]))
            for template in candidates:
                filled = fill_slots(template["text"], values)
                if filled:
                    guidance.append(f"{stage.replace('_', ' ')}: {template['text'] if self.slots else filled}")
                    break
        history = chat_messages(product, visible, turns, slots=self.slots)[1:]
        messages, _ = assemble_messages(self.tokenizer, system_prompt(product, visible, self.slots), self.title,
                                        guidance, history, self.max_prompt_length)
        return self.tokenizer.encode_chat(messages), None


# ----------------------------------------------------------------------------------------------
# CLI

def print_intent_report(report, out=sys.stdout):
    print(f"turns {report['turns']}  accuracy {report['accuracy']:.3f}  majority baseline "
          f"({report['majority_intent']}) {report['majority_accuracy']:.3f}", file=out)
    labels = report["labels"]
    short = [f"{i:>3}" for i in range(len(labels))]
    print("confusion (rows: true, columns: predicted)", file=out)
    print(f"{'':>28} " + " ".join(short), file=out)
    for i, (label, row) in enumerate(zip(labels, report["confusion"])):
        print(f"{i:>3} {label:>24} " + " ".join(f"{n:>3}" for n in row), file=out)


def chat(model_dir, library_dir, product_id=None, persona_seed=0):
    """Talk to the DOGA agent as the customer. The call ends with /quit or end of input (Ctrl-D); a message
    too long for the model's prompt is refused with a note, and the call goes on.

    The prompt and answer lengths are the ones the model was trained with: those of the config its GRPO run
    recorded beside the weights (runs.recorded_config), config.py's defaults for a model without a record."""
    world = load_world()
    products = {p["id"]: p for domain in world.products.values() for p in domain}
    product = products[product_id] if product_id else next(iter(products.values()))
    visible = make_persona(product["domain"], product, random.Random(persona_seed))["visible"]
    trained = recorded_config(model_dir)
    settings = trained.grpo if trained else GRPOConfig()
    agent = DogaAgent(*load_with_tokenizer(model_dir), ScriptLibrary.load(library_dir),
                      max_prompt_length=settings.max_prompt_length, max_new_tokens=settings.max_completion_length)
    print(f"prompts of up to {settings.max_prompt_length} tokens, answers of up to {settings.max_completion_length} "
          f"({trained.source if trained else f'no run record in {model_dir}: config.py defaults'})")
    print(f"product {product['id']} ({product['name']}); you are: {json.dumps(visible)}")
    print("type as the customer; /outline shows the last outline, /quit or Ctrl-D ends the call")
    turns, outline = [], None
    while True:
        try:
            thought, reply, outline = agent.respond({"product": product, "customer": {"visible": visible},
                                                     "turns": turns})
            turns.append({"role": "sales", "text": reply})   # the stage moves by what was said, not planned
            print(f"[thought] {thought}\nsalesperson> {reply}")
        except PromptTooLong as error:
            if not turns or turns[-1]["role"] != "customer":
                raise
            turns.pop()
            print(f"(that message does not fit the model's prompt: {error}. Say it in fewer words)")
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                print("\ncall ended")
                return
            if line == "/quit":
                return
            if line == "/outline":
                print(outline.full_text() if outline else "(no outline yet)")
            elif line:
                turns.append({"role": "customer", "text": line})
                break


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the script library from training calls")
    build.add_argument("--corpus", required=True)
    build.add_argument("--out", required=True)
    build.add_argument("--n-features", type=int, default=2**10)
    build.add_argument("--merge-threshold", type=float, default=0.9)
    build.add_argument("--min-support", type=int, default=1)
    evaluate = commands.add_parser("eval-intent", help="intent accuracy and confusion matrix on test calls")
    evaluate.add_argument("--library", required=True)
    evaluate.add_argument("--corpus", required=True)
    evaluate.add_argument("--k", type=int, default=10)
    evaluate.add_argument("--label-noise", type=float, default=0.0)
    talk = commands.add_parser("chat", help="talk to the DOGA agent as the customer")
    talk.add_argument("--model", required=True)
    talk.add_argument("--library", required=True)
    talk.add_argument("--product", default=None, help="product id from world/products.json")
    talk.add_argument("--persona", type=int, default=0, help="seed of the generated customer persona")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            library = ScriptLibrary.build(load_corpus(args.corpus), args.n_features, args.merge_threshold,
                                          args.min_support)
            library.save(args.out)
            print(json.dumps(library.summary, indent=1))
        elif args.command == "eval-intent":
            classifier = IntentClassifier(ScriptLibrary.load(args.library), k=args.k, label_noise=args.label_noise)
            print_intent_report(evaluate_intents(classifier, load_corpus(args.corpus)))
        else:
            chat(args.model, args.library, args.product, args.persona)
        return 0
    except (CorpusError, ValueError, OSError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted" + (": call ended" if args.command == "chat" else ""), file=sys.stderr)
        return 130   # 128 + SIGINT, what a shell reports for Ctrl-C


if __name__ == "__main__":
    sys.exit(main())
