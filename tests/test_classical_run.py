"""The classical kind in every command: `protege run` of a recipe with two classical variants
(logistic regression, LightGBM) and the teacher's zero-shot row, then `predict`, `serve`
(/v1/predict, and /v1/chat/completions through the official SDK with the cascade's
confidence header) and `export --check`, on the shipped NLI sample."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import yaml
from click.testing import CliRunner
from serve_util import Server, nli_rows

from protege.cli import main
from protege.data.io import read_records, write_jsonl
from protege.formats import TaskConfig
from protege.generate.recipes import Template, get_recipe
from protege.serve.cascade import Cascade
from protege.serve.predictor import Predictor
from protege.serve.relay import TeacherRelay
from protege.teacher.config import TeacherConfig
from protege.testing.fake_openai import FakeOpenAI

LABELS = TaskConfig().labels


def prompt(row: dict) -> list[dict[str, str]]:
    """The label recipe's messages: what the application sent the teacher."""
    text = TaskConfig().input_template.format(**row)
    return Template(get_recipe("label").path).messages(
        {"input": text, "labels": LABELS, "with_rationale": False}
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("classical-run")
    for split, n in (("train", 120), ("dev", 40), ("test", 40)):
        write_jsonl(tmp / f"{split}.jsonl", nli_rows(split, n))
    with pytest.MonkeyPatch.context() as mp, FakeOpenAI(reply=lambda m: "neutral") as teacher:
        mp.setenv("OPENAI_API_KEY", "test-key")
        recipe = {
            "name": "classical",
            "run_dir": str(tmp / "run"),
            "task": {"format": "label"},
            "data": {k: str(tmp / f"{k}.jsonl") for k in ("train", "dev", "test")},
            "teacher": {"kind": "openai", "model": "fake-model", "base_url": teacher.base_url},
            "teacher_zeroshot": {"enabled": True, "config": {"teacher": {"max_tokens": 5}}},
            "variants": [
                {"name": "logreg", "train": {"model": "protege:tfidf-logreg"}},
                {"name": "trees", "train": {"model": "protege:tfidf-lgbm"}},
            ],
            "train": {"grid": {"seeds": [1]}},
        }
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        res = CliRunner().invoke(main, ["run", str(tmp / "recipe.yaml")])
        assert res.exit_code == 0, res.output
    return tmp


def best(run, variant: str):
    return next((run / "run" / variant / "train").glob("*/best-loss"))


def test_the_run_trains_evaluates_calibrates_and_reports_classical_students(run):
    for variant in ("logreg", "trees"):
        history = (best(run, variant).parent / "history.jsonl").read_text().splitlines()
        assert len(history) >= 3  # one line per grid candidate, each scored on dev
        summary = json.loads((run / "run" / variant / "eval" / "summary.json").read_text())
        (model,) = [m for m in summary["models"] if m["checkpoint"] == "best-loss"]
        test = model["test"]
        assert test["served_by"] == "label scoring" and test["coverage"] == 1.0
        assert 0 <= test["ece"] <= 1 and test["accuracy"] > 0.6  # chance is 1/3
        assert 0 < model["speed"]["p50_single_ms"] < 50
        cascade = json.loads((best(run, variant).parent / "best-accuracy" / "protege_cascade.json")
                             .read_text())  # fmt: skip
        assert 0 < cascade["threshold"] <= 1  # the cascade's threshold, chosen on dev
    md = (run / "run" / "report" / "report.md").read_text()
    assert "| logreg | protege:tfidf-logreg | classical |" in md
    assert "| trees | protege:tfidf-lgbm | classical |" in md
    assert "**Which student to pick**, from the measurements above: `" in md
    rows = [line for line in md.splitlines() if line.startswith(("| logreg", "| trees"))]
    assert rows and all("| $0.0000 |" not in line for line in rows)  # digits, not zero
    cfg = json.loads((best(run, "trees") / "config.json").read_text())
    assert f"| classical | {cfg['num_parameters'] / 1e3:.1f}k |" in md  # trees: from config


def test_predict_writes_labels_and_scores(run, tmp_path):
    rows = nli_rows("test", 6)
    write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(main, ["predict", str(best(run, "logreg")), str(tmp_path / "in.jsonl"),
                                    "-o", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    preds = [r["prediction"] for r in read_records(out)]
    direct = Predictor.load(best(run, "logreg")).predict(rows)
    assert preds == direct and all(set(p["scores"]) == set(LABELS) for p in preds)
    assert sum(p["label"] == r["label"] for p, r in zip(preds, rows, strict=True)) >= 4
    generated = Predictor.load(best(run, "logreg")).predict(rows, fast=False)
    assert [g["label"] for g in generated] == [p["label"] for p in preds]


def test_serve_answers_predict_and_chat_with_its_confidence(run):
    p = Predictor.load(best(run, "logreg"))
    rows = nli_rows("dev", 6)
    gold = {prompt(r)[-1]["content"]: r["label"] for r in rows}
    teacher = FakeOpenAI(reply=lambda m: gold.get(m[-1]["content"], "neutral")).start()
    try:
        relay = TeacherRelay(
            TeacherConfig(kind="openai", model="gpt-4.1-mini", base_url=teacher.base_url),
            teacher.base_url, None, "cascade",
        )  # fmt: skip
        expected = p.predict(rows)
        with Server(p, cascade=Cascade(relay, threshold=0.0)) as served:
            r = httpx.post(served.url + "/v1/predict", json={"inputs": rows}, timeout=30)
            assert r.status_code == 200 and r.json()["predictions"] == expected
            app = openai.OpenAI(base_url=served.url + "/v1", api_key="x", max_retries=0)
            raw = app.chat.completions.with_raw_response.create(
                model="gpt-4.1-mini", messages=prompt(rows[0]))  # fmt: skip
            answer = raw.parse()
            assert answer.choices[0].message.content == expected[0]["label"]
            assert raw.headers["x-protege-route"] == "student"
            assert float(raw.headers["x-protege-confidence"]) == pytest.approx(
                expected[0]["score"], abs=1e-4
            )
            source = TaskConfig().input_template.format(**rows[0])
            assert answer.usage.prompt_tokens == len(source.split())  # no tokenizer: words
        with Server(p, cascade=Cascade(relay, threshold=1.01)) as served:  # all escalate
            app = openai.OpenAI(base_url=served.url + "/v1", api_key="x", max_retries=0)
            raw = app.chat.completions.with_raw_response.create(
                model="gpt-4.1-mini", messages=prompt(rows[1]))  # fmt: skip
            assert raw.headers["x-protege-route"] == "teacher"
            assert raw.parse().choices[0].message.content == rows[1]["label"]
            assert float(raw.headers["x-protege-confidence"]) == pytest.approx(
                expected[1]["score"], abs=1e-4
            )
    finally:
        teacher.stop()


@pytest.mark.parametrize("variant", ["logreg", "trees"])
def test_export_check_compares_the_onnx_graph_with_the_student(run, tmp_path, variant):
    out = tmp_path / "onnx"
    res = CliRunner().invoke(main, ["export", str(best(run, variant)), "-o", str(out),
                                    "--check", str(run / "test.jsonl")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "on 40/40 rows (100.0%)" in res.output
    assert "(float32; int8 asked, nothing in it to quantize)" in res.output  # what was written
    assert (out / "model.onnx").exists() and (out / "protege_onnx_classical.json").exists()
    a, b = Predictor.load(best(run, variant)), Predictor.load(out)
    rows = nli_rows("test", 20) + [{"premise": "ÉCOLE  à\tZürich 🙂", "hypothesis": "x\n\ny"}]
    for x, y in zip(a.predict(rows), b.predict(rows), strict=True):
        assert x["label"] == y["label"]
        for label in LABELS:
            assert x["scores"][label] == pytest.approx(y["scores"][label], abs=2e-4)
