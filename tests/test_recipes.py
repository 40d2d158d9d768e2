"""Every shipped recipe loads and every stage config inside it validates."""

from pathlib import Path

import pytest

from protege.errors import ConfigError
from protege.recipe import load_recipe, split_source, validate_recipe

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def test_recipes_are_shipped():
    names = {p.name for p in RECIPES}
    assert {
        "demo.yaml",
        "anli-emanli.yaml",
        "anli-smanli.yaml",
        "cnn-reverse.yaml",
        "anli-replay.yaml",
    } <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates_and_opens_with_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and ("protege run" in first or "make demo" in first)
    assert path.name in first or "make demo" in first
    validate_recipe(load_recipe(path))


def test_paper_a_recipes_match_the_paper():
    for name, rec, rname in (
        ("anli-emanli", "explain", "Explanation"),
        ("anli-smanli", "5w", "Rationale"),
    ):
        r = load_recipe(Path(__file__).parent.parent / "recipes" / f"{name}.yaml")
        assert r.teacher["model"] == "gpt-4.1-mini"  # gpt-3.5-turbo-0125: shut down 2026-10-23
        assert (r.teacher["temperature"], r.teacher["seed"], r.teacher["max_tokens"]) == (
            0.2,
            123,
            400,
        )
        assert r.train["model"] == "t5-small"
        assert r.train["grid"]["learning_rates"] == [6e-4, 1.2e-3, 2.4e-3]
        assert r.train["grid"]["splits"] == [[0.25, 0.75], [0.5, 0.5], [0.75, 0.25]]
        assert r.generate[0].config["recipe"] == rec and r.task.rationale_name == rname
        (test_step,) = [s for s in r.generate if (s.use_as or s.split) == "test"]
        assert test_step.config["recipe"] == rec  # reference rationales: test BLEU


def test_live_recipes_name_a_current_model_and_only_replay_the_shut_down_one():
    shut_down = ("gpt-3.5-turbo", "gpt-3.5-turbo-0125", "gpt-4", "gpt-4-0613")
    for path in RECIPES:
        r = load_recipe(path)
        if r.teacher.get("kind") == "openai":
            assert r.teacher["model"] not in shut_down, path.name
    replay = load_recipe(Path(__file__).parent.parent / "recipes" / "anli-replay.yaml")
    assert replay.teacher["kind"] == "replay" and replay.imports[0].model == "gpt-3.5-turbo-0125"


def test_bad_recipe_fields_are_named(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data: {train: a.jsonl, dev: b.jsonl, test: c.jsonl}\ntrain: {epochz: 3}\n")
    with pytest.raises(ConfigError, match="epochz"):
        validate_recipe(load_recipe(path))
    path.write_text("data: {train: a.jsonl, dev: b.jsonl}\n")
    with pytest.raises(ConfigError, match="data.test is required"):
        load_recipe(path)
    path.write_text(
        "data: {train: a.jsonl, dev: b.jsonl, test: c.jsonl}\n"
        "variants: [{name: v, train_from: nothing}]\n"
    )
    with pytest.raises(ConfigError, match="no generate step named 'nothing'"):
        load_recipe(path)


def test_split_source_slices():
    assert split_source("a/dev.jsonl[:800]") == ("a/dev.jsonl", slice(None, 800))
    assert split_source("a/dev.jsonl[800:]") == ("a/dev.jsonl", slice(800, None))
    assert split_source("anli") == ("anli", None)


@pytest.mark.parametrize(
    "section, match",
    [
        ("eval: {decodng: {num_beams: 4}}", "eval.decodng: unknown field"),
        ("eval: {decoding: {num_beam: 4}}", "eval.decoding.num_beam: unknown field"),
        ("eval: {decoding: {num_beams: 0}}", "num_beams: must be a finite number > 0"),
        ("report: {hourly_price: 1}", "report.hourly_price: unknown field"),
        ("report: {hourly_price_usd: -1}", "report.hourly_price_usd: must be"),
        ("train: {epochs: -1}", "epochs: must be a finite number > 0, got -1"),
        ("train: {lr: .nan}", "lr: must be a finite number > 0, got nan"),
        ("train: {grid: {learning_rates: [1e-4, 0]}}", r"grid.learning_rates\[1\]: must be"),
        ("teacher: {temperature: 9}", "temperature: must be 0..2"),
        ("teacher: {max_tokens: 0}", "max_tokens: must be"),
    ],
)
def test_every_section_and_range_is_checked_before_anything_runs(tmp_path, section, match):
    path = tmp_path / "r.yaml"
    path.write_text(
        "data: {train: a.jsonl, dev: b.jsonl, test: c.jsonl}\n"
        "generate: [{name: g, config: {recipe: explain}}]\n" + section + "\n"
    )
    with pytest.raises(ConfigError, match=match):
        validate_recipe(load_recipe(path))


def test_eval_and_report_sections_match_what_they_are_passed_to():
    import dataclasses
    import inspect

    from protege.evaluate import evaluate_run
    from protege.evaluate.model_eval import DEFAULT_HOURLY_PRICE_USD
    from protege.recipe import EvalSection, ReportSection
    from protege.report import build_report

    params = inspect.signature(evaluate_run).parameters.values()
    kw_only = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    assert {f.name for f in dataclasses.fields(EvalSection)} == kw_only
    assert EvalSection().hourly_price_usd == DEFAULT_HOURLY_PRICE_USD
    report_params = set(inspect.signature(build_report).parameters) - {"run_dir"}
    assert {f.name for f in dataclasses.fields(ReportSection)} == report_params
