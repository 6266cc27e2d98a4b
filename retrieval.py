"""Retrieval for DOGA: a hashed TF-IDF text embedder and an exact cosine index, in NumPy only.

AI-Salesman's inference engine (DOGA, arXiv 2511.12133) retrieves proven sales scripts from an offline
library and classifies the next sales intent by nearest neighbours. Both need two parts, built here:

* `HashedTfidfEmbedder` turns text into a dense float32 vector. Features are word uni- and bigrams and
  byte 3..5-grams of the lower-cased UTF-8 text, mapped by a *stable* hash (FNV-1a / CRC-32 followed by
  a MurmurHash3 finaliser, never Python's per-process salted `hash()`) into `n_features` buckets, each
  with a sign taken from the hash so that collisions cancel on average instead of adding up (the
  "hashing trick"). Counts get sublinear term frequency (1 + log tf), are weighted by an IDF fitted on a
  corpus, and are L2-normalised, so a dot product is a cosine. reward.py reuses it for the `similarity`
  reward (cosine of a reply and the reference reply).
* `CosineIndex` stores unit vectors with one metadata dict each and answers batched top-k queries
  exactly: one matrix product plus `argpartition`, optionally restricted by a metadata filter.

Left out on purpose: approximate search (HNSW, IVF, product quantisation). At the scale of a script
library (10^4 templates) an exact matrix product takes well under a millisecond per query, is
deterministic and needs no tuning, so an approximate index would only add a source of error. Also left
out: neural sentence embedders; the policy model's own hidden states could serve, but a TF-IDF vector
needs no GPU, is fitted in seconds on the training corpus, and is trivially reproducible.
"""

import io
import json
import os
import re
import zipfile
import zlib

import numpy as np

from files import write_bytes, write_text


# ----------------------------------------------------------------------------------------------
# Stable hashing. All arithmetic is uint32 with wrap-around, identical on every machine and run.

FNV_OFFSET = np.uint32(2166136261)
FNV_PRIME = np.uint32(16777619)
WORD_UNIGRAM_SALT = np.uint32(0x9E3779B9)
WORD_BIGRAM_SALT = np.uint32(0x7F4A7C15)


