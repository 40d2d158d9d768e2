"""The loop, end to end, with the official `openai` SDK as the application and the OpenAI API
replica as the teacher: proxy -> traffic export -> train a tiny student -> calibrate -> serve
with the cascade -> the escalated requests are stored -> a second export has more rows. And the
cascade's edges: a teacher that is gone, the shadow sample, the spending cap."""

from __future__ import annotations

import json
import time

import openai
import pytest
from click.testing import CliRunner
from serve_util import Server, nli_rows

from protege.cli import main
from protege.formats import TaskConfig
from protege.generate.recipes import Template, get_recipe
from protege.serve.cascade import Cascade
from protege.serve.predictor import Predictor
from protege.serve.proxy import create_proxy_app
from protege.serve.relay import TeacherRelay
from protege.teacher.config import TeacherConfig
from protege.testing.fake_openai import FakeOpenAI

LABELS = TaskConfig().labels
MODEL = "gpt-4.1-mini"


def prompt(row: dict) -> list[dict[str, str]]:
    text = TaskConfig().input_template.format(**row)
    return Template(get_recipe("label").path).messages(
        {"input": text, "labels": LABELS, "with_rationale": False}
    )


def gold_teacher(rows: list[dict]) -> FakeOpenAI:
    """The teacher replica, answering each label prompt with the row's gold label."""
    gold = {prompt(r)[-1]["content"]: r["label"] for r in rows}
    return FakeOpenAI(reply=lambda messages: gold.get(messages[-1]["content"], "neutral")).start()


def relay(teacher: FakeOpenAI, source: str, **kw) -> TeacherRelay:
    cfg = TeacherConfig(kind="openai", model=MODEL, base_url=teacher.base_url, **kw)
    return TeacherRelay(cfg, teacher.base_url, None, source)


def ask(url: str, rows: list[dict]) -> list[tuple[str, str]]:
    """The application: one request per row; (content, route) of each answer."""
    app = openai.OpenAI(base_url=url + "/v1", api_key="sk-app-key", max_retries=0)
    out = []
    for row in rows:
        raw = app.chat.completions.with_raw_response.create(
            model=MODEL, messages=prompt(row), temperature=0.0, max_completion_tokens=16)  # fmt: skip
        out.append((raw.parse().choices[0].message.content, raw.headers.get("x-protege-route")))
    return out


def export(path) -> list[dict]:
    res = CliRunner().invoke(main, ["traffic", "export", "--template", "label", "-o", str(path)])
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in open(path)]


@pytest.mark.slow
def test_proxy_export_train_calibrate_cascade_and_export_again(tmp_path, teacher_db):
    train_rows, new_rows = nli_rows("train", 48), nli_rows("dev", 24)
    teacher = gold_teacher(train_rows + new_rows)
    try:
        # 1. day one: the application talks to the teacher through the proxy
        with Server(None, app_factory=lambda cfg: create_proxy_app(relay(teacher, "proxy"), cfg)
                    ) as proxy:  # fmt: skip
            answers = ask(proxy.url, train_rows)
            assert [a for a, _ in answers] == [r["label"] for r in train_rows]
            sent = len(teacher.log)
            again = ask(proxy.url, train_rows[:5])  # identical requests: from the store
            assert {route for _, route in again} == {"cache"}
            assert len(teacher.log) == sent
        assert "sk-app-key" not in teacher_db.read_bytes().decode("latin-1")

        # 2. the traffic becomes task rows; 3. a tiny student learns them
        rows = export(tmp_path / "traffic.jsonl")
        assert len(rows) == 48 and {r["label"] for r in rows} <= set(LABELS)
        assert rows[0]["premise"] == train_rows[0]["premise"]
        (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:36]))
        (tmp_path / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[36:]))
        config = {
            "model": "protege:tiny-t5", "task": {"format": "label"}, "epochs": 2,
            "train_data": str(tmp_path / "train.jsonl"), "dev_data": str(tmp_path / "held.jsonl"),
            "output_dir": str(tmp_path / "student"), "lr": 1e-3, "batch_size": 12,
            "warmup_steps": 1, "max_target_len": 8, "generation": {"max_new_tokens": 4},
        }  # fmt: skip
        (tmp_path / "train.yaml").write_text(json.dumps(config))
        res = CliRunner().invoke(main, ["train", str(tmp_path / "train.yaml")])
        assert res.exit_code == 0, res.output
        model_dir = next((tmp_path / "student").glob("*/best-accuracy"))

        # 4. calibrate on held-out traffic rows
        res = CliRunner().invoke(
            main,
            [
                "calibrate",
                str(model_dir),
                "--data",
                str(tmp_path / "held.jsonl"),
                "--target-agreement",
                "0.9",
            ],
        )
        assert res.exit_code == 0, res.output
        assert (model_dir / "protege_cascade.json").exists()
        assert (model_dir / "cascade_curve.png").stat().st_size > 1000
        from protege.serve.calibrate import threshold_for

        threshold = threshold_for(model_dir, 0.9).threshold

        # 5. the cascade: one line changed in the application (its base_url)
        cascade = Cascade(relay(teacher, "cascade"), threshold)
        with Server(Predictor.load(model_dir), cascade=cascade) as served:
            answers = ask(served.url, new_rows)
        routes = [route for _, route in answers]
        assert set(routes) <= {"student", "teacher"} and "teacher" in routes
        for (content, route), row in zip(answers, new_rows, strict=True):
            assert content in LABELS
            if route == "teacher":  # the teacher's answer, unchanged
                assert content == row["label"]
        escalated = routes.count("teacher")

        # 6. the escalations are stored: the next export has them too
        more = export(tmp_path / "traffic2.jsonl")
        assert len(more) == 48 + escalated
    finally:
        teacher.stop()


