"""CTranslate2 export: round trip, agreement with PyTorch, and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from serve_util import nli_rows, trained_model

from protege.cli import main
from protege.errors import ProtegeError
from protege.evaluate.agreement import match_rate
from protege.formats import TaskConfig, save_task
from protege.serve.predictor import Predictor
from protege.students.seq2seq.ct2 import export_ct2


@pytest.fixture(scope="session")
def tiny_nli(pytestconfig):
    return trained_model(pytestconfig)


def test_float32_export_scores_like_pytorch(tiny_nli, tmp_path):
    out = export_ct2(tiny_nli, tmp_path / "f32", quantization="float32")
    torch_p, ct2_p = Predictor.load(tiny_nli), Predictor.load(out)
    assert type(ct2_p.backend).__name__ == "CT2Backend"
    sources = [torch_p.source(r) for r in nli_rows("dev", 4)]
    ids = torch_p.candidates.ids
    a = torch_p.backend.token_logprobs(sources, ids)
    b = ct2_p.backend.token_logprobs(sources, ids)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            assert u == pytest.approx(v, abs=1e-3)
    firsts = [c[0] for c in ids]
    for u, v in zip(
        torch_p.backend.first_logprobs(sources, firsts),
        ct2_p.backend.first_logprobs(sources, firsts),
        strict=True,
    ):
        assert u == pytest.approx(v, abs=1e-3)
    assert ct2_p.backend.generate(sources, 8) == torch_p.backend.generate(sources, 8)


def test_int8_export_matches_pytorch_predictions(tiny_nli, tmp_path):
    out = export_ct2(tiny_nli, tmp_path / "int8")
    meta = json.loads((out / "protege_ct2.json").read_text())
    assert meta["quantization"] == "int8" and meta["model_type"] == "t5"
    rows = nli_rows("dev", 60)
    m = match_rate(Predictor.load(tiny_nli), Predictor.load(out), rows)
    # d_model 32 leaves int8 little headroom on near-ties (83% measured); the benchmark
    # reports the rate for a T5-small-shaped model.
    assert m["n"] == 60 and m["match_rate"] >= 0.75, m
    g = Predictor.load(out).predict(rows[:4], with_rationale=True)
    assert all(p["label"] in ("entailment", "neutral", "contradiction") for p in g)


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    d = tmp_path / "bert2bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "encoder-decoder"}))
    save_task(TaskConfig(), d)
    with pytest.raises(ProtegeError, match="supports T5 and BART students, not 'encoder-decoder'"):
        export_ct2(d, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_export_reports_match_rate(tiny_nli, tmp_path):
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in nli_rows("dev", 10)))
    out = tmp_path / "exp"
    args = ["export", str(tiny_nli), "--format", "ct2", "--quantization", "int8", "-o", str(out)]
    r = CliRunner().invoke(main, [*args, "--check", str(data)])
    assert r.exit_code == 0, r.output
    assert "same prediction as PyTorch on" in r.output and (out / "model.bin").exists()
    assert f"to {out} (int8)" in r.output
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "already exists" in r.output


@pytest.fixture(scope="module")
def bart_student(tmp_path_factory):
    """The replica's facebook/bart-base (BART-like tokenizer, bart-base's configs) saved as a
    protege student by this transformers, whose BartConfig no longer has `normalize_before`
    (dropped here as transformers 5 drops it from configs it builds)."""
    from protege.students.base import set_decoding
    from protege.students.seq2seq.build import load_student
    from protege.targets import decoder_start_id, target_affixes
    from protege.testing.hub.models import build_bart
    from protege.train.config import GenerationConfig

    root = tmp_path_factory.mktemp("bart")
    model, tok = load_student(build_bart(root))
    set_decoding(
        model, GenerationConfig().settings(), target_affixes(tok, decoder_start_id(model))[0]
    )
    out = root / "student"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config.pop("normalize_before", None)
    (out / "config.json").write_text(json.dumps(config))
    save_task(TaskConfig(format="label"), out)
    return out


def test_bart_export_scores_and_generates_like_pytorch(bart_student, tmp_path):
    out = export_ct2(bart_student, tmp_path / "bart-f32", quantization="float32")
    assert json.loads((out / "protege_ct2.json").read_text())["model_type"] == "bart"
    torch_p, ct2_p = Predictor.load(bart_student), Predictor.load(out)
    assert torch_p.candidates.prefix == ct2_p.candidates.prefix == [0]  # BART's forced <s>
    sources = [torch_p.source(r) for r in nli_rows("dev", 4)]
    ids = torch_p.candidates.ids
    a = torch_p.backend.token_logprobs(sources, ids, [0])
    b = ct2_p.backend.token_logprobs(sources, ids, [0])
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            assert u == pytest.approx(v, abs=1e-3)
    assert [p["label"] for p in torch_p.predict(sources)] == [
        p["label"] for p in ct2_p.predict(sources)
    ]
    assert ct2_p.backend.generate(sources, 6) == torch_p.backend.generate(sources, 6)


def test_tiny_bart_without_normalize_before_exports(tmp_path):
    from protege.students.seq2seq.build import resolve_model

    src = Path(resolve_model("protege:tiny-bart"))
    assert "normalize_before" not in json.loads((src / "config.json").read_text())
    d = tmp_path / "tiny-bart"
    shutil.copytree(src, d)
    save_task(TaskConfig(), d)
    out = export_ct2(d, tmp_path / "tiny-bart-int8")
    p = Predictor.load(out)
    assert all(x["label"] in TaskConfig().labels for x in p.predict(nli_rows("dev", 3)))
