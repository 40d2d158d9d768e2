"""Pricing a recipe before paying (issue 19, item 3) and overrides that reach list items
(item 4), through the CLI, against the OpenAI replica (which must see no request at all)."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from protege.cli import main
from protege.config import apply_overrides
from protege.data.samples import sample_path
from protege.errors import ConfigError
from protege.recipe import load_recipe, shadowed_overrides
from protege.testing.fake_openai import FakeOpenAI


def _recipe(tmp_path, base_url: str) -> str:
    recipe = {
        "name": "priced",
        "run_dir": str(tmp_path / "run"),
        "task": {
            "type": "classification",
            "labels": ["entailment", "neutral", "contradiction"],
            "input_template": "Premise: {premise} Hypothesis: {hypothesis}",
            "format": "label+rationale",
        },  # fmt: skip
        "data": {
            "train": str(sample_path("nli", "train")),
            "dev": str(sample_path("nli", "dev")),
            "test": str(sample_path("nli", "test")),
            "max_rows": {"train": 40, "dev": 20},
        },  # fmt: skip
        "teacher": {"kind": "openai", "model": "gpt-4.1-mini", "base_url": base_url},
        "generate": [
            {"name": "explain-train", "split": "train", "config": {"recipe": "explain"}},
            {
                "name": "explain-dev",
                "split": "dev",
                "config": {"recipe": "explain", "teacher": {"mode": "batch"}},
            },  # fmt: skip
        ],
        "teacher_zeroshot": {"enabled": True, "limit": 10},
        "variants": [
            {"name": "small", "train": {"model": "protege:tiny-t5", "epochs": 2}},
            {
                "name": "cls",
                "train": {"model": "protege:minilm-cls", "epochs": 3, "task": {"format": "label"}},
            },  # fmt: skip
            {
                "name": "classical",
                "train": {"model": "protege:tfidf-logreg", "task": {"format": "label"}},
            },  # fmt: skip
        ],
        "train": {"grid": {"learning_rates": [1e-4, 3e-4], "baseline": True}},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_run_dry_run_prices_every_teacher_step_and_lists_what_would_train(tmp_path):
    with FakeOpenAI(model="gpt-4.1-mini") as server:
        path = _recipe(tmp_path, server.base_url)
        out = CliRunner().invoke(main, ["run", path, "--dry-run"])
        assert out.exit_code == 0, out.output
        assert server.log == []  # nothing called
    text = out.output
    assert not (tmp_path / "run").exists()  # nothing written
    assert "explain-train (train, openai gpt-4.1-mini, online): 40 rows, 40 prompts" in text
    assert "explain-dev (dev, openai gpt-4.1-mini, batch): 20 rows, 20 prompts" in text
    assert "teacher-zeroshot (test, openai gpt-4.1-mini, online): 10 rows" in text
    line = next(x for x in text.splitlines() if x.startswith("  explain-train"))
    online, batch = (float(x.split("$")[1].split()[0]) for x in line.split("est. ")[1].split(","))
    assert 0 < batch < online  # priced at genai-prices' rates, the batch price below it
    assert "total: 70 calls" in text
    # 2 learning rates x (baseline + one split) for the rationale student, 2 for the classifier
    assert (
        "small: protege:tiny-t5, format label+rationale, 2 epochs, on data; 4 grid points" in text
    )
    assert "cls: protege:minilm-cls, format label, 3 epochs, on data; 2 grid points" in text
    # a classical student fits its own candidates: no epochs, one point whatever the rates
    assert (
        "classical: protege:tfidf-logreg, format label, fits its own candidates, on data; "
        "1 grid points (seed42)" in text
    )


def test_generate_reads_a_recipes_steps_for_a_dry_run_and_refuses_to_run_them(tmp_path):
    with FakeOpenAI(model="gpt-4.1-mini") as server:
        path = _recipe(tmp_path, server.base_url)
        runner = CliRunner()
        dry = runner.invoke(main, ["generate", "-c", path, "--dry-run", "teacher.model=gpt-4.1"])
        assert dry.exit_code == 0, dry.output
        assert "explain-train (train, openai gpt-4.1, online): 40 rows" in dry.output
        assert "would train" not in dry.output
        real = runner.invoke(main, ["generate", "-c", path])
        assert real.exit_code == 1
        assert f"run with `protege run {path}`" in real.output
        assert len(real.output.strip().splitlines()) == 1
        assert server.log == []


def test_overrides_reach_list_items_by_position_or_name():
    data = {"variants": [{"name": "a", "train": {"epochs": 5}}, {"name": "b", "train": {}}],
            "generate": [{"name": "explain-train", "config": {}}]}  # fmt: skip
    out = apply_overrides(data, ["variants.0.train.epochs=1", "variants.b.train.lr=0.0001",
                                 "generate.0.config.max_cost=2",
                                 "generate.explain-train.config.teacher.model=gpt-4.1"])  # fmt: skip
    assert out["variants"][0]["train"] == {"epochs": 1}
    assert out["variants"][1]["train"] == {"lr": 1e-4}
    assert out["generate"][0]["config"] == {"max_cost": 2, "teacher": {"model": "gpt-4.1"}}
    for bad, says in (("variants.2.train.epochs=1", "variants has no item '2' (use 0..1 or a, b)"),
                      ("variants.c.train.epochs=1", "variants has no item 'c'")):  # fmt: skip
        try:
            apply_overrides(data, [bad])
        except ConfigError as e:
            assert says in str(e)
        else:
            raise AssertionError(f"{bad} was accepted")


def test_a_shadowed_override_is_reported(tmp_path):
    with FakeOpenAI(model="gpt-4.1-mini") as server:
        path = _recipe(tmp_path, server.base_url)
    recipe = load_recipe(path, ["variants.small.train.epochs=1"])
    assert recipe.variants[0].train["epochs"] == 1
    lines = shadowed_overrides(load_recipe(path), ["train.epochs=1", "train.lr=1e-3"])
    assert lines == [
        "override train.epochs: small, cls set it themselves, so it does not reach them "
        "(override theirs: variants.small.train.epochs=...)"
    ]
    teacher = shadowed_overrides(load_recipe(path), ["teacher.mode=online"])
    assert teacher and "explain-dev sets it" in teacher[0] and "does not reach" in teacher[0]
    out = CliRunner().invoke(main, ["run", path, "--check", "train.epochs=1"])
    assert out.exit_code == 0
    assert "warning: override train.epochs: small, cls set it themselves" in out.output