def _finalise(h):
    """MurmurHash3's 32-bit finaliser: spreads every input bit over every output bit. h: uint32 [n]."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _byte_ngram_hashes(data, text_starts, text_ends, n):
    """FNV-1a hashes of every byte n-gram that lies inside one text.

    data: uint8 [total] (all texts concatenated); text_starts/text_ends: int64 [N] byte offsets.
    Returns (rows int64 [m], hashes uint32 [m]): which text each n-gram belongs to, and its hash.
    """
    windows = np.maximum(text_ends - text_starts - n + 1, 0)                  # n-grams per text [N]
    rows = np.repeat(np.arange(len(text_starts)), windows)                     # [m]
    first = np.arange(int(windows.sum())) - np.repeat(np.cumsum(windows) - windows, windows)
    positions = np.repeat(text_starts, windows) + first                        # start byte of each n-gram
    hashes = np.full(len(positions), FNV_OFFSET ^ np.uint32(n), dtype=np.uint32)
    for offset in range(n):
        hashes = (hashes ^ data[positions + offset].astype(np.uint32)) * FNV_PRIME
    return rows, hashes


# ----------------------------------------------------------------------------------------------
# The embedder.

WORD = re.compile(r"\w+")
SPACES = re.compile(r"\s+")


def normalise_text(text):
    """Lower-case and collapse white space: the only text normalisation the embedder does."""
    return SPACES.sub(" ", text.lower()).strip()


class HashedTfidfEmbedder:
    """Hashed word and byte n-gram TF-IDF vectors, fitted on a corpus. See the module docstring.

    n_features: the number of hash buckets D (a power of two). 2**12 keeps 10k templates at 160 MB and
    a batch of short texts fast; the signed hash keeps unrelated texts near cosine 0 despite collisions.
    """

    def __init__(self, n_features=2**12, char_ngrams=(3, 5), word_ngrams=(1, 2), chunk_size=1024):
        if n_features < 2 or n_features & (n_features - 1):
            raise ValueError(f"HashedTfidfEmbedder: n_features must be a power of two, got {n_features}")
        if not set(word_ngrams) <= {1, 2} or not word_ngrams:
            raise ValueError(f"HashedTfidfEmbedder: word_ngrams must lie in (1, 2), got {word_ngrams}")
        self.n_features = int(n_features)
        self.char_ngrams = (int(char_ngrams[0]), int(char_ngrams[1]))
        self.word_ngrams = (int(word_ngrams[0]), int(word_ngrams[1]))
        self.chunk_size = int(chunk_size)
        self.idf = None                      # float32 [D], set by fit() or load()
        self._word_hash_cache = {}

    # -- features ------------------------------------------------------------------------------

    def _word_hash(self, word):
        cached = self._word_hash_cache.get(word)
        if cached is None:
            if len(self._word_hash_cache) > 500_000:  # bound the memo on endless vocabularies
                self._word_hash_cache.clear()
            cached = self._word_hash_cache[word] = zlib.crc32(word.encode("utf-8"))
        return cached

    def _signed_counts(self, texts):
        """Signed, summed feature counts of a chunk of texts, in sparse form.

        Returns (rows int64 [m], buckets int64 [m], counts float64 [m]): the non-zero entries of the
        [len(texts), D] count matrix, sorted by row then bucket.
        """
        texts = [normalise_text(t) for t in texts]
        all_rows, all_hashes = [], []

        # Byte n-grams of " text ", so that word boundaries show up as features.
        encoded = [f" {t} ".encode("utf-8") for t in texts]
        lengths = np.array([len(b) for b in encoded], dtype=np.int64)
        ends = np.cumsum(lengths)
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        for n in range(self.char_ngrams[0], self.char_ngrams[1] + 1):
            rows, hashes = _byte_ngram_hashes(data, ends - lengths, ends, n)
            all_rows.append(rows)
            all_hashes.append(hashes)

        # Word unigrams and bigrams: CRC-32 of each word, a bigram mixes its two word hashes.
        word_lists = [WORD.findall(t) for t in texts]
        counts = np.array([len(w) for w in word_lists], dtype=np.int64)
        word_rows = np.repeat(np.arange(len(texts)), counts)
        word_hashes = np.fromiter((self._word_hash(w) for ws in word_lists for w in ws),
                                  dtype=np.uint32, count=int(counts.sum()))
        if self.word_ngrams[0] == 1:
            all_rows.append(word_rows)
            all_hashes.append(word_hashes ^ WORD_UNIGRAM_SALT)
        if self.word_ngrams[1] == 2 and len(word_hashes) > 1:
            same_text = word_rows[1:] == word_rows[:-1]                        # consecutive words, one text
            bigrams = (word_hashes[:-1] * FNV_PRIME) ^ _finalise(word_hashes[1:] ^ WORD_BIGRAM_SALT)
            all_rows.append(word_rows[1:][same_text])
            all_hashes.append(bigrams[same_text])

        hashes = _finalise(np.concatenate(all_hashes))
        keys = np.concatenate(all_rows) * self.n_features + (hashes & np.uint32(self.n_features - 1))
        signs = np.where(hashes >> np.uint32(31), -1.0, 1.0)                   # top bit -> sign
        unique_keys, slot = np.unique(keys, return_inverse=True)
        summed = np.bincount(slot, weights=signs, minlength=len(unique_keys))  # collisions may cancel
        nonzero = summed != 0
        unique_keys = unique_keys[nonzero]
        return unique_keys // self.n_features, unique_keys % self.n_features, summed[nonzero]

    def _chunks(self, texts):
        """Yield (number of texts, sparse counts) per chunk of at most chunk_size texts."""
        if isinstance(texts, str):
            raise TypeError("HashedTfidfEmbedder: pass a list of texts, not a single string")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"HashedTfidfEmbedder: text {i} is {type(text).__name__}, not str")
        for start in range(0, len(texts), self.chunk_size):
            chunk = texts[start:start + self.chunk_size]
            yield len(chunk), self._signed_counts(chunk)

    # -- fitting and encoding ------------------------------------------------------------------

    def fit(self, texts):
        """Fit the IDF on a corpus: idf = log((1 + N) / (1 + df)) + 1 per bucket (smoothed). Returns self."""
        document_frequency = np.zeros(self.n_features, dtype=np.int64)
        n_texts = 0
        for n_chunk, (rows, buckets, counts) in self._chunks(texts):
            document_frequency += np.bincount(buckets, minlength=self.n_features)
            n_texts += n_chunk
        if n_texts == 0:
            raise ValueError("HashedTfidfEmbedder.fit: no texts to fit on")
        self.idf = (np.log((1.0 + n_texts) / (1.0 + document_frequency)) + 1.0).astype(np.float32)
        return self

    def encode(self, texts):
        """Embed a list of texts: float32 [N, D], each row unit length (all zero for a featureless text)."""
        if self.idf is None:
            raise RuntimeError("HashedTfidfEmbedder.encode: not fitted; call fit(texts) or load(path) first")
        out = []
        for n_chunk, (rows, buckets, counts) in self._chunks(texts):
            weights = np.sign(counts) * (1.0 + np.log(np.abs(counts))) * self.idf[buckets]  # sublinear tf x idf
            norms = np.sqrt(np.bincount(rows, weights=weights * weights, minlength=n_chunk))
            vectors = np.zeros((n_chunk, self.n_features), dtype=np.float32)
            vectors[rows, buckets] = weights / np.maximum(norms[rows], 1e-12)
            out.append(vectors)
        return np.concatenate(out) if out else np.zeros((0, self.n_features), dtype=np.float32)

    # -- persistence ---------------------------------------------------------------------------

    def config(self):
        return {"n_features": self.n_features, "char_ngrams": list(self.char_ngrams),
                "word_ngrams": list(self.word_ngrams)}

    def save(self, path):
        """Write the fitted embedder to one .npz file (IDF + config), atomically."""
        if self.idf is None:
            raise RuntimeError(f"HashedTfidfEmbedder.save({path}): nothing to save, the embedder is not fitted")
        _save_npz(path, idf=self.idf, config=np.array(json.dumps(self.config())))

    @classmethod
    def load(cls, path):
        arrays = _load_npz(path, ("idf", "config"))
        try:
            config = json.loads(str(arrays["config"]))
            embedder = cls(n_features=config["n_features"], char_ngrams=tuple(config["char_ngrams"]),
                           word_ngrams=tuple(config["word_ngrams"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: field 'config' is not a valid embedder config ({error})") from None
        idf = arrays["idf"]
        if idf.shape != (embedder.n_features,):
            raise ValueError(f"{path}: field 'idf' has shape {idf.shape}, expected ({embedder.n_features},)")
        embedder.idf = idf.astype(np.float32)
        return embedder


# ----------------------------------------------------------------------------------------------
# The exact cosine index.

class CosineIndex:
    """Exact top-k cosine search over unit vectors, each row carrying a metadata dict.

    Filters: `where={"intent": "price_objection", "stage": "objection_handling"}` keeps the rows whose
    fields equal the values (looked up in an inverted index built on first use; a value that cannot be
    indexed, such as a list, is compared row by row). A row that lacks a filtered field never matches.
    When the surviving rows form one contiguous block (doga.py stores the library grouped by intent),
    they are scored through a view, without copying vectors.
    """

    def __init__(self, dim=None):
        self.dim = dim
        self.metadata = []
        self._pending = []                       # float32 arrays added since the last concatenation
        self._vectors = None if dim is None else np.zeros((0, dim), dtype=np.float32)
        self._postings = {}                      # field -> {value: int64 rows}, rebuilt after add()

    def __len__(self):
        return len(self.metadata)

    @property
    def vectors(self):
        """All stored unit vectors, float32 [N, D]."""
        if self._pending:
            self._vectors = np.concatenate([self._vectors] + self._pending)
            self._pending = []
        return self._vectors

    def add(self, vectors, metadata):
        """Append vectors [n, D] (normalised here to unit length) with one metadata dict each.
        Returns the new rows' indices, int64 [n]."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"CosineIndex.add: vectors must be 2-D [n, D], got shape {vectors.shape}")
        if self.dim is None:
            self.dim = vectors.shape[1]
            self._vectors = np.zeros((0, self.dim), dtype=np.float32)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"CosineIndex.add: vectors have dimension {vectors.shape[1]}, index has {self.dim}")
        metadata = list(metadata)
        if len(metadata) != len(vectors):
            raise ValueError(f"CosineIndex.add: {len(vectors)} vectors but {len(metadata)} metadata dicts")
        for i, meta in enumerate(metadata):
            if not isinstance(meta, dict):
                raise TypeError(f"CosineIndex.add: metadata {i} is {type(meta).__name__}, not dict")
        first = len(self.metadata)
        self._pending.append(_unit_rows(vectors))
        self.metadata.extend(metadata)
        self._postings = {}
        return np.arange(first, len(self.metadata))

    # -- filtering -----------------------------------------------------------------------------

    def _posting(self, field, value):
        if field not in self._postings:
            table = {}
            for row, meta in enumerate(self.metadata):
                if field in meta:
                    try:
                        table.setdefault(meta[field], []).append(row)
                    except TypeError:                # unhashable field value (a list): compared row by row
                        pass
            self._postings[field] = {v: np.array(rows, dtype=np.int64) for v, rows in table.items()}
        return self._postings[field].get(value, np.zeros(0, dtype=np.int64))

    def rows_matching(self, where):
        """Sorted int64 rows that pass the filter `where` (see the class docstring); None means all rows."""
        if not where:
            return None
        rows = None
        for field, value in where.items():
            try:
                matches = self._posting(field, value)
            except TypeError:                        # an unhashable value to compare with: scan the rows
                candidates = range(len(self.metadata)) if rows is None else rows
                matches = np.array([r for r in candidates
                                    if field in self.metadata[r] and self.metadata[r][field] == value],
                                   dtype=np.int64)
            rows = matches if rows is None else np.intersect1d(rows, matches, assume_unique=True)
        return rows

    # -- search --------------------------------------------------------------------------------

    def search(self, queries, k, where=None):
        """Top-k rows by cosine similarity for each query.

        queries: [Q, D] (or one query [D]); k: results per query, clipped to the number of rows that
        pass `where`. Returns (scores float32 [Q, k], indices int64 [Q, k]), best first per row.
        """
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"CosineIndex.search: queries must be [Q, {self.dim}], got shape {queries.shape}")
        if k < 1:
            raise ValueError(f"CosineIndex.search: k must be >= 1, got {k}")
        queries = _unit_rows(queries)
        rows = self.rows_matching(where)
        vectors = self.vectors
        if rows is None:                                      # all rows
            block, row_of = vectors, None
        elif len(rows) and rows[-1] - rows[0] + 1 == len(rows):  # one contiguous block: a view, no copy
            block, row_of = vectors[rows[0]:rows[-1] + 1], rows
        else:
            block, row_of = vectors[rows], rows
        k = min(k, len(block))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)

        scores = queries @ block.T                                             # [Q, n]
        if k < scores.shape[1]:
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]               # [Q, k], unordered
        else:
            top = np.broadcast_to(np.arange(k), (len(queries), k))
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        top_scores = np.take_along_axis(top_scores, order, axis=1)
        indices = top.astype(np.int64) if row_of is None else row_of[top]
        return top_scores, indices

    # -- persistence ---------------------------------------------------------------------------

    def save(self, path):
        """Write `{path}.npz` (vectors) and `{path}.jsonl` (one metadata dict a line), each atomically."""
        base = path[:-4] if path.endswith(".npz") else path
        lines = []
        for row, meta in enumerate(self.metadata):
            try:
                lines.append(json.dumps(meta, ensure_ascii=False, default=_json_scalar))
            except (TypeError, ValueError) as error:
                raise ValueError(f"CosineIndex.save({base}.jsonl): metadata row {row} is not JSON ({error})") from None
        vectors = self.vectors if self.dim is not None else np.zeros((0, 0), np.float32)
        _save_npz(base + ".npz", vectors=vectors)
        write_text(base + ".jsonl", "".join(line + "\n" for line in lines))

    @classmethod
    def load(cls, path):
        base = path[:-4] if path.endswith(".npz") else path
        vectors = _load_npz(base + ".npz", ("vectors",))["vectors"]
        if vectors.ndim != 2:
            raise ValueError(f"{base}.npz: field 'vectors' must be 2-D, got shape {vectors.shape}")
        metadata = []
        try:
            with open(base + ".jsonl", encoding="utf-8") as handle:
                for line_number, line in enumerate(handle, 1):
                    try:
                        meta = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{base}.jsonl line {line_number}: not JSON ({error})") from None
                    if not isinstance(meta, dict):
                        raise ValueError(f"{base}.jsonl line {line_number}: expected a JSON object")
                    metadata.append(meta)
        except FileNotFoundError:
            raise FileNotFoundError(f"{base}.jsonl: the index metadata file is missing") from None
        if len(metadata) != len(vectors):
            raise ValueError(f"{base}: {len(vectors)} vectors in .npz but {len(metadata)} rows in .jsonl")
        index = cls(dim=vectors.shape[1])
        index._vectors = vectors.astype(np.float32)
        index.metadata = metadata
        return index


# ----------------------------------------------------------------------------------------------
# Small helpers.

def _unit_rows(vectors):
    """Scale each row to unit L2 norm (all-zero rows stay zero). float32 [n, D] -> float32 [n, D]."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _json_scalar(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _save_npz(path, **arrays):
    """A compressed .npz at exactly `path` (no extra suffix), written atomically (files.write_bytes)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)   # TF-IDF vectors are mostly zeros
    write_bytes(path, buffer.getvalue())


def _load_npz(path, fields):
    """Load an .npz file and check it holds `fields`; errors name the file and the missing field."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from None
    for field in fields:
        if field not in arrays:
            raise ValueError(f"{path}: missing field '{field}' (has {sorted(arrays)})")
    return arrays
