"""Metrics against hand-computed numbers."""

from __future__ import annotations

import pytest

from protege.evaluate import metrics as M

LABELS = ["entailment", "neutral", "contradiction"]


def test_classification_counts_malformed_wrong():
    golds = ["entailment", "entailment", "neutral", "contradiction", "contradiction"]
    preds = ["entailment", None, "entailment", "contradiction", None]
    m = M.classification_metrics(golds, preds, LABELS)
    assert m["accuracy"] == pytest.approx(2 / 5)  # not 2/3: malformed rows stay in
    assert m["coverage"] == pytest.approx(3 / 5)
    assert m["correct"] == [1, 0, 0, 1, 0]
    ent = m["per_class"]["entailment"]
    # entailment: predicted twice (1 right), gold twice -> P 1/2, R 1/2, F1 1/2
    assert (ent["precision"], ent["recall"], ent["f1"], ent["support"]) == (0.5, 0.5, 0.5, 2)
    con = m["per_class"]["contradiction"]
    # contradiction: predicted once (right), gold twice -> P 1, R 1/2, F1 2/3
    assert con["precision"] == 1.0 and con["recall"] == 0.5
    assert con["f1"] == pytest.approx(2 / 3)
    assert m["per_class"]["neutral"]["f1"] == 0.0
    assert m["macro_f1"] == pytest.approx((0.5 + 0 + 2 / 3) / 3)
    counts = m["confusion"]["counts"]
    assert counts["entailment"] == {
        "entailment": 1,
        "neutral": 0,
        "contradiction": 0,
        M.MALFORMED: 1,
    }
    assert counts["neutral"]["entailment"] == 1
    assert counts["contradiction"][M.MALFORMED] == 1


def test_classification_rejects_length_mismatch():
    with pytest.raises(ValueError):
        M.classification_metrics(["neutral"], [], LABELS)


def test_corpus_bleu_sanity_and_sufficient_statistics():
    refs = ["the cat sat on the mat", "a dog barked at the postman today"]
    assert M.corpus_bleu(refs, refs) == pytest.approx(100.0)
    assert M.corpus_bleu(["xyz qqq", "zzz www"], refs) == 0.0
    hyps = ["the cat sat on a mat", "a dog barked at the mailman today"]
    stats = M.bleu_sentence_stats(hyps, refs)
    # Summed per-sentence statistics reproduce sacrebleu's corpus score exactly.
    assert M.bleu_from_stats(stats) == pytest.approx(M.corpus_bleu(hyps, refs))
    assert 0 < M.corpus_bleu(hyps, refs) < 100


def test_sentence_bleu_nltk_variant_hand_computed():
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (BP = 1), geometric mean.
    one = M.sentence_bleu_nltk_mean(["the cat sat on a mat"], ["the cat sat on the mat"])
    assert one == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    # No 4-gram overlap and no smoothing: that sentence scores 0, pulling the mean down.
    two = M.sentence_bleu_nltk_mean(
        ["the cat sat on a mat", "cat the"], ["the cat sat on the mat", "the cat"]
    )
    assert two == pytest.approx(one / 2)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sentence_bleu_matches_nltk():
    from nltk.translate.bleu_score import sentence_bleu

    pairs = [
        ("the cat sat on the mat today", "the cat sat on a mat"),  # longer than reference
        ("a cat sat on the mat", "the cat is sitting on the mat there"),  # brevity penalty
        ("the the the the the the", "the cat sat on the mat"),  # clipped counts
    ]
    for hyp, ref in pairs:
        expected = sentence_bleu([ref.split()], hyp.split())
        expected = expected if expected > 1e-100 else 0.0  # NLTK's ~1e-231 for "no match"
        assert M.sentence_bleu_nltk_mean([hyp], [ref]) == pytest.approx(expected)


def test_rouge_known_values():
    r = M.rouge(["the cat sat"], ["the cat sat on the mat"])
    assert r["rouge1"] == pytest.approx(100 * 2 / 3)  # P 1, R 1/2
    assert r["rouge2"] == pytest.approx(100 * 2 * 0.4 / 1.4)  # P 1, R 2/5
    assert r["rougeL"] == pytest.approx(100 * 2 / 3)
    # Swapped sentences: the summary-level LCS (Lsum) still matches fully, rougeL does not.
    swapped = M.rouge(["d e f. a b c."], ["a b c. d e f."])
    assert swapped["rougeLsum"] == pytest.approx(100.0)
    assert swapped["rougeL"] == pytest.approx(50.0)


def test_lengths():
    assert M.mean_length_words(["a b c", "d"]) == 2.0
    assert M.mean_length_words([]) == 0.0

    class Tok:
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [list(t) for t in texts]}

    assert M.mean_length_tokens(["ab", "abcd"], Tok()) == 3.0


def test_dev_bleu_is_test_bleu_for_an_uncased_student():
    """Dev (checkpoint selection) and test scored rationales differently: case-sensitive with
    `exp` smoothing vs lowercased without; a perfect uncased student got 67 vs 95."""
    from protege.evaluate.score import score_outputs
    from protege.formats import TaskConfig
    from protege.train.dev_eval import score

    task = TaskConfig(format="label+rationale")
    rationales = [
        "The Premise says Ada lives in Oslo, which is in Norway.",
        "Nothing here is about Bob.",
        "Cats are animals, So An animal sat.",
        "",  # no teacher rationale: not scored by either
    ]
    records = [
        {"premise": "p", "hypothesis": "h", "label": "neutral", "rationale": r} for r in rationales
    ]
    for outs in (rationales, ["ada lives in oslo .", "nothing is about bob", "cats sat", "x"]):
        texts = [f"neutral explanation: {r.lower()}" for r in outs]
        dev = score(task, records, texts, lowercase=True)["eval_bleu"]
        test = score_outputs(task, records, texts, lowercase=True)[0]["bleu"]
        assert dev == pytest.approx(test)
    assert score(
        task, records, [f"Neutral Explanation: {r.lower()}" for r in rationales], lowercase=True
    )["eval_bleu"] == pytest.approx(100.0)
