"""Causal-LM training: the tiny base model that GRPO starts from, and the SFT baseline.

AI-Salesman applies GRPO *directly to a base model*, with no SFT stage. A real run starts from a
pretrained Qwen2.5 checkpoint; our CPU-sized pipeline has no such base, so this module makes one: a tiny
Qwen2 trained from scratch on the rendered training calls (thoughts included, in the exact ChatML form
the policy is prompted with), so that it knows the language of sales calls and the `<think>` format but
has never been optimised for any reward. With `--sft` it instead trains on the salesperson turns alone
(prompt tokens masked out of the loss): the "SFT then GRPO" baseline of the paper's ablation.

Each call is one row that starts at its system prompt (never mid-call, so every value the model learns to
say stands in its context, the product sheet and profile above it). With `pretrain.slots` (the default) the
rows write the call's values as slots (corpus.written), and the tokenizer, trained on them, records it
(tokenizer.ChatTokenizer.slots). Why: a model this small learns each product's facts by heart instead of copying
them from its context, and so gets the customer's own numbers, which change every call, wrong (docs/log.md).

Train as it infers: with a DOGA script library, `outline_share` of the calls carry DOGA's outline before each
salesperson turn, exactly as the DOGA agent prompts at inference, so the base learns to read outlines;
the outlines are context, not corpus, so they get no loss. The base stays a model of the corpus as simulated,
its deliberate mistakes included: cleaning the data with the Manager's labels is the SFT arm's business.

A pretraining run owns its --out folder (runs.RunLock) and refuses one that already holds a model:
replacing the base of an existing GRPO run would leave that run's final model beside a base it did not
start from. The tokenizer it trains is recorded (`tokenizer_record.json`: the corpus, the vocabulary size
and the text pipeline it was made with), so that a rerun reuses it only when it still fits; the model is
saved with it, so the weights name the tokenizer they were trained with (model.save_pretrained).

Left out: resuming a pretraining run (it takes minutes; GRPO, the long stage, resumes exactly; an
interrupted pretraining is started again), and packing several calls into one row (rows are padded to the
longest of their batch instead; batches are drawn from rows of similar length, so little compute goes to
padding).
"""

import argparse
import json
import os
import random
import sys
import time

import torch
from tqdm import tqdm

from config import ConfigError, load_config
from corpus import CorpusError, call_messages, load_corpus, render_call_text, training_samples
from doga import DogaPlanner, ScriptLibrary
from files import MetricsLog, fingerprint, write_json
from kernels import fused_linear_logprobs
from model import CheckpointError, Qwen2, Qwen2Config, count_parameters, load_with_tokenizer, save_pretrained
from runs import RunLock, RunLocked, claim_model_folder, pretraining_interruption_note
from tokenizer import ChatTokenizer, format_assistant, render_chat
from training import learning_rate_at, make_optimizer


# ----------------------------------------------------------------------------------------------
# Data: one row per call (base) or masked salesperson turns (SFT).

TOKENIZER_RECORD = "tokenizer_record.json"


def text_pipeline(tokenizer):
    """The parts of a tokenizer.json that cut text into pieces before any learnt merge applies: the
    normalizer, the pre-tokenizer, the decoder and the special tokens."""
    spec = json.loads(tokenizer.tokenizer.to_str())
    return {key: spec.get(key) for key in ("normalizer", "pre_tokenizer", "decoder", "added_tokens")}


