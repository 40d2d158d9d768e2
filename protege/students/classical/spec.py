"""The three built-in classical students, as spec dirs under the user directory.

A spec dir is one `config.json` (`protege_kind: classical`): which features, which classifier,
and the small grid of hyper-parameters that `fit` tries (each scored on dev). A trained dir
is the same config plus what was fitted (`ClassicalStudent.save`).

- `protege:tfidf-logreg`  TF-IDF word 1-2 and char 2-5 grams, logistic regression (default).
- `protege:tfidf-lgbm`  the same features, vocabularies capped (5,000 words, 20,000 char
  n-grams: LightGBM's fit time grows with the columns), LightGBM trees: Paper B's GBDT.
- `protege:static-logreg`  model2vec static embeddings distilled (offline, once, about 30 s on
  2 cores) from the packaged all-MiniLM-L6-v2, then logistic regression.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protege.paths import user_dir

TFIDF = {"word_ngrams": [1, 2], "char_ngrams": [2, 5], "min_df": 1}
LOGREG_GRID = [{"C": c} for c in (1.0, 4.0, 16.0, 64.0)]
STATIC_GRID = [{"C": c} for c in (16.0, 64.0, 256.0, 1024.0)]
"""Unit-length 256-d embeddings need a weaker penalty than sparse TF-IDF rows."""
LGBM_GRID = [
    {"num_leaves": leaves, "n_estimators": n, "learning_rate": 0.1}
    for leaves, n in ((7, 100), (15, 100), (15, 300))
]

SPECS: dict[str, dict[str, Any]] = {
    "tfidf-logreg": {"features": "tfidf", "tfidf": TFIDF, "model": "logreg", "grid": LOGREG_GRID},
    "tfidf-lgbm": {
        "features": "tfidf",
        "tfidf": {**TFIDF, "word_max": 5000, "char_max": 20000},
        "model": "lgbm",
        "grid": LGBM_GRID,
    },
    "static-logreg": {"features": "static", "model": "logreg", "grid": STATIC_GRID},
}


def static_dir(minilm: Path, atomic_dir: Callable[[Path, Callable[[Path], None]], Path]) -> Path:
    """model2vec embeddings distilled from MiniLM (`minilm`), built once by `atomic_dir`
    (`students.builtins`: into a temp dir, then renamed)."""

    def build(tmp: Path) -> None:
        from model2vec.distill import distill

        distill(str(minilm), pca_dims=256, device="cpu").save_pretrained(str(tmp))

    return atomic_dir(user_dir() / "models" / "minilm-static", build)


def build_spec(name: str, minilm: Callable[[], Path], atomic_dir) -> Path:
    """The spec dir of `protege:<name>`, (re)written when missing or out of date; a static
    one distils `minilm()` the first time."""
    from protege.data.io import write_json

    config = {"protege_kind": "classical", "name": name, **SPECS[name]}
    if config["features"] == "static":
        config["static"] = str(static_dir(minilm(), atomic_dir))
    out = user_dir() / "models" / name
    path = out / "config.json"
    if not path.exists() or json.loads(path.read_text()) != config:
        out.mkdir(parents=True, exist_ok=True)
        write_json(path, config)  # atomic: temp file, then rename
    return out
