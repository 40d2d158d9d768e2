"""`protege report` on a fabricated run: contents, empty sections, and the HTML in Chromium."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner
from eval_util import make_run, one_thread, tiny_models

from protege.cli import main
from protege.evaluate import evaluate_run
from protege.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("report"), tiny_models())
    evaluate_run(run)
    return run


def test_report_has_every_section_filled(evaluated_run):
    res = CliRunner().invoke(main, ["report", str(evaluated_run)])
    assert res.exit_code == 0, res.output
    md = (evaluated_run / "report/report.md").read_text()
    for title in (
        "Split hygiene",
        "Table 1",
        "Eval vs test",
        "over training",
        "Rationale BLEU",
        "Cost and speed",
    ):
        assert title in md
    speed = md[md.index("Cost and speed") :]
    assert "| p50 single request (ms) | batched (ms/example) |" in speed
    student = next(line for line in speed.splitlines() if line.startswith("| student "))
    p50 = [c.strip() for c in student.strip("|").split("|")][2]
    assert float(p50) > 0  # measured one input at a time, not read off the batched figure
    # Table 1 row of the rationale config: dev 55.0 / test 41.7 (5 of 12 neutral) / BLEU 100.
    row = next(line for line in md.splitlines() if line.startswith("| ab25-lr0.001-s0"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # dev with a Wilson interval over 120 dev rows (55% -> [46.1, 63.6], 60% -> [51.1, 68.3])
    assert cells[5:9] == [
        "55.0 [46.1, 63.6]",
        "41.7 [16.7, 66.7]",
        "60.0 [51.1, 68.3]",
        "41.7 [16.7, 66.7]",
    ]
    assert cells[9:11] == ["41.7 (100.0)", "100.0"]  # free generation (coverage), BLEU
    base = next(line for line in md.splitlines() if line.startswith("| baseline-lr0.001-s0"))
    assert [c.strip() for c in base.strip("|").split("|")][10] == "–"  # no rationale, no BLEU
    assert "McNemar p=1.000" in row
    assert "teacher gpt-test (zero-shot)" in md and "$0.2000" in md  # 1,000 x $0.0002
    assert "assumed machine price of $0.10/hour" in md
    # Dev picks ab25/best-accuracy (60%): 5/12 right vs the teacher's 8/12 -> -25 points.
    assert (
        "(`ab25-lr0.001-s0/best-accuracy`) minus the teacher, on the same 12 test rows: "
        "-25.0 points accuracy" in md
    )
    assert "| teacher-zeroshot | gpt-test | 12 | 11 | 1 | 1 | 12 | 0 | $0.0022 | 0.80 |" in md
    assert "No answers of this run in the local teacher store" in md  # its store is empty
    # Classification run: the ROUGE section says why it is empty rather than vanishing.
    assert "ROUGE table" not in md  # not applicable to a classification run: left out
    pngs = sorted(p.name for p in (evaluated_run / "report").glob("*.png"))
    assert pngs == [
        "curve_eval_accuracy_label.png",
        "curve_eval_accuracy_label_rationale.png",
        "curve_eval_bleu.png",
        "eval_vs_test.png",
        "latency.png",
    ]
    html = (evaluated_run / "report/report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert len(images) == len(pngs)
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "http" not in html.split("<body>")[1]  # self-contained: nothing fetched


def test_report_on_untrained_run_says_what_is_missing(tmp_path):
    out = build_report(tmp_path)
    md = (out / "report.md").read_text()
    assert md.count("*No data:") >= 6
    assert "No train/results.json" in md and "No eval/summary.json" in md


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (make browser)")
def test_html_images_load_in_headless_chromium(evaluated_run, tmp_path):
    build_report(evaluated_run)
    html = (evaluated_run / "report/report.html").read_text()
    probe = (
        "<script>window.addEventListener('load', () => {"
        "const imgs = [...document.images];"
        "const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;"
        "document.body.insertAdjacentHTML('beforeend',"
        " `<p id='probe'>loaded=${ok} total=${imgs.length}</p>`);});</script>"
    )
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", probe + "</body>"))
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    m = re.search(r"loaded=(\d+) total=(\d+)", dom)
    assert m, dom[-500:]
    assert int(m.group(2)) == 5 and m.group(1) == m.group(2)


def test_seed_aggregates_table_from_files_alone(tmp_path):
    """The report reads files only: a summary with two seeds gets a mean ± std table."""
    from protege.data.io import write_json

    agg = {"mean": 0.42, "std": 0.02, "n": 2}
    cfg = {
        "id": "b-s0",
        "model": "m",
        "format": "label",
        "lr": 0.001,
        "split": None,
        "seed": 0,
        "baseline": True,
        "status": "done",
        "best": {},
    }
    write_json(tmp_path / "train/results.json", [cfg, {**cfg, "id": "b-s1", "seed": 1}])
    write_json(
        tmp_path / "eval/summary.json",
        {
            "task": {"type": "classification", "format": "label"},
            "test": "t.jsonl",
            "n_test": 100,
            "headline": "accuracy",
            "decoding": {"batch_size": 8, "num_beams": 1, "max_new_tokens": 16},
            "hourly_price_usd": 0.1,
            "hygiene": {"ok": True, "pairs": []},
            "models": [],
            "aggregates": [
                {
                    "model": "m",
                    "format": "label",
                    "lr": 0.001,
                    "split": None,
                    "baseline": True,
                    "checkpoint": "best-accuracy",
                    "seeds": [0, 1],
                    "test_accuracy": agg,
                    "dev": agg,
                }
            ],
            "teacher": None,
        },
    )
    md = (build_report(tmp_path) / "report.md").read_text()
    assert "| label | 0.001 | baseline | best-accuracy | 2 | 42.0 ± 2.0 |" in md
