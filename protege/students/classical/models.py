"""The classifiers of classical students, and the fitted model (features + classifier) that
answers with probabilities in the task's label order.

- `logreg`: scikit-learn's `LogisticRegression` (multinomial; L2, strength `C`). Only its
  coefficients are kept (`classifier.safetensors`); inference is `softmax(x W + b)` here, the
  same numbers as `predict_proba` (a two-class model's one logit becomes [0, z], whose softmax
  is scikit-learn's [1 - sigmoid(z), sigmoid(z)]).
- `lgbm`: LightGBM gradient-boosted trees (Paper B's GBDT), kept in LightGBM's own text model
  format (`classifier.lgbm.txt`). Trained with one thread: LightGBM's OpenMP threads spin on a
  small shared machine (a 15 s fit took 30-80 s with two).

A label missing from the training rows has no column in the classifier: it gets probability 0
(`classes` maps the classifier's columns to the task's labels).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protege.errors import ConfigError
from protege.students.classical.features import Static, Tfidf, normalise


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


class LogReg:
    """Multinomial logistic regression: W (dim, C), b (C,)."""

    name = "logreg"
    files = ("classifier.safetensors",)

    def __init__(self, coef: np.ndarray, intercept: np.ndarray):
        self.coef, self.intercept = coef, intercept

    @classmethod
    def fit(cls, x, y: np.ndarray, params: dict[str, Any], seed: int) -> LogReg:
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=float(params.get("C", 1.0)), max_iter=2000, random_state=seed)
        clf.fit(x, y)
        coef, intercept = clf.coef_.T, clf.intercept_
        if coef.shape[1] == 1:  # two classes: one logit z for the second -> [0, z]
            coef = np.hstack([np.zeros_like(coef), coef])
            intercept = np.array([0.0, intercept[0]])
        return cls(np.ascontiguousarray(coef, dtype=np.float64), intercept.astype(np.float64))

    def proba(self, features: Tfidf | Static, texts: list[str]) -> np.ndarray:
        if not isinstance(features, Tfidf):
            return self.proba_matrix(features.matrix(texts))
        # One input at a time, block by block, no sparse matrix built (a served request):
        # one gathered row of [idf * W | idf] per term gives the block's logits.
        z = np.tile(self.intercept, (len(texts), 1))
        for k, text in enumerate(texts):
            for block, table in zip(features.blocks, self.tables(features), strict=True):
                pos, tf = block.terms(text)
                rows = table[pos]
                tfidf = tf * rows[:, -1]
                norm = np.sqrt(tfidf @ tfidf)
                if norm > 0:
                    z[k] += (tf @ rows[:, :-1]) / norm
        return softmax(z)

    def tables(self, features: Tfidf) -> list[np.ndarray]:
        """Each block's `Block.folded` table of these coefficients (built once)."""
        if getattr(self, "_tables_of", None) is not features:
            ends = features.offsets
            self._tables = [
                b.folded(self.coef[lo:hi])
                for b, lo, hi in zip(features.blocks, ends[:-1], ends[1:], strict=True)
            ]
            self._tables_of = features
        return self._tables

    def proba_matrix(self, x) -> np.ndarray:
        return softmax(np.asarray(x @ self.coef) + self.intercept)

    def n_params(self) -> int:
        return int(self.coef.size + self.intercept.size)

    def save(self, dest: Path) -> None:
        from safetensors.numpy import save_file

        save_file(
            {"coef": self.coef, "intercept": self.intercept}, str(dest / "classifier.safetensors")
        )

    @classmethod
    def load(cls, src: Path, threads: int | None = None) -> LogReg:
        from safetensors.numpy import load_file

        arrays = load_file(str(src / "classifier.safetensors"))
        return cls(arrays["coef"], arrays["intercept"])


