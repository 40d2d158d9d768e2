"""What a classical student reads: TF-IDF word and character n-grams, or static embeddings.

TF-IDF (`tfidf`): two scikit-learn `TfidfVectorizer` blocks fitted on the training rows, each
L2-normalised on its own (as a `FeatureUnion` of them is): words (`[a-zA-Z0-9_]+` tokens, 1-2
grams) and characters (2-5 grams, spaces included). Every input is first lowercased by the
vectorizers and has its whitespace runs collapsed to one space here (`normalise`); that and
the plain (not sublinear) term frequencies are what `skl2onnx` converts exactly, so an ONNX
export computes the same vector.

Serving one input through scikit-learn's `transform` costs about 3 ms on a long NLI premise
(one Python dict look-up per n-gram, 2,000 of them, then its per-call checks and sparse-matrix
building), so `Block.terms` finds the same terms with one vectorised search per block
(`PackedIndex`: an n-gram's key packs its characters' or tokens' small ids). Tests check the
vectors equal `TfidfVectorizer.transform`.

Static (`static`): model2vec embeddings distilled from MiniLM (mean of the tokens' static
vectors, L2-normalised); nothing is fitted on the training rows.

Stored without pickle: each vectorizer's parameters and vocabulary as JSON, its idf in
safetensors; a static model as model2vec saves it (safetensors + tokenizer.json).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protege.errors import ConfigError

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


class PackedIndex:
    """Vocabulary positions of an input's n-grams, all found with one `searchsorted`.

    Each unit (a character, or a word token) of the vocabulary's n-grams gets a small id
    (1..A, its rank among them; any other unit 0); an n-gram's key packs its ids, `bits` each,
    with n in the top 3 bits. The keys are injective, so a look-up is exact, and a gram with a
    unit outside the vocabulary's (a 0 field) matches nothing, as it is in no vocabulary
    entry. The keys of every position and length come from the input's id array with a shift
    and an or per length. Needs `hi * bits <= 61` (4,095 units for 5-grams, 2^30 for
    2-grams): `usable` says whether it holds."""

    def __init__(self, grams: list[tuple[str, ...]], ngrams: tuple[int, int]):
        self.lo, self.hi = ngrams
        units = sorted({u for gram in grams for u in gram})
        self.rank = {u: i + 1 for i, u in enumerate(units)}
        self.bits = max(1, len(units).bit_length())
        # (a token pattern that matched spaces would split a word n-gram into more units)
        self.usable = self.hi * self.bits <= 61 and all(self.lo <= len(g) <= self.hi for g in grams)
        if self.usable:
            keys = np.fromiter((self._key(g) for g in grams), dtype=np.uint64, count=len(grams))
            order = np.argsort(keys, kind="stable")
            self.keys, self.feature = keys[order], order.astype(np.int64)
            """Sorted keys, and the vocabulary index of the n-gram at each position."""

    def _key(self, gram: tuple[str, ...]) -> int:
        key = 0
        for u in gram:
            key = (key << self.bits) | self.rank[u]
        return key | (len(gram) << 61)

    def search(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in key order, count) of each distinct in-vocabulary n-gram of the unit
        id sequence `ids` (uint64); `feature[position]` is its vocabulary index."""
        none = np.empty(0, dtype=np.int64)
        if not len(ids) or not len(self.keys):
            return none, none
        bits, grams, key = np.uint64(self.bits), [], ids
        for n in range(1, min(self.hi, len(ids)) + 1):
            if n > 1:  # key[i]: the (n-1)-gram at i; append the unit at i + n - 1
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
        starts = np.flatnonzero(np.concatenate(([True], at[1:] != at[:-1])))
        return at[starts], np.diff(np.append(starts, len(at)))


