"""Benchmark one simulated customer turn (simulate.Customer.respond) on CPU: reading the reply as speech
(sales.is_speech), its move (sales.classify_sales_intent) and its claims (sales.check_claims), then the
customer's rule. Target: at most 2 ms median per turn.

The baseline, timed in the same run on the same turns, is the customer that reads words as a bag: the same
turn with the speech check skipped. Every reply is made unique so that no cache answers it.

    python bench/customer.py [--calls 300] [--seed 0]
"""
import argparse
import os
import random
import statistics
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sales  # noqa: E402
from simulate import Customer, simulate_call  # noqa: E402


def time_turns(jobs, tag):
    """Median and 90th percentile (ms) of Customer.respond over `jobs`, each reply made unique by `tag`."""
    times = []
    for number, (call, index) in enumerate(jobs):
        customer = Customer(call["customer"], call["product"], random.Random(number))
        text = f"{call['turns'][index]['text']} ({tag} {number})"
        start = time.perf_counter()
        customer.respond(text, call["turns"][index]["stage"], call["turns"][:index])
        times.append(time.perf_counter() - start)
    times.sort()
    return statistics.median(times) * 1e3, times[int(0.9 * len(times))] * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    calls = [simulate_call(i, args.seed, noise=0.2) for i in range(args.calls)]
    jobs = [(call, i) for call in calls for i, turn in enumerate(call["turns"]) if turn["role"] == "sales"]
    sales.classify_sales_intent("Hello, do you have a minute?")        # build the models once, outside the timing
    median, p90 = time_turns(jobs, "speech")
    is_speech = sales.is_speech
    sales.is_speech = lambda text: True                                  # the bag-of-words customer
    try:
        base_median, base_p90 = time_turns(jobs, "bag")
    finally:
        sales.is_speech = is_speech
    print(f"customer turns: {len(jobs)}")
    print(f"reads speech:        median {median:.3f} ms, p90 {p90:.3f} ms  (target: median <= 2 ms)")
    print(f"bag of words (base): median {base_median:.3f} ms, p90 {base_p90:.3f} ms")
    print(f"ratio: {median / base_median:.2f}x the baseline's median")


if __name__ == "__main__":
    main()
