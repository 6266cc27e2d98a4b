"""Benchmark: per-token log-probabilities at Qwen2.5-0.5B shapes, the naive way vs kernels/.

The GRPO loss and the Bayesian reward of AI-Salesman (arXiv 2511.12133) need log p(target) for every completion
token. Naive:  logits = hidden @ W.T  ->  log_softmax  ->  gather, which stores N x V floats (V = 151,936).
Ours:  kernels.fused_linear_logprobs (chunked, never more than chunk_size x V logits).
Every case runs forward + backward (gradients for hidden and W) with a random upstream gradient.

CPU (the default PyTorch path of kernels/, not the Triton interpreter): each case runs in a fresh subprocess with
TRITON_INTERPRET removed. Peak memory is measured by the kernel, not by Python: after the inputs exist, the child
writes "5" to /proc/self/clear_refs, which resets the process's resident-set high-water mark (VmHWM) to its current
size; after forward + backward it reads VmHWM from /proc/self/status. Peak = VmHWM - VmRSS at the reset: every byte
torch touched on top of the inputs, including the gradient buffers (the same for both methods). tracemalloc would
not see torch's allocations, and ru_maxrss alone would include whatever peak came before the measurement.
Each of --repeats rounds runs naive and ours once each, alternating which goes first; the table keeps each
method's fastest wall-clock run (after a small warm-up call in the child) and also shows CPU seconds (user + system
of the child's threads), which other work on a shared machine disturbs less than wall time.

GPU (when CUDA is available): in-process, torch.cuda.max_memory_allocated above the inputs, CUDA-synchronised
timings (median of --gpu-repeats after one warm-up), bfloat16 and float32, and the fused path at N >= 65,536 rows.
A case that runs out of GPU memory is reported as OOM.

    .venv/bin/python bench/logprob.py                          # CPU, N = 1024, 2048, 4096; GPU too if present
    .venv/bin/python bench/logprob.py --rows 4096 --repeats 2  # one N
    .venv/bin/python bench/logprob.py --device cuda            # GPU tables only
Targets: CPU at N = 4096: fused peak memory <= 1/8 of naive, time <= 1.25x naive.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kernels import backend_for, fused_linear_logprobs  # noqa: E402


HIDDEN_SIZE = 896  # Qwen2.5-0.5B
VOCAB_SIZE = 151_936


def naive_linear_logprobs(hidden, weight, targets):
    logits = hidden @ weight.t()  # [N, V]
    return torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None])[:, 0]


def make_inputs(rows, hidden_size, vocab_size, dtype, device, seed=0):
    """Inputs filled in place, so creating them leaves no temporary behind in the memory high-water mark."""
    generator = torch.Generator(device=device).manual_seed(seed)
    weight = torch.empty(vocab_size, hidden_size, dtype=dtype, device=device).normal_(0, 0.02, generator=generator)
    hidden = torch.empty(rows, hidden_size, dtype=dtype, device=device).normal_(generator=generator)
    targets = torch.randint(0, vocab_size, (rows,), device=device, generator=generator)
    upstream = torch.empty(rows, device=device).normal_(generator=generator)
    return hidden.requires_grad_(), weight.requires_grad_(), targets, upstream


def linear_method(method, chunk_size):
    if method == "naive":
        return naive_linear_logprobs
    return lambda hidden, weight, targets: fused_linear_logprobs(hidden, weight, targets, chunk_size=chunk_size)


# ---------------------------------------------------------------------------------------------------------------
# CPU: one case per subprocess


def resident_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"bench/logprob.py: /proc/self/status has no {field} field")


def cpu_case(method, rows, hidden_size, vocab_size, chunk_size):
    """Runs in the child: forward/backward wall seconds, CPU seconds and peak MiB above the inputs."""
    assert backend_for(torch.zeros(1)) == "torch", "the CPU benchmark must measure the PyTorch path"
    function = linear_method(method, chunk_size)
    hidden, weight, targets, upstream = make_inputs(rows, hidden_size, vocab_size, torch.float32, "cpu")
    function(hidden[:8], weight, targets[:8]).sum().backward()  # warm-up: first-call setup stays out of the timing
    hidden.grad = weight.grad = None
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current resident size
    baseline_kib = resident_kib("VmRSS")
    cpu_start, start = time.process_time(), time.perf_counter()
    logprobs = function(hidden, weight, targets)
    forward_done = time.perf_counter()
    logprobs.backward(upstream)
    backward_done = time.perf_counter()
    return {"forward_s": forward_done - start, "backward_s": backward_done - forward_done,
            "total_s": backward_done - start, "cpu_s": time.process_time() - cpu_start,
            "peak_mib": (resident_kib("VmHWM") - baseline_kib) / 1024}


def run_cpu_case_in_subprocess(method, rows, args):
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("TRITON_INTERPRET", "KERNELS_BACKEND")}
    command = [sys.executable, os.path.abspath(__file__), "--child", method, "--rows", str(rows),
               "--hidden", str(args.hidden), "--vocab", str(args.vocab), "--chunk-size", str(args.chunk_size)]
    finished = subprocess.run(command, env=environment, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"bench/logprob.py: the {method} case with N = {rows} failed:\n{finished.stderr}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def cpu_table(args):
    print(f"\nCPU, float32, H = {args.hidden}, V = {args.vocab}, forward + backward, fused chunk_size = "
          f"{args.chunk_size}, torch threads = {torch.get_num_threads()}")
    print(f"{'N':>6} | {'naive s':>8} {'ours s':>8} {'ratio':>6} | "
          f"{'naive cpu-s':>11} {'ours cpu-s':>10} {'ratio':>6} | "
          f"{'naive MiB':>9} {'ours MiB':>8} {'ratio':>6} | ours fwd/bwd s")
    results = {}
    for rows in args.rows:
        runs = {"naive": [], "fused": []}
        for round_index in range(args.repeats):
            order = ("naive", "fused") if round_index % 2 == 0 else ("fused", "naive")
            for method in order:
                runs[method].append(run_cpu_case_in_subprocess(method, rows, args))
        naive, ours = (
            {**min(runs[method], key=lambda run: run["total_s"]),
             "cpu_s": min(run["cpu_s"] for run in runs[method]),
             "peak_mib": max(run["peak_mib"] for run in runs[method])}
            for method in ("naive", "fused")
        )
        results[rows] = (naive, ours)
        print(f"{rows:>6} | {naive['total_s']:>8.2f} {ours['total_s']:>8.2f} "
              f"{ours['total_s'] / naive['total_s']:>5.2f}x"
              f" | {naive['cpu_s']:>11.2f} {ours['cpu_s']:>10.2f} {ours['cpu_s'] / naive['cpu_s']:>5.2f}x"
              f" | {naive['peak_mib']:>9.0f} {ours['peak_mib']:>8.0f} {ours['peak_mib'] / naive['peak_mib']:>5.3f}x"
              f" | {ours['forward_s']:.2f} / {ours['backward_s']:.2f}", flush=True)
    if 4096 in results:
        naive, ours = results[4096]
        memory_ok = ours["peak_mib"] <= naive["peak_mib"] / 8
        time_ok = ours["total_s"] <= 1.25 * naive["total_s"]
        print(f"target at N = 4096: peak memory <= 1/8 of naive: {'PASS' if memory_ok else 'FAIL'} "
              f"({ours['peak_mib'] / naive['peak_mib']:.3f}); time <= 1.25x naive: {'PASS' if time_ok else 'FAIL'} "
              f"({ours['total_s'] / naive['total_s']:.2f}x)")


# ---------------------------------------------------------------------------------------------------------------
# GPU: in-process, CUDA memory statistics


def gpu_measure(function, repeats):
    """(median seconds, peak bytes above what was allocated before) of function(), or None on out-of-memory."""
    try:
        function()  # warm-up: compiles the Triton kernels
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            torch.cuda.reset_peak_memory_stats()
            baseline = torch.cuda.memory_allocated()
            start = time.perf_counter()
            function()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return statistics.median(times), torch.cuda.max_memory_allocated() - baseline
    except torch.OutOfMemoryError:
        return None
    finally:
        torch.cuda.empty_cache()


def format_measure(measure):
    return f"{'OOM':>9} {'':>9}" if measure is None else f"{measure[0] * 1e3:>8.2f}ms {measure[1] / 2**20:>8.0f}M"


def ratio(ours, naive, index):
    if ours is None or naive is None:
        return f"{'-':>7}"
    return f"{ours[index] / naive[index]:>6.3f}x"


def gpu_linear_table(args):
    print(f"\nGPU {torch.cuda.get_device_name()}: fused_linear_logprobs vs naive, forward + backward, "
          f"H = {args.hidden}, V = {args.vocab}")
    print(f"{'dtype':>8} {'N':>6} | {'naive time':>9} {'peak':>9} | {'ours time':>9} {'peak':>9} | "
          "time ratio mem ratio")
    for dtype in (torch.bfloat16, torch.float32):
        for rows in args.rows + [args.gpu_big_rows]:
            hidden, weight, targets, upstream = make_inputs(rows, args.hidden, args.vocab, dtype, "cuda")
            measures = {}
            for method in ("naive", "fused"):
                function = linear_method(method, None)

                def step():
                    hidden.grad = weight.grad = None
                    function(hidden, weight, targets).backward(upstream)

                measures[method] = gpu_measure(step, args.gpu_repeats)
            naive, ours = measures["naive"], measures["fused"]
            print(f"{str(dtype).removeprefix('torch.'):>8} {rows:>6} | {format_measure(naive)} | {format_measure(ours)}"
                  f" | {ratio(ours, naive, 0):>10} {ratio(ours, naive, 1):>9}", flush=True)
            hidden = weight = targets = upstream = None  # free this case's inputs before the next one
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------------


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=lambda text: [int(n) for n in text.split(",")], default=[1024, 2048, 4096],
                        help="comma-separated N list (default 1024,2048,4096; 8192 needs ~13 GB RAM for naive)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the CPU table, then the GPU tables when CUDA is available")
    parser.add_argument("--hidden", type=int, default=HIDDEN_SIZE)
    parser.add_argument("--vocab", type=int, default=VOCAB_SIZE)
    parser.add_argument("--chunk-size", type=int, default=256, help="fused rows per chunk on the CPU")
    parser.add_argument("--repeats", type=int, default=1, help="CPU rounds per N (fastest run is kept)")
    parser.add_argument("--gpu-repeats", type=int, default=5)
    parser.add_argument("--gpu-big-rows", type=int, default=65_536, help="the large-N GPU case (>= 65,536)")
    parser.add_argument("--child", choices=("naive", "fused"), help=argparse.SUPPRESS)
    return parser.parse_args()


def main():
    args = parse_arguments()
    if args.child:
        print(json.dumps(cpu_case(args.child, args.rows[0], args.hidden, args.vocab, args.chunk_size)))
        return
    if args.device in ("auto", "cpu"):
        if not os.path.exists("/proc/self/clear_refs"):
            raise SystemExit("bench/logprob.py: the CPU memory measurement needs Linux /proc/self/clear_refs")
        cpu_table(args)
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SystemExit("bench/logprob.py: --device cuda but CUDA is not available")
        gpu_linear_table(args)


if __name__ == "__main__":
    main()