def get_tokenizer(out_dir, corpus_file, calls, vocab_size, slots):
    """`<out>/tokenizer.json` when this module made it from the same inputs, else a new one trained on the calls.

    Beside the tokenizer, `tokenizer_record.json` says what made it: the corpus (fingerprint), the
    vocabulary size asked for, whether the texts write values as slots, the text pipeline of
    ChatTokenizer.train (read off a tokenizer trained on no text: the pipeline does not depend on the text),
    and the tokenizer file's own fingerprint. A tokenizer.json the record does not describe came from elsewhere
    and is refused: training on it would silently use another tokenizer's ids. One the record describes, made
    from other inputs (another corpus, vocabulary size, slots or pipeline), is this module's own stale artifact
    and is trained again.
    """
    path, record_path = os.path.join(out_dir, "tokenizer.json"), os.path.join(out_dir, TOKENIZER_RECORD)
    wanted = {"corpus": fingerprint(corpus_file), "vocab_size": vocab_size, "slots": slots,
              "pipeline": text_pipeline(ChatTokenizer.train([], vocab_size))}
    if os.path.exists(path):
        try:
            with open(record_path, encoding="utf-8") as handle:
                record = json.load(handle)
            ours = record["tokenizer"] == fingerprint(path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            record, ours = None, False
        if not ours:
            why = "it has changed since" if record else f"there is no readable {TOKENIZER_RECORD} beside it"
            raise ValueError(f"{path}: not made by pretrain.py for this folder ({why}); training on it would use "
                             "another tokenizer's ids. Delete it, or choose another --out")
        stale = [key for key in wanted if record.get(key) != wanted[key]]
        if not stale:
            print(f"{path}: made from the same corpus, vocabulary size and pipeline, reused")
            return ChatTokenizer.load(path)
        print(f"{path}: made for another {', '.join(stale).replace('_', ' ')}, trained again")
    print(f"training a {vocab_size}-token byte-level BPE tokenizer on {len(calls)} calls")
    tokenizer = ChatTokenizer.train((render_call_text(call, slots=slots) for call in calls), vocab_size, slots=slots)
    tokenizer.save(out_dir)
    write_json(record_path, {**wanted, "corpus_file": os.path.abspath(corpus_file), "tokenizer": fingerprint(path)},
               indent=1)
    return tokenizer


def planned_outlines(calls, library_dir, share, seed, slots):
    """{call id: outlines} for `share` of the calls (each chosen by a hash of its id and `seed`): DOGA's outline
    before each of their salesperson turns, planned as the agent plans at inference (doga.DogaPlanner)."""
    chosen = [call for call in calls if random.Random(f"{seed}:{call['id']}").random() < share]
    if not chosen:
        return {}
    planner = DogaPlanner(ScriptLibrary.load(library_dir), slots=slots)
    outlines = planner.outline_messages([(c["product"], c["customer"]["visible"], c["turns"]) for c in chosen],
                                next_turn=False)
    return {call["id"]: messages for call, messages in zip(chosen, outlines)}


def call_rows(calls, tokenizer, seq_len, outlines=None):
    """One row per call, from its system prompt on: (inputs, targets), lists of token-id lists.

    outlines: {call id: {turn index: text}} (corpus.chat_messages); outline tokens get target -100. A call
    longer than seq_len + 1 tokens is cut at the end."""
    inputs, targets = [], []
    for call in calls:
        ids, labels = [], []
        for index, message in enumerate(call_messages(call, (outlines or {}).get(call["id"]), tokenizer.slots)):
            encoded = tokenizer.encode(render_chat([message], add_generation_prompt=False))
            ids += encoded
            labels += [-100] * len(encoded) if index > 0 and message["role"] == "system" else encoded
        ids = (ids + [tokenizer.endoftext_id])[:seq_len + 1]
        labels = (labels + [tokenizer.endoftext_id])[:seq_len + 1]
        inputs.append(ids[:-1])
        targets.append(labels[1:])
    return inputs, targets


def sft_examples(calls, tokenizer, seq_len):
    """One example per salesperson turn: prompt + `<think>..</think>\\nreply<|im_end|>`, loss on the answer."""
    inputs, targets = [], []
    for call in calls:
        for sample in training_samples(call, slots=tokenizer.slots):
            prompt = tokenizer.encode(sample.prompt)
            answer = tokenizer.encode(format_assistant(sample.thought, sample.target_reply)) + [tokenizer.eos_id]
            ids = (prompt + answer)[-(seq_len + 1):]             # keep the answer if the prompt is long
            labels = ([-100] * len(prompt) + answer)[-(seq_len + 1):]
            inputs.append(ids[:-1])
            targets.append(labels[1:])
    return inputs, targets


def batches_of_similar_length(lengths, batch_size, steps, seed, pool=16):
    """`steps` batches of row indices. Each pass over the rows is shuffled, cut into pools of `pool`
    batches, each pool sorted by length and split into batches, and the pass's batches shuffled again: rows
    of one batch have similar lengths (little padding), and every pass still sees every row once."""
    order, batches = random.Random(seed), []
    while len(batches) < steps:
        rows = list(range(len(lengths)))
        order.shuffle(rows)
        rows += rows[:(-len(rows)) % batch_size]                # fill the last batch from the same pass
        epoch = []
        for start in range(0, len(rows), pool * batch_size):
            chunk = sorted(rows[start:start + pool * batch_size], key=lambda row: lengths[row])
            epoch += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        order.shuffle(epoch)
        batches += epoch
    return batches[:steps]


def pad_batch(rows, value):
    """Right-pad lists of token ids to the longest -> LongTensor [B, T]."""
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows])


def causal_lm_loss(model, inputs, targets):
    """Mean next-token negative log-likelihood over targets != -100, via the fused log-prob kernel.

    Only the scored positions go through the output layer: outline and padding positions are context only, and
    scoring them (to a log-prob of 0) would spend the output layer's matmuls on nothing."""
    hidden = model.hidden_states(inputs)                          # [B, T, H]
    targets = targets.flatten()                                   # [B*T]
    scored = targets != -100
    logprobs = fused_linear_logprobs(hidden.flatten(0, 1)[scored], model.lm_head_weight, targets[scored])
    return -logprobs.sum() / scored.sum().clamp(min=1)


