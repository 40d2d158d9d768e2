"""Classical students (`kind: classical`): TF-IDF or static-embedding features and a logistic
regression or gradient-boosted trees, fitted in seconds on a CPU, answering in well under a
millisecond. Labels only (no rationale), classification only.

A model dir is a `config.json` (`protege_kind: classical`: features, classifier, grid) and,
once fitted, what was fitted: JSON, safetensors and LightGBM's text format, never a pickle, so
loading a model dir runs no code from it. `fit` tries the config's small grid of
hyper-parameters and scores each candidate on dev; `train.fit` keeps the best. There is no
tokenizer (`tok` is None): the student is its own runtime, and `label_probs` gives the
probability of each of the task's labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from protege.errors import ConfigError
from protege.formats import Example, TaskConfig, display_label, normalise_label
from protege.students.base import Fitted, Student, StudentOptions, require_label_task
from protege.students.classical.models import ClassicalModel, is_fitted, read_config, require


def check_config(path, config: dict[str, Any]) -> None:
    """One line naming what a hand-written spec dir's config.json gets wrong."""
    from protege.students.classical.models import CLASSIFIERS

    where = f"{path}/config.json"
    if config.get("features") not in ("tfidf", "static"):
        raise ConfigError(f"{where}: features {config.get('features')!r}: expected tfidf or static")
    if config.get("model") not in CLASSIFIERS:
        raise ConfigError(
            f"{where}: model {config.get('model')!r}: expected one of {', '.join(CLASSIFIERS)}"
        )
    if config["features"] == "tfidf" and not {"word_ngrams", "char_ngrams"} <= set(
        config.get("tfidf") or {}
    ):
        raise ConfigError(f"{where}: tfidf needs word_ngrams and char_ngrams, e.g. [1, 2], [2, 5]")
    if config["features"] == "static" and not config.get("static"):
        if not (Path(path) / "static").exists():
            raise ConfigError(f"{where}: static features need a model2vec dir (`static`)")
    if not isinstance(config.get("grid", []), list):
        raise ConfigError(f"{where}: grid: a list of hyper-parameter settings, e.g. [{{C: 1}}]")


class ClassicalStudent(Student):
    kind = "classical"
    fits_itself = True
    n_suffix = 0

    def __init__(self, model, task: TaskConfig | None, config: dict[str, Any], path: Path):
        super().__init__(model, None, task)
        self.config, self.path = config, path

    @classmethod
    def check_task(cls, task: TaskConfig) -> None:
        require_label_task("classical", "a classical student", task)

    @classmethod
    def load(
        cls,
        path: str,
        task: TaskConfig | None,
        options: StudentOptions | None = None,
        seed: int | None = None,
        threads: int | None = None,
    ) -> ClassicalStudent:
        src = Path(path)
        if not (src / "config.json").exists():
            raise ConfigError(f"{path}: not a classical student dir (no config.json)")
        config = read_config(src)
        if config.get("protege_kind") != "classical":
            raise ConfigError(f"{path}: its config.json is not a classical student's")
        check_config(path, config)
        require(config)
        saved = config.get("labels")
        if task is None:
            if saved is None:
                raise ConfigError(f"{path}: an unfitted classical student needs the task's labels")
            task = TaskConfig(labels=saved)
        cls.check_task(task)
        if saved is not None and saved != list(task.labels):
            raise ConfigError(
                f"{path}: this classical student predicts {saved}, the task's labels are "
                f"{list(task.labels)}"
            )
        model = ClassicalModel.load(src, config, threads) if is_fitted(src, config) else None
        return cls(model, task, config, src)

    def to(self, device: str) -> ClassicalStudent:
        self.device = device  # NumPy on the CPU whatever the device
        return self

    def n_params(self) -> int:
        return self.model.n_params() if self.model is not None else 0

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "params": self.n_params(),
            "features": self.config["features"],
            "model": self.config["model"],
            "chosen": getattr(self.model, "params", None),
        }

    # ---- fitting ---------------------------------------------------------------------------

    def label_index(self, text: str) -> int:
        label = normalise_label(text, self.task.labels)
        assert label is not None, text  # targets come from formats.make_examples
        return self.task.labels.index(label)

    def fit(self, train: list[Example], dev: list[Example], seed: int) -> list[Fitted]:
        from protege.students.classical.features import read_features
        from protege.students.classical.grid import fit_grid

        self.check_task(self.task)
        static = self.config["features"] == "static"
        return fit_grid(
            self.config,
            read_features(self.path, self.config) if static else None,
            list(self.task.labels),
            ([e.source for e in train], np.array([self.label_index(e.target) for e in train])),
            ([e.source for e in dev], np.array([self.label_index(e.target) for e in dev])),
            seed,
        )

    def save(self, model: ClassicalModel, dest: Path) -> None:
        from protege.data.io import write_json

        fitted = model.save(Path(dest))
        spec = {k: v for k, v in self.config.items() if k not in ("static", *fitted)}
        write_json(Path(dest) / "config.json", {**spec, **fitted})

    def encode(self, examples, max_source_len, max_target_len):
        raise NotImplementedError("a classical student is fitted (fit), not trained in steps")

    collate = logits = encode

    def configure_decoding(self, settings) -> None:
        return None  # nothing is decoded

    # ---- inference -------------------------------------------------------------------------

    def _fitted(self) -> ClassicalModel:
        if self.model is None:
            raise ConfigError(f"{self.path}: this classical student is not fitted yet; train it")
        return self.model

    def label_probs(self, sources: list[str]) -> list[list[float]]:
        """`[input][k]`: probability of `task.labels[k]`."""
        return self._fitted().proba(sources).tolist()

    def generate(self, sources: list[str], max_new_tokens: int, num_beams: int = 1) -> list[str]:
        """The most probable label, written as a generative student would write it."""
        labels = self.task.labels
        return [display_label(labels[int(np.argmax(p))]) for p in self._fitted().proba(sources)]

    def generate_ids(self, sources: list[str], max_new_tokens: int, num_beams: int = 1):
        return self.generate(sources, max_new_tokens), [0] * len(sources)  # nothing generated

    @classmethod
    def backend(cls, model_dir, task: TaskConfig, device: str = "cpu", threads=None):
        return cls.load(str(model_dir), task, threads=threads).to(device)

    @classmethod
    def exporters(cls):
        from protege.students.classical.export import export_onnx

        return {"onnx": export_onnx}

    @classmethod
    def runtimes(cls):
        from protege.students.classical.export import MARKER, OnnxClassicalRuntime

        return {MARKER: OnnxClassicalRuntime}
