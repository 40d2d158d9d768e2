"""BART as the hub ships it: a BART-like tokenizer (`<s> ... </s>`) and bart-base's generation
config (`forced_bos_token_id: 0`, `num_beams: 4`, `no_repeat_ngram_size: 3`). Targets carry
the `<s>` the tokenizer puts there, so generation (which forces it) yields the label; the
decoding settings a student uses are protege's, explicit and recorded."""

from __future__ import annotations

import json

import pytest

from protege.config import from_dict
from protege.formats import TaskConfig, make_examples
from protege.train import TrainConfig, run_train
from protege.train.data import encode

WORDS = {"alpha": "entailment", "beta": "neutral", "gamma": "contradiction"}


@pytest.fixture(scope="module")
def bart_dir(tmp_path_factory):
    """The replica's facebook/bart-base, loaded from its folder (no server needed)."""
    from protege.testing.hub.models import build_bart

    return build_bart(tmp_path_factory.mktemp("hubroot"))


def trivial_rows(n: int, offset: int = 0) -> list[dict]:
    """The hypothesis word decides the label: learnable in a few dozen steps."""
    words = list(WORDS)
    rows = []
    for i in range(offset, offset + n):
        w = words[i % 3]
        rows.append({"uid": str(i), "premise": f"Row {i} says {w}.", "hypothesis": w})
        rows[-1]["label"] = WORDS[w]
    return rows


def test_bart_targets_are_wrapped_as_the_tokenizer_wraps_them(bart_dir):
    from protege.students.seq2seq.build import load_student
    from protege.targets import decoder_start_id

    model, tok = load_student(bart_dir)
    start = decoder_start_id(model)
    assert start == 2 and model.generation_config.forced_bos_token_id == 0
    task = TaskConfig(format="label+rationale")
    row = {**trivial_rows(1)[0], "rationale": "the word says so"}
    (enc,) = encode(make_examples(task, row), tok, 64, 64, start)
    label = tok("Entailment", add_special_tokens=False).input_ids
    rationale = tok(" Explanation: the word says so", add_special_tokens=False).input_ids
    assert (
        enc.target_ids
        == tok(text_target="Entailment" + " Explanation: the word says so")["input_ids"]
        == [0, *label, *rationale, 2]
    )
    # <s> is forced by generation: outside the loss; </s> ends the rationale span.
    assert enc.tags == [0] + [1] * len(label) + [2] * (len(rationale) + 1)


def test_tiny_bart_generates_the_label_with_bart_base_generation_config(bart_dir, tmp_path):
    from protege.serve.predictor import Predictor

    for split, rows in (("train", trivial_rows(48)), ("dev", trivial_rows(9, 100))):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = from_dict(
        TrainConfig,
        dict(
            model=str(bart_dir),
            task={"format": "label", "input_template": "{hypothesis}"},
            train_data=str(tmp_path / "train.jsonl"),
            dev_data=str(tmp_path / "dev.jsonl"),
            output_dir=str(tmp_path / "out"),
            lr=1e-2,
            epochs=12,
            batch_size=4,
            warmup_steps=2,
            evals_per_epoch=1,
            generation={"max_new_tokens": 8},
            allow_dev_overlap=True,  # 3 inputs by design: dev repeats training inputs
        ),
    )
    out = run_train(cfg)
    (result,) = json.loads((out / "results.json").read_text())
    assert result["decoding"]["num_beams"] == 1
    assert result["decoding"]["no_repeat_ngram_size"] == 0  # not bart-base's silent 3
    assert result["best"]["accuracy"]["eval_accuracy"] == 1.0  # generated labels, on dev
    model_dir = out / result["best"]["accuracy"]["path"]
    saved = json.loads((model_dir / "generation_config.json").read_text())
    assert saved["num_beams"] == 1 and saved["no_repeat_ngram_size"] == 0
    assert saved["forced_bos_token_id"] == 0
    p = Predictor.load(model_dir)
    assert p.candidates.prefix == [0] and p.label_budget() == p.candidates.max_len
    rows = trivial_rows(9, 200)
    generated = p.predict(rows, fast=False)
    scored = p.predict(rows, fast=True)
    gold = [r["label"] for r in rows]
    assert [g["label"] for g in generated] == gold
    assert [s["label"] for s in scored] == gold
