"""Causal-LM training: the tiny base model that GRPO starts from, and the SFT baseline.

AI-Salesman applies GRPO *directly to a base model*, with no SFT stage. A real run starts from a
pretrained Qwen2.5 checkpoint; our CPU-sized pipeline has no such base, so this module makes one: a tiny
Qwen2 trained from scratch on the rendered training calls (thoughts included, in the exact ChatML form
the policy is prompted with), so that it knows the language of sales calls and the `<think>` format but
has never been optimised for any reward. With `--sft` it instead trains on the salesperson turns alone
(prompt tokens masked out of the loss): the "SFT then GRPO" baseline of the paper's ablation.

Left out: resuming a pretraining run (it takes minutes; GRPO, the long stage, resumes exactly), and
document-aware attention masks in packed windows (the usual nanoGPT-style simplification: a window may
span two calls separated by <|endoftext|>).
"""

import argparse
import os
import random
import time

import torch
from tqdm import tqdm

from config import ConfigError, load_config
from corpus import CorpusError, load_corpus, render_call_text, training_samples
from files import MetricsLog
from kernels import fused_linear_logprobs
from model import CheckpointError, Qwen2, Qwen2Config, count_parameters, load_with_tokenizer, save_pretrained
from tokenizer import ChatTokenizer, format_assistant
from training import learning_rate_at, make_optimizer


# ----------------------------------------------------------------------------------------------
# Data: packed windows of whole calls (base) or masked salesperson turns (SFT).

def get_tokenizer(out_dir, calls, vocab_size):
    """Load `<out>/tokenizer.json`, or train one on the rendered calls when none exists."""
    if os.path.exists(os.path.join(out_dir, "tokenizer.json")):
        return ChatTokenizer.load(out_dir)
    print(f"training a {vocab_size}-token byte-level BPE tokenizer on {len(calls)} calls")
    tokenizer = ChatTokenizer.train((render_call_text(call) for call in calls), vocab_size)
    tokenizer.save(out_dir)
    return tokenizer


def packed_windows(calls, tokenizer, seq_len):
    """All calls as one token stream separated by <|endoftext|>, cut into [n, seq_len + 1] windows."""
    stream = []
    for ids in tokenizer.encode_batch(render_call_text(call) for call in calls):
        stream.extend(ids + [tokenizer.endoftext_id])
    n = len(stream) // (seq_len + 1)
    if n == 0:
        raise ValueError(f"the corpus has {len(stream)} tokens, fewer than one window of {seq_len + 1}")
    windows = torch.tensor(stream[: n * (seq_len + 1)]).view(n, seq_len + 1)
    return windows[:, :-1], windows[:, 1:]                       # inputs, targets: [n, seq_len]


def sft_examples(calls, tokenizer, seq_len):
    """One example per salesperson turn: prompt + `<think>..</think>\\nreply<|im_end|>`, loss on the answer."""
    inputs, targets = [], []
    for call in calls:
        for sample in training_samples(call):
            prompt = tokenizer.encode(sample.prompt)
            answer = tokenizer.encode(format_assistant(sample.thought, sample.reference)) + [tokenizer.eos_id]
            ids = (prompt + answer)[-(seq_len + 1):]             # keep the answer if the prompt is long
            labels = ([-100] * len(prompt) + answer)[-(seq_len + 1):]
            pad = seq_len + 1 - len(ids)
            inputs.append(ids[:-1] + [tokenizer.pad_id] * pad)
            targets.append(labels[1:] + [-100] * pad)
    return torch.tensor(inputs), torch.tensor(targets)           # [n, seq_len] each


def causal_lm_loss(model, inputs, targets):
    """Mean next-token negative log-likelihood over targets != -100, via the fused log-prob kernel."""
    hidden = model.hidden_states(inputs)                          # [B, T, H]
    logprobs = fused_linear_logprobs(hidden.flatten(0, 1), model.lm_head_weight, targets.flatten())
    return -logprobs.sum() / (targets != -100).sum().clamp(min=1)


# ----------------------------------------------------------------------------------------------
# Training.

def train(config, data_dir, out_dir, sft=False, init=None):
    settings = config.pretrain
    torch.manual_seed(settings.seed)
    os.makedirs(out_dir, exist_ok=True)
    calls = load_corpus(os.path.join(data_dir, "train.jsonl"))

    if init:  # SFT from an existing model (ours or a real checkpoint): keep its tokenizer
        model, tokenizer = load_with_tokenizer(init)
        tokenizer.save(out_dir)
    else:
        tokenizer = get_tokenizer(out_dir, calls, config.tokenizer.vocab_size)
        model_config = Qwen2Config.from_hf_dict({**config.model, "vocab_size": tokenizer.vocab_size,
                                                 "eos_token_id": tokenizer.eos_id,
                                                 "bos_token_id": tokenizer.endoftext_id},
                                                source=f"{config.source} (model section)")
        model = Qwen2(model_config)
    inputs, targets = (sft_examples if sft else packed_windows)(calls, tokenizer, settings.seq_len)
    params = count_parameters(model)
    print(f"{'SFT' if sft else 'pretraining'}: {params / 1e6:.2f}M parameters, {len(inputs)} sequences of "
          f"{settings.seq_len} tokens, {settings.steps} steps of {settings.batch_size}")

    optimizer = make_optimizer(model, settings.learning_rate, settings.weight_decay)
    log = MetricsLog(os.path.join(out_dir, "metrics.jsonl"))
    order = random.Random(settings.seed)
    batches = []  # indices, reshuffled at each pass over the data
    model.train()
    progress = tqdm(range(settings.steps), desc="sft" if sft else "pretrain")
    for step in progress:
        started = time.time()
        if len(batches) < settings.batch_size:
            permutation = list(range(len(inputs)))
            order.shuffle(permutation)
            batches += permutation
        batch, batches = batches[:settings.batch_size], batches[settings.batch_size:]
        lr = learning_rate_at(step, settings.steps, settings.learning_rate, settings.warmup_steps,
                              settings.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = causal_lm_loss(model, inputs[batch], targets[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        tokens = int((targets[batch] != -100).sum())
        log.write({"step": step, "loss": loss.item(), "grad_norm": grad_norm.item(), "lr": lr,
                   "tokens_per_s": tokens / (time.time() - started)})
        progress.set_postfix(loss=f"{loss.item():.3f}")
    save_pretrained(model, out_dir)
    tokenizer.save(out_dir)
    print(f"saved {out_dir} (final loss {loss.item():.3f})")
    return model, tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/tiny.json")
    parser.add_argument("--data", default="data", help="folder holding train.jsonl")
    parser.add_argument("--out", required=True, help="output folder (HF layout: config.json, "
                                                     "model.safetensors, tokenizer.json)")
    parser.add_argument("--sft", action="store_true", help="train on salesperson turns only (SFT baseline)")
    parser.add_argument("--init", help="start from this checkpoint folder instead of from scratch")
    args = parser.parse_args()
    try:
        config = load_config(args.config)
        train(config, args.data, args.out, sft=args.sft, init=args.init)
    except (ConfigError, CorpusError, CheckpointError, ValueError, OSError) as error:
        raise SystemExit(f"error: {error}")


if __name__ == "__main__":
    main()
