"""predict/serve/export for the causal and classifier kinds: label scoring agrees with greedy
generation, a row's answer never depends on its batch, classifiers give softmax `scores`,
exports (CTranslate2 for Llama, ONNX int8 for classifiers) agree with PyTorch."""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from click.testing import CliRunner
from serve_util import Server, nli_rows

from protege.cli import main
from protege.errors import ProtegeError
from protege.evaluate.agreement import match_rate
from protege.formats import TaskConfig, make_examples, save_task
from protege.serve.predictor import Predictor
from protege.students import export_student, load_student
from protege.train.loss import split_loss


def fit(name: str, task: TaskConfig, out, steps: int, lr: float, n_rows: int = 32, tgt: int = 8):
    """A few full-batch steps through the student interface, saved as a protege model dir."""
    torch.manual_seed(0)
    student = load_student(name, task)
    examples = [e for r in nli_rows("train", n_rows) for e in make_examples(task, r)]
    batch = student.collate(student.encode(examples, 96, tgt))  # the label, a rationale's start
    opt = torch.optim.AdamW(student.model.parameters(), lr=lr)
    student.model.train()
    for _ in range(steps):
        split_loss(*student.logits(student.model, batch), None).total.backward()
        opt.step()
        opt.zero_grad()
    student.model.eval()
    student.save(student.model, out)
    save_task(task, out)
    return out


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("causal") / "m"
    return fit("protege:tiny-llama", TaskConfig(format="label+rationale"), out, 60, 1e-2, 24)


