import pytest

from protege.errors import DataError
from protege.formats import TaskConfig, inference_input, make_examples, parse_output

ROW = {
    "uid": "u1",
    "premise": "A cat sat.",
    "hypothesis": "An animal sat.",
    "label": "entailment",
    "rationale": "A cat  is\nan animal.",
    "_line": 3,
}


def task(**kw) -> TaskConfig:
    return TaskConfig(**kw)


def test_label_format_is_paper_a_baseline():
    [ex] = make_examples(task(format="label"), ROW)
    assert ex.source == "Premise: A cat sat. Hypothesis: An animal sat."
    assert ex.segments == [("label", "Entailment")]
    assert ex.uid == "u1"


def test_label_then_rationale_with_whitespace_normalised():
    [ex] = make_examples(task(format="label+rationale"), ROW)
    assert ex.target == "Entailment Explanation: A cat is an animal."
    assert [k for k, _ in ex.segments] == ["label", "connector", "rationale"]


def test_rationale_then_label_and_smanli_name():
    [ex] = make_examples(task(format="rationale+label", rationale_name="Rationale"), ROW)
    assert ex.target == "Rationale: A cat is an animal. Answer: Entailment"


def test_multitask_gives_two_tasks_and_predict_at_inference():
    t = task(format="multitask")
    pred, expl = make_examples(t, ROW)
    assert pred.source.startswith("predict: ") and pred.segments == [("label", "Entailment")]
    assert expl.source.startswith("explain: ") and expl.segments == [
        ("rationale", "A cat is an animal.")
    ]
    assert inference_input(t, ROW).startswith("predict: Premise:")


def test_missing_rationale_errors_or_skips():
    row = {**ROW, "rationale": "  "}
    with pytest.raises(DataError, match=r"data:3: field 'rationale'"):
        make_examples(task(format="label+rationale"), row)
    assert make_examples(task(format="label+rationale", missing_rationale="skip"), row) == []


def test_unknown_label_and_missing_input_field_name_the_line():
    with pytest.raises(DataError, match=r"train.jsonl:3: field 'label': unknown label 'maybe'"):
        make_examples(task(), {**ROW, "label": "maybe"}, "train.jsonl")
    with pytest.raises(DataError, match=r"field 'hypothesis'"):
        make_examples(task(), {"premise": "p", "label": "neutral"})


@pytest.mark.parametrize(
    "fmt,text,label,rationale",
    [
        ("label", "Neutral", "neutral", None),
        ("label", "neutral.", "neutral", None),
        ("label", "Neutralish", None, None),
        ("label+rationale", "Contradiction Explanation: no.", "contradiction", "no."),
        ("label+rationale", "Explanation: no.", None, "no."),
        ("label+rationale", "", None, None),
        (
            "rationale+label",
            "Explanation: yes it does. Answer: Entailment",
            "entailment",
            "yes it does.",
        ),
        ("rationale+label", "Explanation: yes it does.", None, "yes it does."),
        ("multitask", "Contradiction", "contradiction", None),
        # uncased tokenizers (the MiniLM student) decode connectors lower case, spaced
        (
            "label+rationale",
            "neutral explanation : it does not say.",
            "neutral",
            "it does not say.",
        ),
        ("rationale+label", "explanation : yes. answer : entailment", "entailment", "yes."),
    ],
)
def test_parse_output_never_guesses(fmt, text, label, rationale):
    parsed = parse_output(task(format=fmt), text)
    assert parsed.label == label
    assert parsed.rationale == rationale


def test_summarization_task():
    t = task(type="summarization", input_template="{article}", target_field="summary")
    [ex] = make_examples(t, {"article": "Long text.", "summary": " Short. "})
    assert (ex.source, ex.target) == ("Long text.", "Short.")
    assert parse_output(t, " Short. ").text == "Short."
    with pytest.raises(ValueError):
        TaskConfig(type="summarization", format="multitask")


@pytest.mark.parametrize("fmt", ["label", "label+rationale", "rationale+label", "multitask"])
def test_punctuated_labels_survive_an_uncased_wordpiece_round_trip(fmt):
    """`not_entailment` decodes as `not _ entailment` from the MiniLM tokenizer: still a label."""
    from protege.students.seq2seq.build import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model("protege:tiny-t5"))
    t = task(format=fmt, labels=["entailment", "not_entailment"])
    row = {**ROW, "label": "not_entailment"}
    for ex in make_examples(t, row)[:1]:  # multitask: the predict: row
        ids = tok(ex.target, add_special_tokens=False)["input_ids"]
        text = tok.decode(ids, skip_special_tokens=True)
        assert "not _ entailment" in text
        assert parse_output(t, text).label == "not_entailment"
