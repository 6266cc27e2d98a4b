"""Benchmark DOGA's per-turn planning and the exact cosine index (retrieval.py) on CPU.

1. Per-turn latency of DogaPlanner.plan (embed the context, classify the next intent by k-NN in the
   stage, retrieve the top-k templates of that intent, fill slots) with the library scaled to 10,000
   templates: the real templates built from the corpus plus synthetic ones (real texts with extra
   words, keys jittered), spread over the intents like the real ones. Target: under 5 ms per turn.
2. Queries/s of CosineIndex.search (float32 matrix product + argpartition) against a float64 brute-force
   baseline (full matrix product + full sort), over all 10,000 templates and filtered to one intent,
   and recall@k of our top-k against the float64 top-k (must be 1.0: the index is exact).

BLAS runs single-threaded (OPENBLAS_NUM_THREADS=1 unless set): one turn's search is a small matrix-vector
product, where extra threads cost more than they save, and timings stay stable on a shared machine.

    python bench/retrieval.py [--corpus data/train.jsonl] [--calls 600] [--templates 10000] [--k 5]
"""
import os


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from corpus import load_corpus  # noqa: E402
from doga import DogaPlanner, IntentClassifier, ScriptLibrary  # noqa: E402
from retrieval import CosineIndex  # noqa: E402
from simulate import simulate_call  # noqa: E402


FILLER = ("really", "honestly", "today", "simply", "quickly", "also", "right now", "for you", "as well", "indeed")


def scale_templates(library, size, rng):
    """A template index of `size` rows: the real templates, then synthetic variants, grouped by intent."""
    real = library.templates
    rows = np.arange(len(real))
    extra = rng.choice(rows, size=size - len(real))
    by_intent = {}
    for row in np.concatenate([rows, extra]):
        by_intent.setdefault(real.metadata[row]["intent"], []).append(row)
    real_count = {intent: sum(1 for m in real.metadata if m["intent"] == intent) for intent in by_intent}
    vectors, metadata = [], []
    for intent, members in by_intent.items():
        for n, row in enumerate(members):
            meta = dict(real.metadata[row])
            key = real.vectors[row]
            if n >= real_count[intent]:                                   # real rows come first: a synthetic copy
                meta["text"] = f"{meta['text']} {rng.choice(FILLER)}"
                meta["id"] = f"{meta['id']}-syn{n}"
                key = key + rng.normal(scale=0.3 / np.sqrt(len(key)), size=key.shape).astype(np.float32)
            vectors.append(key)
            metadata.append(meta)
    index = CosineIndex(dim=real.dim)
    index.add(np.stack(vectors), metadata)
    return index


def timed(fn, repeats):
    """Run fn `repeats` times; per-call seconds as an array."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.array(times)


def float64_top_k(vectors, queries, k):
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default="data/train.jsonl", help="training calls (simulated if missing)")
    parser.add_argument("--calls", type=int, default=600, help="calls to simulate when --corpus is missing")
    parser.add_argument("--templates", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--queries", type=int, default=256)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    if os.path.exists(args.corpus):
        calls, source = load_corpus(args.corpus), args.corpus
    else:
        calls, source = [simulate_call(i, seed=0) for i in range(args.calls)], f"{args.calls} simulated calls"
    held_out = max(1, len(calls) // 10)
    library = ScriptLibrary.build(calls[:-held_out], progress=False)
    library.templates = scale_templates(library, args.templates, rng)
    planner = DogaPlanner(library, IntentClassifier(library), k=3)
    print(f"corpus: {source}; library: {len(library.templates)} templates "
          f"({library.summary['templates']} real), {len(library.contexts)} training contexts, "
          f"D={library.embedder.n_features}; OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}")

    # 1. Per-turn planning latency on the held-out calls.
    turns = [(c["product"], c["customer"]["visible"], c["turns"][:i])
             for c in calls[-held_out:] for i, t in enumerate(c["turns"]) if t["role"] == "sales"]
    for job in turns[:20]:
        planner.plan(*job)                                                       # warm caches
    per_turn = np.array([timed(lambda job=job: planner.plan(*job), 1)[0] for job in turns]) * 1e3
    print(f"\nper-turn plan (embed + classify + retrieve + fill), {len(turns)} turns:")
    print(f"  mean {per_turn.mean():.2f} ms   median {np.median(per_turn):.2f} ms   "
          f"p95 {np.percentile(per_turn, 95):.2f} ms   max {per_turn.max():.2f} ms   "
          f"{'PASS' if np.median(per_turn) < 5 else 'FAIL'} (target < 5 ms)")

    # 2. Index throughput and exactness against float64 brute force.
    index, k = library.templates, args.k
    queries = library.contexts.vectors[rng.choice(len(library.contexts), args.queries)]          # [Q, D]
    intent = max(set(m["intent"] for m in index.metadata), key=[m["intent"] for m in index.metadata].count)
    rows = index.rows_matching({"intent": intent})
    print(f"\nCosineIndex.search, {args.queries} queries, k={k}:")
    print(f"  {'setting':<46} {'ours q/s':>10} {'float64 q/s':>12} {'speed-up':>9} {'recall@k':>9}")
    for name, where, block, batch in (
            (f"all {len(index)} rows, batch {args.queries}", None, index.vectors, args.queries),
            (f"all {len(index)} rows, one query", None, index.vectors, 1),
            (f"intent {intent} ({len(rows)} rows), one query", {"intent": intent}, index.vectors[rows], 1)):
        ours = timed(lambda: [index.search(queries[i:i + batch], k, where=where)
                              for i in range(0, args.queries, batch)], 3).min()
        base = timed(lambda: [float64_top_k(block, queries[i:i + batch], k)
                              for i in range(0, args.queries, batch)], 3).min()
        _, found = index.search(queries, k, where=where)
        truth = float64_top_k(block, queries, k)
        truth = truth if where is None else rows[truth]
        recall = np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)])
        print(f"  {name:<46} {args.queries / ours:>10.0f} {args.queries / base:>12.0f} "
              f"{base / ours:>8.1f}x {recall:>9.3f}")
        if recall < 1.0:
            raise SystemExit(f"recall@{k} {recall} < 1.0: the index is not exact")


if __name__ == "__main__":
    main()
