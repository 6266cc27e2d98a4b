"""Measure the forbidden-promise check (sales.find_promises) on the hand-written sets and the corpus: promises in
other words caught (each line on a product that forbids its promise), truthful lookalikes flagged (on any product)
and the corpus's salesperson turns: careless promises caught, every other turn flagged (false alarms).

    python bench/promises.py [--misses] [--corpus data/calls.jsonl]
"""
import argparse
import json
import math
import os
import re
import sys


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sales  # noqa: E402


def wilson(k, n, z=1.96):
    """95% Wilson score interval of k successes in n, in percent."""
    if n == 0:
        return 0.0, 100.0
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, 100 * (centre - half)) / (1 + z * z / n), 100 * (centre + half) / (1 + z * z / n)


def line(name, k, n):
    low, high = wilson(k, n)
    return f"{name:<34} {k}/{n} = {100 * k / max(n, 1):.1f}% [{low:.1f}, {high:.1f}]"


def measure(path, misses):
    world = sales.load_world()
    products = [p for ps in world.products.values() for p in ps]
    with open(path, encoding="utf-8") as handle:
        sets = json.load(handle)
    caught = total = 0
    for promise, lines in sets["forbidden_promises"].items():
        product = next(p for p in products if promise in p["forbidden_promises"])
        for text in lines:
            hit = promise in sales.find_promises(text, product)
            caught, total = caught + hit, total + 1
            if misses and not hit:
                print(f"  MISS [{promise}] {text}")
    flagged = 0
    for text in sets["good_lookalikes"]:
        text = re.sub(r"\{\w+\}", "12", text)
        found = {q for p in products for q in sales.find_promises(text, p)}
        flagged += bool(found)
        if misses and found:
            print(f"  FALSE {sorted(found)} {text}")
    name = os.path.basename(path)
    print(line(f"{name} promises caught", caught, total))
    print(line(f"{name} lookalikes flagged", flagged, len(sets["good_lookalikes"])))


def corpus(path, misses):
    careless = caught = good = alarms = 0
    with open(path, encoding="utf-8") as handle:
        for row in handle:
            call = json.loads(row)
            for turn in call["turns"]:
                if turn["role"] != "sales":
                    continue
                found = sales.find_promises(turn["text"], call["product"])
                if turn["labels"]["rule_broken"] == "forbidden_promise":
                    careless, caught = careless + 1, caught + bool(found)
                else:
                    good, alarms = good + 1, alarms + bool(found)
                    if misses and found:
                        print(f"  ALARM {found} {turn['text']}")
    print(line("corpus careless promises caught", caught, careless))
    print(line("corpus other turns flagged", alarms, good))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", action="store_true", help="print every missed promise and false alarm")
    parser.add_argument("--corpus", default="data/calls.jsonl")
    parser.add_argument("sets", nargs="*", help="hand-written sets (default: tests/paraphrases_dev.json, _test.json)")
    args = parser.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    for path in args.sets or [os.path.join(here, "..", "tests", name)
                              for name in ("paraphrases_dev.json", "paraphrases_test.json")]:
        measure(path, args.misses)
    corpus(args.corpus, args.misses)
