"""How sure the teacher was of a label.

With log-probabilities (OpenAI's `logprobs`, llama.cpp's server): the probability of the label
as the teacher wrote it, the product of the probabilities of the tokens that spell it (the
value of `"label"` in a JSON answer, else the first line). Without them: k-sample
self-consistency (`teacher.self_consistency: k`, at a temperature above 0), the share of k
answers that agree with the majority label.

Log-probabilities mean nothing under a grammar that forces the tokens: llama.cpp's JSON
grammar makes the model spell `neutral` as `n`/`eu`/`tr`/`al` where it would write one token,
and reports the model's probabilities of those forced pieces (12 of 13 entailment rows came
out at exactly 0.0). The local teacher's structured answers therefore get no logprob
confidence (`grammar_note`), and on any endpoint a label token the model gave less than
`FORCED_P` is taken as forced, not chosen: that row's confidence is unavailable.
"""

from __future__ import annotations

import json
import math
from collections import Counter


def label_span(text: str, label: str) -> tuple[int, int] | None:
    """Where `label` is spelt in the answer: the JSON value of "label", else its first line."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        key = text.find('"label"')
        start = text.find(label, key) if key >= 0 else -1
    else:
        first = text.split("\n", 1)[0]
        start = first.lower().find(label.lower())
    return (start, start + len(label)) if start >= 0 else None


FORCED_P = 1e-4
"""A sampled token the model gave less than this was forced on it (a grammar), not chosen:
at temperature <= 1 sampling picks such a token about once in 10,000 draws, greedy never."""


def grammar_note(kind: str, structured: bool, self_consistency: int) -> str | None:
    """Why logprob confidence is not computed for a job, or None when it can be: a local
    (llama.cpp) teacher answering under a JSON grammar."""
    if kind != "local" or not structured or self_consistency > 1:
        return None
    return (
        "confidence: unavailable: the local teacher answers under a JSON grammar, whose "
        "log-probabilities are those of forced tokenizations; for a confidence, set "
        "teacher.self_consistency: 5 with teacher.temperature above 0"
    )


def label_probability(logprobs_json: str | None, text: str, label: str | None) -> float | None:
    """P(label tokens) from stored `[[token, logprob], ...]`; None without logprobs or label,
    or when a token of the label was forced (its probability under `FORCED_P`).

    The tokens are laid end to end to find which cover the label's characters; a token that
    only partly covers it counts whole (its probability is the model's for that piece).
    """
    if not logprobs_json or not label:
        return None
    pairs = json.loads(logprobs_json)
    joined = "".join(token for token, _ in pairs)
    span = label_span(joined, label) if joined == text else label_span(text, label)
    if span is None or joined != text:
        return None
    start, end = span
    total, pos = 0.0, 0
    for token, logprob in pairs:
        nxt = pos + len(token)
        if nxt > start and pos < end and logprob is not None:
            if logprob < math.log(FORCED_P):
                return None  # forced by a grammar: no confidence, rather than a false 0.0
            total += logprob
        pos = nxt
    return math.exp(total)


def majority(labels: list[str | None]) -> tuple[str | None, float]:
    """The most frequent valid label and its share of all k answers (ties: first seen)."""
    valid = [label for label in labels if label is not None]
    if not valid:
        return None, 0.0
    counts = Counter(valid)
    best = max(counts, key=lambda label: (counts[label], -valid.index(label)))
    return best, counts[best] / len(labels)
