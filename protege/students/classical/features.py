"""What a classical student reads: TF-IDF word and character n-grams, or static embeddings.

TF-IDF (`tfidf`): two scikit-learn `TfidfVectorizer` blocks fitted on the training rows, each
L2-normalised on its own (as a `FeatureUnion` of them is): words (`[a-zA-Z0-9_]+` tokens, 1-2
grams) and characters (2-5 grams, spaces included). Every input is first lowercased by the
vectorizers and has its whitespace runs collapsed to one space here (`normalise`); that and
the plain (not sublinear) term frequencies are what `skl2onnx` converts exactly, so an ONNX
export computes the same vector.

Serving one input through scikit-learn's `transform` costs about 2 ms on a long NLI premise
(its per-call checks and sparse-matrix building), so `rows` computes the same vector without
them: the word block through the vectorizer's own analyzer and a dict, the character block
through `CharIndex`, which finds every n-gram's vocabulary index with one vectorised search
instead of one Python dict look-up per n-gram (2,000 on a long premise). Tests check it
equals `TfidfVectorizer.transform`.

Static (`static`): model2vec embeddings distilled from MiniLM (mean of the tokens' static
vectors, L2-normalised); nothing is fitted on the training rows.

Stored without pickle: each vectorizer's parameters and vocabulary as JSON, its idf in
safetensors; a static model as model2vec saves it (safetensors + tokenizer.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

WORD_PATTERN = r"[a-zA-Z0-9_]+"
"""Word tokens: the same regular expression in scikit-learn and in onnxruntime (RE2), so the
export tokenizes as the student does (scikit-learn's default `\\b\\w\\w+\\b` is not)."""


def normalise(text: str) -> str:
    """Whitespace runs as one space, ends stripped: the input every feature sees."""
    return " ".join(text.split())


def vectorizer_params(block: str, ngrams: list[int], min_df: int, max_features: int | None):
    """The `TfidfVectorizer` arguments of a block (`word` or `char`)."""
    params: dict[str, Any] = {
        "ngram_range": [int(ngrams[0]), int(ngrams[1])],
        "min_df": int(min_df),
        "max_features": max_features,
        "lowercase": True,
        "sublinear_tf": False,  # skl2onnx does not convert sublinear tf
        "norm": "l2",
        "dtype": "float64",
    }
    if block == "word":
        params.update(analyzer="word", token_pattern=WORD_PATTERN)
    else:
        params.update(analyzer="char")
    return params


def make_vectorizer(params: dict[str, Any]):
    from sklearn.feature_extraction.text import TfidfVectorizer

    kw = dict(params)
    kw["ngram_range"] = tuple(kw["ngram_range"])
    kw["dtype"] = np.dtype(kw["dtype"]).type
    return TfidfVectorizer(**kw)


class CharIndex:
    """Vocabulary indices of an input's character n-grams, all found with one `searchsorted`.

    Each character of the vocabulary's n-grams gets a small id (1..A, its rank in the
    vocabulary's alphabet; any other character 0); an n-gram's key packs its ids, `bits` each,
    with n in the top 3 bits. The keys are injective, so a look-up is exact, and a gram with a
    character outside the alphabet (a 0 field) matches nothing, as it is in no vocabulary
    entry. The keys of every position and length come from the id array with a shift and an or
    per length. Needs `hi * bits <= 61` (an alphabet of up to 4,095 characters for 5-grams):
    `usable` says whether it holds."""

    def __init__(self, vocab: list[str], ngrams: tuple[int, int]):
        self.lo, self.hi = ngrams
        alphabet = sorted({c for gram in vocab for c in gram})
        self.alphabet = np.array([ord(c) for c in alphabet], dtype=np.uint32)
        self.bits = max(1, len(alphabet).bit_length())
        self.usable = self.hi * self.bits <= 61
        if not self.usable:
            return
        rank = {c: i + 1 for i, c in enumerate(alphabet)}
        keys = np.fromiter((self._key(g, rank) for g in vocab), dtype=np.uint64, count=len(vocab))
        order = np.argsort(keys, kind="stable")
        self.keys, self.feature = keys[order], order.astype(np.int64)

    def _key(self, gram: str, rank: dict[str, int]) -> int:
        key = 0
        for c in gram:
            key = (key << self.bits) | rank[c]
        return key | (len(gram) << 61)

    def __call__(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(vocabulary index, count) of each distinct in-vocabulary n-gram of `text`
        (lowercased, whitespace runs collapsed)."""
        none = np.empty(0, dtype=np.int64)
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        if not len(codes) or not len(self.keys):
            return none, none
        pos = np.minimum(np.searchsorted(self.alphabet, codes), len(self.alphabet) - 1)
        ids = np.where(self.alphabet[pos] == codes, pos + 1, 0).astype(np.uint64)
        bits, grams, key = np.uint64(self.bits), [], ids
        for n in range(1, min(self.hi, len(ids)) + 1):
            if n > 1:  # key[i]: the (n-1)-gram at i; append the character at i + n - 1
                key = (key[:-1] << bits) | ids[n - 1 :]
            if n >= self.lo:
                grams.append(key | np.uint64(n << 61))
        if not grams:
            return none, none
        query = np.sort(np.concatenate(grams))  # sorted needles: each search starts at the last
        at = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
        at = at[self.keys[at] == query]  # sorted: a gram's repeats are neighbours
        if not len(at):
            return none, none
        starts = np.flatnonzero(np.r_[True, at[1:] != at[:-1]])
        return self.feature[at[starts]], np.diff(np.r_[starts, len(at)])


@dataclass
class Block:
    """One fitted TF-IDF block: its vectorizer's arguments, vocabulary (in index order) and
    idf weights."""

    name: str
    params: dict[str, Any]
    vocab: list[str]
    idf: np.ndarray

    def __post_init__(self) -> None:
        vec = make_vectorizer(self.params)
        self._fast = vec.analyzer == "char" and vec.lowercase and vec.strip_accents is None
        if self._fast:
            self._chars = CharIndex(self.vocab, tuple(self.params["ngram_range"]))
            self._fast = self._chars.usable
        if not self._fast:
            self._analyze = vec.build_analyzer()
            self._index = {g: i for i, g in enumerate(self.vocab)}

    def counts(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(index, term frequency) of each distinct in-vocabulary term of `text`."""
        if self._fast:
            return self._chars(text.lower())
        get = self._index.get
        ids = np.fromiter((i for i in map(get, self._analyze(text)) if i is not None), np.int64)
        return np.unique(ids, return_counts=True)

    def row(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(indices, values) of `text`'s L2-normalised tf-idf vector."""
        idx, tf = self.counts(text)
        values = tf * self.idf[idx]
        norm = np.sqrt(values @ values)
        return idx, values / norm if norm > 0 else values

    def vectorizer(self):
        """A fitted `TfidfVectorizer` with this vocabulary and idf (for the ONNX export)."""
        vec = make_vectorizer(self.params)
        vec.vocabulary_ = {g: i for i, g in enumerate(self.vocab)}
        vec.idf_ = self.idf
        return vec


class Tfidf:
    """The fitted TF-IDF blocks (word, then char); a feature's global index is its block's
    offset plus its index in the block."""

    files = ("features.json", "features.safetensors")

    def __init__(self, blocks: list[Block]):
        self.blocks = blocks
        self.offsets = np.cumsum([0] + [len(b.vocab) for b in blocks])

    @property
    def dim(self) -> int:
        return int(self.offsets[-1])

    @classmethod
    def fit(cls, spec: dict[str, Any], texts: list[str]) -> tuple[Tfidf, Any]:
        """Fitted blocks and the training matrix (scikit-learn's own transform)."""
        import scipy.sparse as sp

        blocks, mats = [], []
        for name in ("word", "char"):
            params = vectorizer_params(
                name, spec[f"{name}_ngrams"], spec.get("min_df", 1), spec.get(f"{name}_max")
            )
            vec = make_vectorizer(params)
            mats.append(vec.fit_transform(texts))
            vocab = sorted(vec.vocabulary_, key=vec.vocabulary_.get)
            blocks.append(Block(name, params, vocab, np.asarray(vec.idf_, dtype=np.float64)))
        return cls(blocks), sp.hstack(mats, format="csr")

    def rows(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each text's (global indices, values), exactly as the fitted vectorizers give it."""
        out = []
        for text in texts:
            parts = [b.row(text) for b in self.blocks]
            idx = np.concatenate(
                [i + off for (i, _), off in zip(parts, self.offsets, strict=False)]
            )
            out.append((idx, np.concatenate([v for _, v in parts])))
        return out

    def matrix(self, texts: list[str]):
        """A (n, dim) CSR matrix of `rows`."""
        import scipy.sparse as sp

        rows = self.rows(texts)
        indptr = np.cumsum([0] + [len(i) for i, _ in rows])
        idx = np.concatenate([i for i, _ in rows]) if rows else np.empty(0, dtype=np.int64)
        val = np.concatenate([v for _, v in rows]) if rows else np.empty(0)
        return sp.csr_matrix((val, idx, indptr), shape=(len(texts), self.dim))

    def save(self, dest: Path) -> None:
        from safetensors.numpy import save_file

        meta = [{"name": b.name, "params": b.params, "vocab": b.vocab} for b in self.blocks]
        (dest / "features.json").write_text(json.dumps({"blocks": meta}, ensure_ascii=False))
        save_file({f"idf.{b.name}": b.idf for b in self.blocks}, str(dest / "features.safetensors"))

    @classmethod
    def load(cls, src: Path) -> Tfidf:
        from safetensors.numpy import load_file

        meta = json.loads((src / "features.json").read_text())["blocks"]
        arrays = load_file(str(src / "features.safetensors"))
        return cls([Block(m["name"], m["params"], m["vocab"], arrays[f"idf.{m['name']}"])
                    for m in meta])  # fmt: skip


class Static:
    """model2vec static embeddings (a dense, L2-normalised vector per input)."""

    def __init__(self, path: Path):
        from model2vec import StaticModel

        self.path = Path(path)
        self.model = StaticModel.from_pretrained(str(self.path))

    @property
    def dim(self) -> int:
        return int(self.model.dim)

    def n_params(self) -> int:
        return int(np.prod(self.model.embedding.shape))

    def matrix(self, texts: list[str]) -> np.ndarray:
        return np.asarray(
            self.model.encode(texts, show_progress_bar=False, use_multiprocessing=False),
            dtype=np.float64,
        )

    def save(self, dest: Path) -> None:
        self.model.save_pretrained(str(dest / "static"))


def read_features(src: Path, spec: dict[str, Any]) -> Tfidf | Static | None:
    """The fitted features saved in `src` (None: a spec dir, nothing fitted yet)."""
    if spec["features"] == "static":  # a trained dir carries its copy; a spec dir points at it
        return Static(src / "static" if (src / "static").exists() else Path(spec["static"]))
    return Tfidf.load(src) if (src / "features.json").exists() else None
