"""Benchmark: tokens/s of model.generate (our KV-cached decoding) vs transformers' generate.

Both run the same random Qwen2.5-0.5B-shaped weights (hidden 896, 14 query / 2 key-value heads,
intermediate 4864, vocabulary 151936, tied embedding; fewer layers than the real 24 to keep it quick) on CPU in
float32, greedy, with no EOS so that every run produces exactly the same number of tokens. Runs alternate
between the two implementations; the table gives median tokens/s and the median (and range) of the speed
ratio within adjacent pairs of runs, which is robust to a shared machine's changing load.

    .venv/bin/python bench/generate.py [--layers 4] [--prompt 32] [--new 32] [--repeats 6] [--batch 1 8]
"""
import argparse
import os
import statistics
import sys
import time

import torch


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from transformers_reference import import_transformers  # noqa: E402


transformers = import_transformers()   # before our kernels/ is imported: see tests/transformers_reference.py
sys.path.insert(0, ROOT)
from model import Qwen2, Qwen2Config, generate  # noqa: E402


def build_models(layers: int):
    """One random transformers model and our model holding a copy of the very same weights."""
    hf_config = transformers.Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=layers,
        num_attention_heads=14, num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=True, max_position_embeddings=32768)
    theirs = transformers.Qwen2ForCausalLM._from_config(hf_config, attn_implementation="sdpa").eval()
    ours = Qwen2(Qwen2Config.from_hf_dict(hf_config.to_dict())).eval()
    state = theirs.state_dict()
    state.pop("lm_head.weight")
    ours.load_state_dict(state, strict=True)
    return ours, theirs


def time_once(run) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    output = run()
    return time.perf_counter() - start, output


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=32, help="prompt length in tokens")
    parser.add_argument("--new", type=int, default=32, help="new tokens per row")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()

    torch.manual_seed(0)
    ours, theirs = build_models(args.layers)
    print(f"Qwen2.5-0.5B shape, {args.layers} layers, float32, CPU ({torch.get_num_threads()} threads), "
          f"prompt {args.prompt}, {args.new} new tokens, greedy, median of {args.repeats}")
    print("| batch | ours tok/s | transformers tok/s | ratio (ours / theirs) | paired range | same tokens |")
    print("|------:|-----------:|-------------------:|----------------------:|-------------:|:-----------:|")
    outputs = {}
    for batch in args.batch:
        prompt = torch.randint(0, 151936, (batch, args.prompt))
        mask = torch.ones_like(prompt)

        def run_ours():
            return generate(ours, prompt, mask, max_new_tokens=args.new)

        def run_theirs():
            with torch.inference_mode():
                return theirs.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=args.new,
                                       min_new_tokens=args.new, do_sample=False, eos_token_id=None,
                                       pad_token_id=0)

        run_ours(), run_theirs()  # warm-up
        our_times, their_times = [], []
        for repeat in range(args.repeats):
            # Adjacent runs form a pair; who goes first alternates, so drift in machine load hits both alike.
            for who in ("ours", "theirs") if repeat % 2 == 0 else ("theirs", "ours"):
                seconds, output = time_once(run_ours if who == "ours" else run_theirs)
                (our_times if who == "ours" else their_times).append(seconds)
                outputs[who] = output
        tokens = batch * args.new
        ours_rate = tokens / statistics.median(our_times)
        theirs_rate = tokens / statistics.median(their_times)
        paired = sorted(theirs / ours for ours, theirs in zip(our_times, their_times))
        same = "yes" if torch.equal(outputs["ours"], outputs["theirs"]) else "no"
        print(f"| {batch:5d} | {ours_rate:10.1f} | {theirs_rate:18.1f} | {statistics.median(paired):20.2f}x "
              f"| {paired[0]:.2f}-{paired[-1]:.2f}x | {same:^11} |")


if __name__ == "__main__":
    main()
