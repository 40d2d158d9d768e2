"""Predict with a student model dir: records or strings in, `{label, rationale?, text}` out.

For classification without rationales the fast path scores the closed label set
(`protege.serve.scoring`); everything else generates greedily and parses the text with
`protege.formats.parse_output`. The model runs behind a small backend interface (`Backend`): each
student kind provides its runtimes (`protege.students.open_runtime` picks the one a model dir
needs), and nothing here knows which it holds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

from protege.errors import ProtegeError
from protege.formats import (
    EXPLAIN_PREFIX,
    PREDICT_PREFIX,
    TaskConfig,
    explain_input,
    inference_input,
    load_task,
    parse_output,
    recorded_decoding,
)
from protege.serve.scoring import Candidates, Rule, choose, sequence_score, supports_scoring


class Backend(Protocol):
    """What a predictor needs from a model runtime."""

    tok: Any
    start_id: int | None
    """The decoder start token (what a target prefix is told apart from)."""
    # Optional: `target_affixes() -> (prefix, suffix)`, for a backend whose targets are not
    # wrapped as its tokenizer wraps a `text_target` (a causal completion).

    def token_logprobs(
        self, sources: list[str], candidates: list[list[int]], prefix: list[int] = ()
    ) -> list[list[list[float]]]:
        """`[input][candidate][t]`: log p(candidate token t | prefix + candidate[:t], input);
        the `prefix` tokens (a forced BOS) are fed to the decoder but not scored."""
        ...

    def first_logprobs(self, sources: list[str], token_ids: list[int]) -> list[list[float]]:
        """`[input][j]`: log p(first target token = token_ids[j] | input)."""
        ...

    def generate(self, sources: list[str], max_new_tokens: int, num_beams: int = 1) -> list[str]:
        """Greedy (or beam) decoding, special tokens removed."""
        ...


def no_rationale(task) -> str | None:
    """Why a student cannot give a rationale (trained on labels only), or None."""
    if task.type == "classification" and task.format == "label":
        return "this student was trained on labels only (format label): it writes no rationale"
    return None


class Predictor:
    """A loaded student: `predict(inputs, with_rationale=False)`, batched. Generation uses
    `max_new_tokens` and `num_beams`: `load` takes them from what training recorded in the
    model dir (`formats.recorded_decoding`), so serving decodes as dev selection and eval do."""

    def __init__(
        self,
        backend: Backend,
        task: TaskConfig,
        batch_size: int = 32,
        max_new_tokens: int = 128,
        rule: Rule = "greedy",
        num_beams: int = 1,
    ):
        self.backend, self.task = backend, task
        self.batch_size, self.max_new_tokens, self.rule = batch_size, max_new_tokens, rule
        own = getattr(backend, "target_affixes", None)
        self.affixes = own() if own else None
        self.num_beams = num_beams
        self.candidates = (
            Candidates.for_task(task, backend.tok, backend.start_id, self.affixes)
            if task.type == "classification" and backend.tok is not None
            else None
        )
        """The labels' token sequences; None for a backend without a tokenizer (one that
        reads text and gives `label_probs`)."""
        self.model_dir: Path | None = None
        self.text_confidence = False
        """Summaries carry a `score`: exp(mean token log-probability) of the generated text
        (one more teacher-forced pass; `serve` and `calibrate` turn it on)."""

    @classmethod
    def load(
        cls, model_dir: str | Path, device: str = "cpu", threads: int | None = None, **kw: Any
    ) -> Predictor:
        """A PyTorch model dir, or a CTranslate2 export (`protege export`); `threads` caps the
        CPU threads of the model runtime (default: the runtime's own choice)."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ProtegeError(f"{model_dir}: no such model directory")
        task = load_task(model_dir)
        recorded = recorded_decoding(model_dir)
        kw.setdefault("max_new_tokens", int(recorded.get("max_new_tokens") or 128))
        kw.setdefault("num_beams", int(recorded.get("num_beams") or 1))
        from protege.students import open_runtime

        backend = open_runtime(model_dir, task, device=device, threads=threads)
        predictor = cls(backend, task, **kw)
        predictor.model_dir = model_dir
        return predictor

    def source(self, item: dict[str, Any] | str, source: str = "input") -> str:
        """The encoder input for a record (rendered with the task template) or a raw string."""
        if isinstance(item, dict):
            return inference_input(self.task, item, source)
        prefix = self.task.input_prefix or ""
        if prefix and not item.startswith(prefix):  # raw text gets the model's task prefix too
            item = prefix + item
        if self.task.format == "multitask" and not item.startswith(PREDICT_PREFIX):
            return PREDICT_PREFIX + item
        return item

    def label_budget(self) -> int:
        """New tokens for a label and its end marker (eos, or the whole ` Explanation:`
        connector, which `parse_output` needs to see), and no more: generation without
        rationale (`Candidates.label_budget`); a backend without a tokenizer writes a label
        whole (no tokens to count): `max_new_tokens`."""
        if self.backend.tok is None:
            return self.max_new_tokens
        assert self.candidates is not None
        forced_eos = bool(getattr(self.backend, "forced_eos", False))
        return Candidates.label_budget(
            self.task, self.backend.tok, self.backend.start_id, forced_eos, self.affixes
        )

    def predict(
        self, inputs: list[dict[str, Any] | str], with_rationale: bool = False, fast: bool = True
    ) -> list[dict[str, Any]]:
        if with_rationale and no_rationale(self.task):
            raise ProtegeError(no_rationale(self.task))
        sources = [self.source(x) for x in inputs]
        out: list[dict[str, Any]] = []
        for i in range(0, len(sources), self.batch_size):
            out += self._predict_batch(
                inputs[i : i + self.batch_size],
                sources[i : i + self.batch_size],
                with_rationale,
                fast,
            )
        return out

    def _predict_batch(self, inputs, sources, with_rationale: bool, fast: bool) -> list[dict]:
        task = self.task
        if task.type == "summarization":
            texts = [t.strip() for t in self._generate(sources, self.max_new_tokens)]
            if not self.text_confidence:
                return [{"text": t} for t in texts]
            scores = self.text_scores(sources, texts)
            return [{"text": t, "score": s} for t, s in zip(texts, scores, strict=True)]
        multitask = task.format == "multitask"
        if fast and supports_scoring(task) and (not with_rationale or multitask):
            preds = self.score(sources)
        else:
            budget = self.max_new_tokens if with_rationale else self.label_budget()
            if task.format == "rationale+label":
                budget = self.max_new_tokens
            if multitask:
                budget = self.label_budget()
            preds = []
            for text in self._generate(sources, budget):
                p = parse_output(task, text)
                pred = {"label": p.label, "text": p.text}
                if with_rationale and not multitask:
                    pred["rationale"] = p.rationale
                preds.append(pred)
        if with_rationale and multitask:
            explain = [
                explain_input(task, x)
                if isinstance(x, dict)
                else EXPLAIN_PREFIX + _strip_predict(x)
                for x in inputs
            ]
            for pred, text in zip(preds, self._generate(explain, self.max_new_tokens), strict=True):
                pred["rationale"] = text.strip()
        elif with_rationale and task.format == "label":
            for pred in preds:
                pred["rationale"] = None  # this student was trained without rationales
        return preds

    def _generate(self, sources: list[str], budget: int) -> list[str]:
        return self.backend.generate(sources, budget, self.num_beams)

    def score(self, sources: list[str]) -> list[dict[str, Any]]:
        """The fast path: one label per input from the closed set, never malformed."""
        label_probs = getattr(self.backend, "label_probs", None)
        if label_probs is not None:  # a probability per label, one pass
            return [self._from_probs(p) for p in label_probs(sources)]
        assert self.candidates is not None
        ids, prefix = self.candidates.ids, self.candidates.prefix
        firsts = [c[0] for c in ids]
        if self.rule == "greedy" and len(set(firsts)) == len(firsts) and not prefix:
            # Distinct first tokens: constrained greedy decides at the first step, so one
            # decoder step suffices (NLI: en|neutral|contradiction). Score = p(first token).
            preds = []
            labels = self.candidates.labels
            for lps in self.backend.first_logprobs(sources, firsts):
                k = max(range(len(firsts)), key=lambda j: lps[j])
                scores = {lab: round(math.exp(lp), 4) for lab, lp in zip(labels, lps, strict=True)}
                preds.append({"label": labels[k], "text": labels[k], "score": scores[labels[k]],
                              "scores": scores})  # fmt: skip
            return preds
        preds = []
        for lps in self.backend.token_logprobs(sources, ids, prefix):
            k = choose(ids, lps, self.rule)
            labels = self.candidates.labels
            scores = {
                lab: round(sequence_score(lp), 4) for lab, lp in zip(labels, lps, strict=True)
            }
            preds.append({"label": labels[k], "text": labels[k], "score": scores[labels[k]],
                          "scores": scores})  # fmt: skip
        return preds

    def text_scores(self, sources: list[str], texts: list[str]) -> list[float | None]:
        """exp(mean token log-probability) of each text as the student's answer to its source
        (teacher-forced, the end token included); None where it cannot be scored."""
        from protege.targets import target_affixes

        tok = self.backend.tok
        try:
            prefix, suffix = self.affixes or target_affixes(tok, self.backend.start_id)
        except Exception:  # noqa: BLE001  a tokenizer without text_target: no confidence
            return [None] * len(texts)
        out: list[float | None] = []
        for source, text in zip(sources, texts, strict=True):
            ids = tok(text, add_special_tokens=False)["input_ids"] + suffix
            lps = self.backend.token_logprobs([source], [ids], prefix)[0][0]
            out.append(round(math.exp(sum(lps) / len(lps)), 4) if lps else None)
        return out

    def _from_probs(self, probs: list[float]) -> dict[str, Any]:
        labels = self.task.labels
        k = max(range(len(labels)), key=lambda j: probs[j])
        return {
            "label": labels[k],
            "text": labels[k],
            "score": round(probs[k], 4),
            "scores": {label: round(p, 4) for label, p in zip(labels, probs, strict=True)},
        }


def _strip_predict(text: str) -> str:
    return text[len(PREDICT_PREFIX) :] if text.startswith(PREDICT_PREFIX) else text
