"""Metrics as pure functions: label accuracy (malformed counted wrong), coverage, per-class
P/R/F1, confusion matrix, corpus BLEU, Paper A's sentence-BLEU variant, ROUGE, output length.

Every function takes plain lists, so the same code scores a student, the teacher and a test's
hand-made numbers. Per-example values are returned where a bootstrap or a paired test needs
them (`correct`, `rouge_per_example`, `bleu_sentence_stats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MALFORMED = "(malformed)"
"""The confusion-matrix column for outputs that did not parse into a label."""


def classification_metrics(
    golds: Sequence[str], preds: Sequence[str | None], labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy over *all* rows (a malformed prediction, `None`, counts wrong), coverage (the
    share that parsed), per-class precision/recall/F1, macro-F1 and the confusion matrix.

    Paper A's code skipped malformed outputs, which flatters a model that often fails to answer;
    here they stay in the denominator and get their own confusion column.
    """
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} gold labels but {len(preds)} predictions")
    n = len(golds)
    correct = [int(p is not None and p == g) for g, p in zip(golds, preds, strict=True)]
    parsed = sum(p is not None for p in preds)
    columns = [*labels, MALFORMED]
    confusion = {g: dict.fromkeys(columns, 0) for g in labels}
    for g, p in zip(golds, preds, strict=True):
        if g in confusion:
            confusion[g][p if p in labels else MALFORMED] += 1
    per_class = {}
    for label in labels:
        tp = confusion[label][label]
        predicted = sum(confusion[g][label] for g in labels)
        support = sum(confusion[label].values())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support,
        }
    return {
        "n": n,
        "accuracy": sum(correct) / n if n else 0.0,
        "coverage": parsed / n if n else 0.0,
        "macro_f1": sum(c["f1"] for c in per_class.values()) / len(per_class) if labels else 0.0,
        "per_class": per_class,
        "confusion": {"rows_gold": list(labels), "columns_pred": columns, "counts": confusion},
        "correct": correct,
    }


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[int], n_bins: int = 10
) -> float:
    """ECE: the |accuracy - mean confidence| gap of each of `n_bins` equal-width confidence
    bins, weighted by the bin's share of rows (Guo et al., 2017). 0 is perfectly calibrated."""
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences but {len(correct)} outcomes")
    n = len(confidences)
    bins: list[list[int]] = [[] for _ in range(n_bins)]
    for i, c in enumerate(confidences):
        bins[min(n_bins - 1, int(c * n_bins))].append(i)  # (k/n, (k+1)/n], 1.0 in the last
    ece = 0.0
    for rows in bins:
        if rows:
            acc = sum(correct[i] for i in rows) / len(rows)
            conf = sum(confidences[i] for i in rows) / len(rows)
            ece += len(rows) / n * abs(acc - conf)
    return ece


def bleu_sentence_stats(hyps: Sequence[str], refs: Sequence[str]) -> list[list[int]]:
    """Per-example BLEU sufficient statistics (sacrebleu's: sys_len, ref_len, 4 x matches,
    4 x totals). Their column sums give the corpus BLEU, so a bootstrap resamples rows of
    this table instead of re-tokenising 1,000 times."""
    from sacrebleu.metrics import BLEU

    # sacrebleu has no public per-sentence statistics; this is the helper corpus_score uses.
    return [list(map(int, row)) for row in BLEU()._extract_corpus_statistics(hyps, [list(refs)])]


def is_uncased(tok: Any) -> bool:
    """True when the tokenizer lowercases (MiniLM/BERT uncased): its outputs cannot match a
    cased reference, so BLEU is then computed case-insensitively (and says so). A student
    without a tokenizer writes no text to compare: False."""
    if tok is None:
        return False
    return tok.decode(tok("Ab", add_special_tokens=False)["input_ids"]).strip() == "ab"


def bleu_inputs(
    hyps: Sequence[str], refs: Sequence[str], lowercase: bool
) -> tuple[list[str], list[str]]:
    """What rationale BLEU compares: whitespace runs collapsed, and both sides lowercased for
    an uncased student (which cannot write capitals)."""

    def norm(text: str) -> str:
        text = " ".join(str(text or "").split())
        return text.lower() if lowercase else text

    return [norm(h) for h in hyps], [norm(r) for r in refs]


