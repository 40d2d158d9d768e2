"""A classical student's small grid: features fitted once on the training rows, one classifier
per grid point, each scored on dev (accuracy, and log loss as the neural kinds' dev loss), as
the neural kinds choose checkpoints."""

from __future__ import annotations

from typing import Any

import numpy as np

from protege.errors import ConfigError
from protege.students.base import Fitted
from protege.students.classical.features import Static, Tfidf, normalise
from protege.students.classical.models import ClassicalModel, classifier_class

EPS = 1e-15
"""Probabilities are clipped to [EPS, 1] in the log loss, as scikit-learn's `log_loss` did."""


def dev_metrics(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy and mean log loss of probabilities `p` (n, K) against label indices `y`."""
    picked = np.clip(p[np.arange(len(y)), y], EPS, 1.0)
    return {
        "eval_accuracy": float(np.mean(p.argmax(1) == y)),
        "eval_loss": float(-np.mean(np.log(picked))),
    }


def fit_grid(
    config: dict[str, Any],
    features: Static | None,
    labels: list[str],
    train: tuple[list[str], np.ndarray],
    dev: tuple[list[str], np.ndarray],
    seed: int,
) -> list[Fitted]:
    """One `Fitted` per grid point of `config["grid"]`, in grid order."""
    from tqdm.auto import tqdm

    (texts, y), (dev_texts, dev_y) = train, dev
    if not len(dev_y):
        raise ConfigError("a classical student chooses its hyper-parameters on dev: no dev rows")
    classes = sorted(set(y.tolist()))
    if len(classes) < 2:
        raise ConfigError(
            f"the training rows all have one label ({labels[classes[0]] if classes else 'none'})"
            ": a classifier needs at least two"
        )
    texts, dev_texts = [normalise(t) for t in texts], [normalise(t) for t in dev_texts]
    if features is None:  # TF-IDF: fitted on the training rows only
        features, x = Tfidf.fit(config["tfidf"], texts)
    else:
        x = features.matrix(texts)
    x_dev = features.matrix(dev_texts)
    column = {c: j for j, c in enumerate(classes)}
    y_fit = np.array([column[c] for c in y.tolist()])
    cls = classifier_class(config["model"])
    out = []
    grid = config.get("grid") or [{}]
    for params in tqdm(grid, desc=f"fitting {config['model']}", unit="candidate", leave=False):
        clf = cls.fit(x, y_fit, params, seed)
        model = ClassicalModel(features, clf, list(labels), classes, dict(params))
        metrics = dev_metrics(model.widen(clf.proba_matrix(x_dev)), dev_y)
        out.append(Fitted({**metrics, "params": dict(params)}, model))
    return out