# ----------------------------------------------------------------------------------------------
# Training.

def train(config, data_dir, out_dir, sft=False, init=None, library_dir=None):
    """Pretrain (or with `sft`, fine-tune `init`) into `out_dir`, holding the folder's lock for the run."""
    with RunLock(out_dir):
        claim_model_folder(out_dir)
        return _train(config, data_dir, out_dir, sft, init, library_dir)


def _train(config, data_dir, out_dir, sft, init, library_dir):
    settings = config.pretrain
    torch.manual_seed(settings.seed)
    corpus_file = os.path.join(data_dir, "train.jsonl")
    calls = load_corpus(corpus_file)

    if init:  # SFT from an existing model (ours or a real checkpoint): keep its tokenizer
        model, tokenizer = load_with_tokenizer(init)
    else:
        tokenizer = get_tokenizer(out_dir, corpus_file, calls, config.tokenizer.vocab_size, settings.slots)
        model_config = Qwen2Config.from_hf_dict({**config.model, "vocab_size": tokenizer.vocab_size,
                                                 "eos_token_id": tokenizer.eos_id,
                                                 "bos_token_id": tokenizer.endoftext_id},
                                                source=f"{config.source} (model section)")
        model = Qwen2(model_config)
    if sft:
        inputs, targets = sft_examples(calls, tokenizer, settings.seq_len)
    else:
        outlines = (planned_outlines(calls, library_dir, settings.outline_share, settings.seed, tokenizer.slots)
                    if library_dir and settings.outline_share > 0 else {})
        inputs, targets = call_rows(calls, tokenizer, settings.seq_len, outlines)
        print(f"{len(outlines)} of {len(calls)} calls with DOGA's outlines; "
              f"{sum(len(row) == settings.seq_len for row in inputs)} cut at seq_len={settings.seq_len}")
    params = count_parameters(model)
    print(f"{'SFT' if sft else 'pretraining'}: {params / 1e6:.2f}M parameters, {len(inputs)} sequences of up to "
          f"{settings.seq_len} tokens ({sum(map(len, inputs)) / len(inputs):.0f} on average), "
          f"{settings.steps} steps of {settings.batch_size}")

    optimizer = make_optimizer(model, settings.learning_rate, settings.weight_decay)
    model.train()
    log = MetricsLog(os.path.join(out_dir, "metrics.jsonl"))
    batches = batches_of_similar_length([len(row) for row in inputs], settings.batch_size, settings.steps,
                                        settings.seed)
    progress = tqdm(range(settings.steps), desc="sft" if sft else "pretrain")
    for step, batch in zip(progress, batches):
        started = time.time()
        batch_targets = pad_batch([targets[i] for i in batch], -100)                   # [B, T]
        loss = causal_lm_loss(model, pad_batch([inputs[i] for i in batch], tokenizer.pad_id), batch_targets)
        lr = learning_rate_at(step, settings.steps, settings.learning_rate, settings.warmup_steps,
                              settings.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        tokens = int((batch_targets != -100).sum())
        log.write({"step": step, "loss": loss.item(), "grad_norm": grad_norm.item(), "lr": lr,
                   "tokens_per_s": tokens / (time.time() - started)})
        progress.set_postfix(loss=f"{loss.item():.3f}")
    # The metrics and the tokenizer's record are carried over; the lock stays the run's, not the model's.
    save_pretrained(model, out_dir, tokenizer, leave_out=(RunLock.NAME,))
    print(f"saved {out_dir} (final loss {loss.item():.3f})")
    return model, tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="a config file (configs/); default: config.py's defaults, the default recipe")
    parser.add_argument("--data", default="data", help="folder holding train.jsonl")
    parser.add_argument("--out", required=True, help="output folder (HF layout: config.json, "
                                                     "model.safetensors, tokenizer.json)")
    parser.add_argument("--sft", action="store_true", help="train on salesperson turns only (SFT baseline)")
    parser.add_argument("--init", help="start from this checkpoint folder instead of from scratch")
    parser.add_argument("--library", help="DOGA script library (doga.py build): pretrain.outline_share of the "
                                          "calls carry its outlines, as the agent prompts at inference")
    args = parser.parse_args()
    config = None
    try:
        config = load_config(args.config)
        train(config, args.data, args.out, sft=args.sft, init=args.init, library_dir=args.library)
    except (ConfigError, CorpusError, CheckpointError, RunLocked, ValueError, OSError) as error:
        raise SystemExit(f"error: {error}")
    except KeyboardInterrupt:
        print(f"\n{pretraining_interruption_note(args.out, config and config.pretrain.steps)}", file=sys.stderr)
        raise SystemExit(130) from None   # 128 + SIGINT, what a shell reports for Ctrl-C


if __name__ == "__main__":
    main()