class Trees:
    """LightGBM gradient-boosted trees (a LightGBM `Booster`)."""

    name = "lgbm"
    files = ("classifier.lgbm.txt",)

    def __init__(self, booster, n_classes: int, threads: int | None = None):
        self.booster, self.n_classes, self.threads = booster, n_classes, threads or 1

    @classmethod
    def fit(cls, x, y: np.ndarray, params: dict[str, Any], seed: int) -> Trees:
        import lightgbm as lgb

        clf = lgb.LGBMClassifier(
            num_leaves=int(params.get("num_leaves", 15)),
            n_estimators=int(params.get("n_estimators", 100)),
            learning_rate=float(params.get("learning_rate", 0.1)),
            min_child_samples=int(params.get("min_child_samples", 5)),
            random_state=seed,
            n_jobs=1,
            deterministic=True,
            force_col_wise=True,
            verbose=-1,
        )
        clf.fit(x.astype(np.float32), y)
        return cls(clf.booster_, len(clf.classes_))

    def proba(self, features: Tfidf | Static, texts: list[str]) -> np.ndarray:
        return self.proba_matrix(features.matrix(texts))

    def proba_matrix(self, x) -> np.ndarray:
        p = np.asarray(self.booster.predict(x.astype(np.float32), num_threads=self.threads))
        return np.stack([1 - p, p], axis=1) if p.ndim == 1 else p

    def n_params(self) -> int:
        """Split thresholds and leaf values: 2 x leaves - 1 per tree."""
        trees = self.booster.dump_model()["tree_info"]
        return int(sum(2 * t["num_leaves"] - 1 for t in trees))

    def save(self, dest: Path) -> None:
        (dest / "classifier.lgbm.txt").write_text(self.booster.model_to_string())

    @classmethod
    def load(cls, src: Path, threads: int | None = None) -> Trees:
        import lightgbm as lgb

        booster = lgb.Booster(model_file=str(src / "classifier.lgbm.txt"))
        n = booster.num_model_per_iteration()
        return cls(booster, 2 if n == 1 else n, threads)


CLASSIFIERS: dict[str, type[LogReg] | type[Trees]] = {"logreg": LogReg, "lgbm": Trees}


def classifier_class(name: str):
    if name not in CLASSIFIERS:
        raise ConfigError(f"classical model {name!r}: expected one of {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[name]


@dataclass
class ClassicalModel:
    """Fitted features and classifier; `proba` is `[input][k]` over `labels`."""

    features: Tfidf | Static
    classifier: LogReg | Trees
    labels: list[str]
    classes: list[int]
    """Task label index of each classifier column (the labels seen in training)."""
    params: dict[str, Any] = field(default_factory=dict)
    """The hyper-parameters it was fitted with (the grid point chosen on dev)."""

    def proba(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)))
        return self.widen(self.classifier.proba(self.features, [normalise(t) for t in texts]))

    def widen(self, p: np.ndarray) -> np.ndarray:
        out = np.zeros((len(p), len(self.labels)))
        out[:, self.classes] = p
        return out

    def n_params(self) -> int:
        if isinstance(self.features, Tfidf):
            own = sum(len(b.idf) for b in self.features.blocks)
        else:
            own = self.features.n_params()
        return own + self.classifier.n_params()

    def save(self, dest: Path) -> dict[str, Any]:
        """Write the fitted parts into `dest`; returns what config.json records of them."""
        if isinstance(self.features, Static):
            if self.features.path.resolve() != (dest / "static").resolve():
                shutil.copytree(self.features.path, dest / "static")
        else:
            self.features.save(dest)
        self.classifier.save(dest)
        return {
            "labels": list(self.labels),
            "classes": list(self.classes),
            "params": self.params,
            "num_parameters": self.n_params(),
            "dim": self.features.dim,
        }

    @classmethod
    def load(cls, src: Path, config: dict[str, Any], threads: int | None = None) -> ClassicalModel:
        from protege.students.classical.features import read_features

        features = read_features(src, config)
        classifier = classifier_class(config["model"]).load(src, threads)
        return cls(features, classifier, config["labels"], config["classes"], config["params"])


def require(config: dict[str, Any], export: bool = False) -> None:
    """One line naming the extra to install when a library this student needs is missing."""
    import importlib

    needed = ["sklearn", "scipy"]
    needed += ["lightgbm"] if config.get("model") == "lgbm" else []
    needed += ["model2vec"] if config.get("features") == "static" else []
    needed += ["onnx", "onnxruntime", "skl2onnx", "onnxmltools"] if export else []
    for module in needed:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(
                f"classical students need {module}: pip install 'protege[classical]'"
            ) from e


def is_fitted(src: Path, config: dict[str, Any]) -> bool:
    return "classes" in config and all(
        (src / f).exists() for f in classifier_class(config["model"]).files
    )


def read_config(path: Path) -> dict[str, Any]:
    return json.loads((path / "config.json").read_text())
