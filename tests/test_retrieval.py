"""retrieval.py against independent references: float64 brute force for the index, a plain-Python
re-implementation of the feature hashing for the embedder, and fresh processes for hash stability.

Tolerances follow from error bounds (tests/bounds.py): float32 scores within a small factor of a plain
float32 NumPy computation's own error against float64; a returned top-k list may order two rows
differently from float64 only where their exact scores tie to within that bound.
"""
import json
import math
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from bounds import reference_error_limit, unit_roundoff
from retrieval import CosineIndex, HashedTfidfEmbedder


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cosines(vectors, queries, dtype=np.float64):
    """All query-row cosines [Q, N], computed plainly in `dtype` (normalise, then one matrix product)."""
    v, q = vectors.astype(dtype), queries.astype(dtype)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q @ v.T


def brute_force_top_k(vectors, queries, k, rows=None):
    """float64 cosine top-k over `rows` (all when None): indices [Q, k] and scores [Q, k]."""
    rows = np.arange(len(vectors)) if rows is None else np.asarray(rows)
    scores = cosines(vectors[rows], queries)
    order = np.argsort(-scores, axis=1)[:, :k]
    return rows[order], np.take_along_axis(scores, order, axis=1)


def assert_top_k(scores, indices, vectors, queries, k, rows=None):
    """`indices` is a top-k of the exact cosines up to float32 rounding, and `scores` are theirs.

    limit: FACTOR times the error of plain float32 cosines on the same vectors. The exact score of the
    row returned in each place must equal the exact k-th best score of that place within twice the limit
    (two rows whose exact scores lie closer may come in either order), and each returned score must lie
    within the limit of its row's exact score.
    """
    want_indices, want_scores = brute_force_top_k(vectors, queries, k, rows)
    limit = reference_error_limit(cosines(vectors, queries, np.float32), cosines(vectors, queries))
    exact = np.take_along_axis(cosines(vectors, queries), indices, axis=1)
    assert indices.shape == want_indices.shape
    assert np.abs(exact - want_scores).max(initial=0) <= 2 * limit
    assert np.abs(scores - exact).max(initial=0) <= limit
    if rows is not None:
        assert np.isin(indices, rows).all()


@pytest.fixture
def random_index():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 48)).astype(np.float32)
    groups = ["a"] * 1000 + ["b"] * 1000 + ["c"] * 1000          # contiguous groups
    metadata = [{"group": g, "parity": i % 2, "id": i} for i, g in enumerate(groups)]
    index = CosineIndex()
    index.add(vectors[:1200], metadata[:1200])                    # two adds: concatenation path
    index.add(vectors[1200:], metadata[1200:])
    queries = rng.normal(size=(17, 48)).astype(np.float32)
    return index, vectors, metadata, queries


def test_search_matches_float64_brute_force(random_index):
    index, vectors, _, queries = random_index
    scores, indices = index.search(queries, k=25)
    assert scores.shape == indices.shape == (17, 25)
    assert_top_k(scores, indices, vectors, queries, 25)
    assert np.all(np.diff(scores, axis=1) <= 0)                   # best first


def test_k_is_clipped_and_one_query_is_accepted(random_index):
    index, vectors, _, queries = random_index
    scores, indices = index.search(queries[0], k=5000)
    assert indices.shape == (1, 3000)
    assert_top_k(scores, indices, vectors, queries[:1], 3000)     # every row, in order
    assert sorted(indices[0]) == list(range(3000))


def test_filters_match_brute_force_on_the_filtered_rows(random_index):
    index, vectors, metadata, queries = random_index
    cases = [
        ({"group": "b"}, [m["id"] for m in metadata if m["group"] == "b"]),               # contiguous
        ({"parity": 1}, [m["id"] for m in metadata if m["parity"] == 1]),                 # scattered
        ({"group": "c", "parity": 0}, [m["id"] for m in metadata if m["group"] == "c" and m["parity"] == 0]),
    ]
    for where, rows in cases:
        scores, indices = index.search(queries, k=10, where=where)
        assert_top_k(scores, indices, vectors, queries, 10, rows=rows)
    scores, indices = index.search(queries, k=3, where={"group": "nope"})
    assert indices.shape == (17, 0)
    scores, indices = index.search(queries, k=3, where={"missing_field": "b"})
    assert indices.shape == (17, 0)                                # a row lacking the field never matches


def test_index_save_load_round_trip(tmp_path, random_index):
    index, _, metadata, queries = random_index
    index.save(str(tmp_path / "idx"))
    assert (tmp_path / "idx.npz").exists() and (tmp_path / "idx.jsonl").exists()
    loaded = CosineIndex.load(str(tmp_path / "idx"))
    assert loaded.metadata == metadata
    for where in (None, {"group": "a"}):
        s1, i1 = index.search(queries, 7, where=where)
        s2, i2 = loaded.search(queries, 7, where=where)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1, s2)
    (tmp_path / "idx.jsonl").write_text("{}\n")                    # row count no longer matches
    with pytest.raises(ValueError, match="idx"):
        CosineIndex.load(str(tmp_path / "idx"))