@pytest.fixture(scope="module")
def student(request):
    from serve_util import trained_model

    return trained_model(request.config, "label")


def test_when_the_teacher_is_gone_the_student_answers_and_says_so(student, tmp_path):
    teacher = gold_teacher(nli_rows("dev", 4))
    cascade = Cascade(relay(teacher, "cascade"), threshold=1.01)  # every request escalates
    teacher.stop()  # an outage: the port refuses connections
    with Server(Predictor.load(student), cascade=cascade) as served:
        app = openai.OpenAI(base_url=served.url + "/v1", api_key="x", max_retries=0)
        raw = app.chat.completions.with_raw_response.create(
            model=MODEL, messages=prompt(nli_rows("dev", 1)[0]))  # fmt: skip
        assert raw.parse().choices[0].message.content in LABELS
        assert raw.headers["x-protege-route"] == "student_teacher_unavailable"
        assert raw.headers["x-protege-teacher"].startswith("unavailable: cannot connect")


def test_the_shadow_sample_measures_agreement_without_delaying_answers(student):
    rows = nli_rows("dev", 12)
    teacher = gold_teacher(rows)
    try:
        # a slow teacher: every answer comes back while its shadow request is still out
        teacher.latency = 60.0
        cascade = Cascade(relay(teacher, "cascade"), threshold=0.0, shadow=1.0)
        with Server(Predictor.load(student), cascade=cascade) as served:
            answers = ask(served.url, rows[:4])
            assert {route for _, route in answers} == {"student"}
            deadline = time.time() + 30
            while len(teacher.log) < 4:  # the shadow requests reached the teacher ...
                assert time.time() < deadline, "shadow requests were never sent"
                time.sleep(0.05)
            assert not served.metrics.sample("protege_shadow_compared_total")  # ... unanswered
        # a quick teacher: live agreement in /metrics
        teacher.latency = 0.0
        cascade = Cascade(relay(teacher, "cascade"), threshold=0.0, shadow=1.0)
        with Server(Predictor.load(student), cascade=cascade) as served:
            answers = ask(served.url, rows)
            deadline = time.time() + 60
            while (served.metrics.sample("protege_shadow_compared_total") or 0) < len(rows):
                assert time.time() < deadline, "shadow requests never finished"
                time.sleep(0.05)
            agreed = sum(a == r["label"] for (a, _), r in zip(answers, rows, strict=True))
            assert served.metrics.sample("protege_shadow_agreed_total") == agreed
            assert served.metrics.sample("protege_shadow_agreement") == pytest.approx(
                agreed / len(rows))  # fmt: skip
            assert served.metrics.sample("protege_teacher_spend_usd_total") > 0
            assert served.metrics.sample("protege_estimated_saving_usd_total") > 0
    finally:
        teacher.stop()


def test_the_spending_cap_stops_escalations_and_the_student_answers(student):
    from protege.teacher.spend import set_cap
    from protege.teacher.store import TeacherStore

    with TeacherStore() as store:
        set_cap(store, 0.0)
    rows = nli_rows("dev", 3)
    teacher = gold_teacher(rows)
    try:
        cascade = Cascade(relay(teacher, "cascade"), threshold=1.01)
        with Server(Predictor.load(student), cascade=cascade) as served:
            app = openai.OpenAI(base_url=served.url + "/v1", api_key="x", max_retries=0)
            raw = app.chat.completions.with_raw_response.create(
                model=MODEL, messages=prompt(rows[0])
            )
            assert raw.headers["x-protege-route"] == "student_teacher_unavailable"
            assert "spending cap" in raw.headers["x-protege-teacher"]
        assert len(teacher.log) == 0
    finally:
        teacher.stop()