def rationale_bleu(hyps: Sequence[str], refs: Sequence[str], lowercase: bool) -> float:
    """THE rationale BLEU of this project, at dev time (checkpoint selection) and at test time
    alike: sacrebleu corpus BLEU (13a tokeniser, smoothing `none`, 0-100) of `bleu_inputs`."""
    h, r = bleu_inputs(hyps, refs, lowercase)
    return bleu_from_stats(bleu_sentence_stats(h, r)) if h else 0.0


def bleu_from_stats(stats: Sequence[Sequence[float]]) -> float:
    """Corpus BLEU (0-100, 13a tokeniser, smoothing `none`) from per-sentence stats. Note:
    sacrebleu's own `corpus_bleu` defaults to `exp` smoothing; this does not smooth."""

    if not len(stats):
        return 0.0
    return bleu_from_totals([sum(col) for col in zip(*stats, strict=True)])


def bleu_from_totals(total: Sequence[float]) -> float:
    """Corpus BLEU from the column sums of `bleu_sentence_stats` (what a bootstrap resamples)."""
    from sacrebleu.metrics import BLEU

    total = [int(x) for x in total]
    score = BLEU.compute_bleu(
        correct=total[2:6],
        total=total[6:10],
        sys_len=total[0],
        ref_len=total[1],
        smooth_method="none",
    )
    return float(score.score)


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """sacrebleu's `corpus_bleu` as is (13a, `exp` smoothing, case-sensitive, 0-100). Not
    what rationales are scored with: that is `rationale_bleu`."""
    import sacrebleu

    if not hyps:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score)


def sentence_bleu_nltk_mean(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Paper A's variant (0-1): NLTK-style `sentence_bleu` on whitespace tokens, uniform
    weights up to 4-grams, no smoothing, averaged over examples.

    Re-implemented here (clipped n-gram precisions, brevity penalty against the reference) so
    that scoring does not import all of NLTK; a sentence without a matching n-gram of some
    order scores 0 (NLTK returns ~1e-231 there). It is lower and noisier than corpus BLEU
    and is reported only to compare with the paper."""
    if not hyps:
        return 0.0
    return sum(_sentence_bleu(h.split(), r.split()) for h, r in zip(hyps, refs, strict=True)) / len(
        hyps
    )


def _sentence_bleu(hyp: list[str], ref: list[str], max_n: int = 4) -> float:
    import math
    from collections import Counter

    if not hyp:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        h = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
        r = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
        matches = sum(min(c, r[g]) for g, c in h.items())
        if matches == 0:
            return 0.0
        log_p += math.log(matches / max(1, sum(h.values()))) / max_n
    bp = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return bp * math.exp(log_p)


ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge_per_example(preds: Sequence[str], refs: Sequence[str]) -> dict[str, list[float]]:
    """ROUGE F-measures (0-100) per example, with Porter stemming (`rouge-score`).

    rougeL is the per-summary LCS (Paper B's "RL"); rougeLsum splits sentences on newlines
    (the T5 paper's "RL"), so sentences are put on their own lines first."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    out: dict[str, list[float]] = {k: [] for k in ROUGE_KEYS}
    for p, r in zip(preds, refs, strict=True):
        scores = scorer.score(_sentence_lines(r), _sentence_lines(p))
        for k in ROUGE_KEYS:
            out[k].append(100.0 * scores[k].fmeasure)
    return out


def _sentence_lines(text: str) -> str:
    """One sentence per line for rougeLsum (a simple split on sentence-final punctuation)."""
    import re

    if "\n" in text.strip():
        return text.strip()
    return "\n".join(s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s)


def rouge(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measures (0-100)."""
    per = rouge_per_example(preds, refs)
    return {k: (sum(v) / len(v) if v else 0.0) for k, v in per.items()}


def mean_length_words(texts: Sequence[str]) -> float:
    """Average output length in whitespace-separated words."""
    return sum(len(t.split()) for t in texts) / len(texts) if texts else 0.0


def mean_length_tokens(texts: Sequence[str], tokenizer: Any) -> float:
    """Average output length in the student's tokenizer tokens (no special tokens); Paper B's
    "gen len" counts tokens of its own tokenizer, so compare it only in kind."""
    if not texts:
        return 0.0
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return sum(len(x) for x in ids) / len(ids)