# ----------------------------------------------------------------------------------------------
# The embedder, against a plain-Python reference of the same hashing and weighting.

def _fmix32(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def reference_features(text):
    """Map of raw 32-bit hash -> count, written the slow obvious way."""
    text = " ".join(text.lower().split())
    data = f" {text} ".encode("utf-8")
    features = {}
    for n in range(3, 6):
        for start in range(len(data) - n + 1):
            h = 2166136261 ^ n
            for byte in data[start:start + n]:
                h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
            features[h] = features.get(h, 0) + 1
    import re
    words = [zlib.crc32(w.encode("utf-8")) for w in re.findall(r"\w+", text)]
    for w in words:
        features[w ^ 0x9E3779B9] = features.get(w ^ 0x9E3779B9, 0) + 1
    for a, b in zip(words, words[1:]):
        h = ((a * 16777619) & 0xFFFFFFFF) ^ _fmix32(b ^ 0x7F4A7C15)
        features[h] = features.get(h, 0) + 1
    return features


def reference_vector(text, idf, n_features):
    counts = np.zeros(n_features)
    for h, c in reference_features(text).items():
        h = _fmix32(h)
        counts[h % n_features] += c * (-1 if h >> 31 else 1)
    weights = np.array([math.copysign(1 + math.log(abs(c)), c) if c else 0.0 for c in counts]) * idf
    return weights / np.linalg.norm(weights)


TEXTS = ["Hello, this is Anna from DeliverUp. Do you have a minute?",
         "Our Starter package costs 49 EUR per month — 12 months minimum.",
         "With 300 orders a month, a 10% lift means 30 more orders.",
         "I'm not interested, thank you.",
         "Café owners love the Premium plan; straße-level ads included."]


def test_embedder_matches_plain_python_reference():
    embedder = HashedTfidfEmbedder(n_features=2**10).fit(TEXTS * 2 + ["unrelated filler text"])
    vectors = embedder.encode(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (5, 2**10)
    # encode computes in float64 and stores float32: each entry within u32 of the exact value (relative),
    # plus float64 rounding, far below.
    for text, vector in zip(TEXTS, vectors):
        np.testing.assert_allclose(vector, reference_vector(text, embedder.idf.astype(np.float64), 2**10),
                                   rtol=2 * unit_roundoff(np.float32), atol=0)


def test_idf_is_smoothed_document_frequency():
    embedder = HashedTfidfEmbedder(n_features=2**10).fit(TEXTS)
    df = np.zeros(2**10)
    for text in TEXTS:
        counts = np.zeros(2**10)
        for h, c in reference_features(text).items():
            h = _fmix32(h)
            counts[h % 2**10] += c * (-1 if h >> 31 else 1)
        df += counts != 0
    # computed in float64 and rounded to float32: within u32 (relative) of the exact value
    np.testing.assert_allclose(embedder.idf, np.log(6 / (1 + df)) + 1, rtol=2 * unit_roundoff(np.float32))


def test_embedder_similarity_is_meaningful():
    embedder = HashedTfidfEmbedder().fit(TEXTS)
    a, paraphrase, unrelated, empty = embedder.encode([
        "Our Starter package costs 49 EUR per month.", "The Starter package is 49 EUR a month.",
        "I'm not interested, thank you.", ""])
    assert paraphrase @ a > 0.4 > abs(unrelated @ a)
    assert np.all(empty == 0)
    with pytest.raises(TypeError, match="list of texts"):
        embedder.encode("a bare string")
    with pytest.raises(RuntimeError, match="not fitted"):
        HashedTfidfEmbedder().encode(["x"])


def test_embedder_save_load_and_stable_across_processes(tmp_path):
    embedder = HashedTfidfEmbedder(n_features=2**11).fit(TEXTS)
    path = str(tmp_path / "embedder.npz")
    embedder.save(path)
    loaded = HashedTfidfEmbedder.load(path)
    np.testing.assert_array_equal(loaded.encode(TEXTS), embedder.encode(TEXTS))
    # A fresh interpreter with another string-hash salt must produce the same bytes.
    script = ("import sys, json, numpy as np; from retrieval import HashedTfidfEmbedder as E; "
              "print(json.dumps(E.load(sys.argv[1]).encode(json.loads(sys.argv[2])).tolist()))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", script, path, json.dumps(TEXTS)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    np.testing.assert_array_equal(np.array(json.loads(out), dtype=np.float32), embedder.encode(TEXTS))
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="broken.npz"):
        HashedTfidfEmbedder.load(str(tmp_path / "broken.npz"))