def bos_tiny_llama(out):
    """protege:tiny-llama with a tokenizer that puts a BOS before every text, as Llama-3's,
    Gemma's and Mistral's do (`<|begin_of_text|>`), and a chat template that starts with it."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from protege.students.builtins import BUILTINS

    base = BUILTINS["protege:tiny-llama"][1]()
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>"})
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    model.resize_token_embeddings(len(tok))
    model.config.bos_token_id = model.generation_config.bos_token_id = bos
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def bos_causal_dir(tmp_path_factory):
    base = bos_tiny_llama(tmp_path_factory.mktemp("bos") / "base")
    out = tmp_path_factory.mktemp("bos") / "m"
    return fit(str(base), TaskConfig(format="label+rationale"), out, 60, 1e-2, 24)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "m"
    return fit("protege:minilm-cls", TaskConfig(format="label"), out, 8, 1e-4, n_rows=24)


def test_causal_scoring_picks_greedy_label_wherever_greedy_is_valid(causal_dir):
    p = Predictor.load(causal_dir)
    rows = nli_rows("dev") + nli_rows("train", 24)
    generated = p.predict(rows, fast=False)
    scored = p.predict(rows, fast=True)
    valid = [(g["label"], s["label"]) for g, s in zip(generated, scored, strict=True) if g["label"]]
    assert len(valid) >= len(rows) // 2
    assert len({g for g, _ in valid}) >= 2  # more than one label: the check can fail
    assert all(g == s for g, s in valid), [v for v in valid if v[0] != v[1]]
    assert all(s["label"] in p.task.labels for s in scored)


def test_causal_predictions_never_depend_on_the_batch(causal_dir):
    p = Predictor.load(causal_dir, batch_size=8)
    rows = nli_rows("dev", 16)
    batched = p.predict(rows)
    assert batched == [p.predict([r])[0] for r in rows]
    assert p.predict(rows, fast=False) == [p.predict([r], fast=False)[0] for r in rows]


def test_classifier_predictions_carry_softmax_scores(classifier_dir):
    p = Predictor.load(classifier_dir)
    preds = p.predict(nli_rows("dev", 6))
    for pred in preds:
        assert set(pred["scores"]) == set(p.task.labels)
        assert sum(pred["scores"].values()) == pytest.approx(1, abs=1e-3)
        assert pred["label"] == max(pred["scores"], key=pred["scores"].get)
    generated = p.predict(nli_rows("dev", 6), fast=False)
    assert [g["label"] for g in generated] == [x["label"] for x in preds]
    with pytest.raises(ProtegeError, match="writes no rationale"):  # a classifier writes none
        p.predict(nli_rows("dev", 6), fast=False, with_rationale=True)


def test_classifier_onnx_int8_export_agrees_with_pytorch(classifier_dir, tmp_path):
    out = export_student(classifier_dir, None, tmp_path / "onnx", "int8")
    assert (out / "model.onnx").exists() and (out / "protege_onnx.json").exists()
    rows = nli_rows("dev", 30)
    torch_p, onnx_p = Predictor.load(classifier_dir), Predictor.load(out)
    m = match_rate(torch_p, onnx_p, rows)
    assert m["match_rate"] >= 0.9, m
    a, b = torch_p.predict(rows[:5]), onnx_p.predict(rows[:5])
    for x, y in zip(a, b, strict=True):
        for label in x["scores"]:
            assert x["scores"][label] == pytest.approx(y["scores"][label], abs=0.05)


def test_classifier_onnx_int8_answers_never_depend_on_the_batch(classifier_dir, tmp_path):
    """Shuffled and re-batched (beside a long input that pads its batch), every input gets
    the label and scores it gets alone."""
    import random

    out = export_student(classifier_dir, None, tmp_path / "onnx", "int8")
    p = Predictor.load(out)
    rows = nli_rows("dev", 40) + [{"premise": "a long day. " * 60, "hypothesis": "it ended"}]
    alone = [p.predict([r])[0] for r in rows]
    for batch_size in (3, 16, len(rows)):
        for seed in range(2):
            order = random.Random(seed).sample(range(len(rows)), len(rows))
            batched = Predictor(p.backend, p.task, batch_size=batch_size)
            preds = batched.predict([rows[i] for i in order])
            assert [preds[order.index(i)] for i in range(len(rows))] == alone, batch_size


def test_causal_ct2_export_agrees_with_pytorch(causal_dir, tmp_path):
    out = export_student(causal_dir, "ct2", tmp_path / "ct2", "float32")
    rows = nli_rows("dev", 20)
    a, b = Predictor.load(causal_dir), Predictor.load(out)
    assert match_rate(a, b, rows)["match_rate"] == 1.0
    assert match_rate(a, b, rows, fast=False)["match_rate"] >= 0.9
    lps_t = a.backend.token_logprobs([a.source(rows[0])], a.candidates.ids)[0]
    lps_c = b.backend.token_logprobs([b.source(rows[0])], b.candidates.ids)[0]
    for x, y in zip(lps_t, lps_c, strict=True):
        assert x == pytest.approx(y, abs=1e-3)


def test_causal_student_whose_tokenizer_adds_a_bos_scores_labels(bos_causal_dir, tmp_path):
    """Llama-3-style tokenizers put a BOS before every text, `text_target` included: the
    completion still has no prefix, and PyTorch, serve and the CTranslate2 export all score."""
    p = Predictor.load(bos_causal_dir)
    bos = p.backend.tok.bos_token_id
    assert p.backend.tok("x").input_ids[0] == bos  # the tokenizer does add it
    assert p.candidates.prefix == [] and all(bos not in c for c in p.candidates.ids)
    rows = nli_rows("dev") + nli_rows("train", 24)
    scored, generated = p.predict(rows), p.predict(rows, fast=False)
    assert all(s["label"] in p.task.labels for s in scored)
    valid = [(g["label"], s["label"]) for g, s in zip(generated, scored, strict=True) if g["label"]]
    assert len(valid) >= len(rows) // 2 and len({g for g, _ in valid}) >= 2
    assert all(g == s for g, s in valid), [v for v in valid if v[0] != v[1]]
    # Each candidate's log-probs are those of one plain forward pass over prompt + candidate.
    prompt = p.backend.prompt_ids(p.source(rows[0]))
    assert prompt[0] == bos and prompt.count(bos) == 1
    lps = p.backend.token_logprobs([p.source(rows[0])], p.candidates.ids)[0]
    with torch.inference_mode():
        for c, got in zip(p.candidates.ids, lps, strict=True):
            logits = p.backend.model(torch.tensor([prompt + c])).logits[0].log_softmax(-1)
            want = [logits[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(c)]
            assert got == pytest.approx(want, abs=1e-4)
    with Server(p) as s:
        r = httpx.post(s.url + "/v1/predict", json={"inputs": rows[:8]}, timeout=60)
    assert r.status_code == 200 and r.json()["predictions"] == scored[:8]
    out = export_student(bos_causal_dir, "ct2", tmp_path / "ct2", "float32")
    c = Predictor.load(out)
    assert c.candidates.prefix == []
    assert [x["label"] for x in c.predict(rows)] == [x["label"] for x in scored]
    lps_c = c.backend.token_logprobs([c.source(rows[0])], c.candidates.ids)[0]
    for x, y in zip(lps, lps_c, strict=True):
        assert x == pytest.approx(y, abs=1e-3)


def test_cli_export_picks_the_kinds_format_and_refuses_others(classifier_dir, tmp_path):
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in nli_rows("dev", 10)))
    out = tmp_path / "exp"
    r = CliRunner().invoke(
        main, ["export", str(classifier_dir), "-o", str(out), "--check", str(data)]
    )
    assert r.exit_code == 0, r.output
    assert "same prediction as PyTorch on" in r.output and (out / "model.onnx").exists()
    r = CliRunner().invoke(main, ["export", str(classifier_dir), "--format", "ct2"])
    assert r.exit_code == 1 and "a classifier student exports to onnx, not 'ct2'" in r.output


def test_expected_calibration_error_by_hand():
    from protege.evaluate.metrics import expected_calibration_error

    # Bins (10): 0.95, 0.95 -> bin 9, acc 0.5, conf 0.95; 0.35 -> bin 3, acc 1, conf 0.35.
    ece = expected_calibration_error([0.95, 0.95, 0.35], [1, 0, 1])
    assert ece == pytest.approx(2 / 3 * 0.45 + 1 / 3 * 0.65)
    assert expected_calibration_error([1.0, 0.5], [1, 0], n_bins=2) == pytest.approx(0.25)


def test_classifier_eval_reports_calibration_beside_accuracy(classifier_dir):
    from protege.evaluate import evaluate_model

    result = evaluate_model(classifier_dir, nli_rows("test", 20))
    m = result["metrics"]
    assert 0 <= m["ece"] <= 1 and m["coverage"] == 1.0  # a classifier never malformed
    assert all(0 < r["confidence"] <= 1 for r in result["per_example"])