class CharIndex(PackedIndex):
    """Character n-grams (sklearn's `char` analyzer: n-grams of the lowercased text, spaces
    included). Unit ids come from the code points with one search of the sorted alphabet."""

    def __init__(self, vocab: list[str], ngrams: tuple[int, int]):
        super().__init__([tuple(g) for g in vocab], ngrams)
        self.alphabet = np.array([ord(u) for u in self.rank], dtype=np.uint32)

    def __call__(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        codes = np.frombuffer(text.lower().encode("utf-32-le", "surrogatepass"), np.uint32)
        if not len(codes):
            return self.search(np.empty(0, dtype=np.uint64))
        pos = np.minimum(np.searchsorted(self.alphabet, codes), len(self.alphabet) - 1)
        return self.search(np.where(self.alphabet[pos] == codes, pos + 1, 0).astype(np.uint64))


class WordIndex(PackedIndex):
    """Word n-grams (sklearn's `word` analyzer: `token_pattern` matches of the lowercased
    text, n-grams joined by one space). Unit ids: one dict look-up per token."""

    def __init__(self, vocab: list[str], ngrams: tuple[int, int], pattern: str):
        super().__init__([tuple(g.split(" ")) for g in vocab], ngrams)
        self.tokens = re.compile(pattern).findall

    def __call__(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        get = self.rank.get
        ids = [get(t, 0) for t in self.tokens(text.lower())]
        return self.search(np.array(ids, dtype=np.uint64))


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
        self.order: np.ndarray | None = None
        """Vocabulary index of each term position `terms` gives (None: positions are
        vocabulary indices)."""
        plain = vec.lowercase and vec.strip_accents is None and vec.preprocessor is None
        ngrams = tuple(self.params["ngram_range"])
        index: PackedIndex | None = None
        if plain and vec.analyzer == "char":
            index = CharIndex(self.vocab, ngrams)
        elif plain and vec.analyzer == "word" and vec.tokenizer is None and not vec.stop_words:
            index = WordIndex(self.vocab, ngrams, vec.token_pattern)
        if index is not None and index.usable:
            self._packed, self.order = index, index.feature
        else:  # another analyzer: scikit-learn's own, and a dict
            self._analyze = vec.build_analyzer()
            self._index = {g: i for i, g in enumerate(self.vocab)}

    def terms(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(position, term frequency) of each distinct in-vocabulary term of `text`."""
        if self.order is not None:
            return self._packed(text)
        get = self._index.get
        ids = np.fromiter((i for i in map(get, self._analyze(text)) if i is not None), np.int64)
        return np.unique(ids, return_counts=True)

    def row(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(vocabulary indices, values) of `text`'s L2-normalised tf-idf vector."""
        pos, tf = self.terms(text)
        idx = pos if self.order is None else self.order[pos]
        values = tf * self.idf[idx]
        norm = np.sqrt(values @ values)
        return idx, values / norm if norm > 0 else values

    def folded(self, coef: np.ndarray) -> np.ndarray:
        """[idf * coef | idf] with a row per term position: one gathered row per term gives
        a linear model's logits, (tf @ rows[:, :-1]) / ||tf * rows[:, -1]||."""
        table = np.hstack([self.idf[:, None] * coef, self.idf[:, None]])
        return table if self.order is None else table[self.order]

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
        """Fitted blocks and the training matrix (scikit-learn's own transform). A block that
        finds no term in the training rows (no ASCII word in a Chinese corpus) is left out."""
        import scipy.sparse as sp

        blocks, mats = [], []
        for name in ("word", "char"):
            params = vectorizer_params(
                name, spec[f"{name}_ngrams"], spec.get("min_df", 1), spec.get(f"{name}_max")
            )
            vec = make_vectorizer(params)
            try:
                mats.append(vec.fit_transform(texts))
            except ValueError as e:  # "empty vocabulary; perhaps the documents only contain..."
                if "empty vocabulary" not in str(e):
                    raise
                continue
            vocab = sorted(vec.vocabulary_, key=vec.vocabulary_.get)
            blocks.append(Block(name, params, vocab, np.asarray(vec.idf_, dtype=np.float64)))
        if not blocks:
            raise ConfigError("TF-IDF: the training rows have no words or characters to count")
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
        out = sp.csr_matrix((val, idx, indptr), shape=(len(texts), self.dim))
        out.sort_indices()
        return out

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
