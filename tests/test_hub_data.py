"""Hub datasets through protege (`read_records`, recipes' `data:`), against the hub replica."""

from __future__ import annotations

import json

import pytest
from hub_util import hub_env, run_py

from protege.data.hub import HubQuery, canonical, resolve_split
from protege.errors import ConfigError
from protege.recipe import DataConfig, hub_query, load_recipe


def test_short_and_canonical_names_share_one_table():
    assert canonical("anli") == canonical("facebook/anli") == "facebook/anli"
    assert canonical("cnn_dailymail") == "abisee/cnn_dailymail"
    for name in ("anli", "facebook/anli"):
        assert [resolve_split(name, s) for s in ("train", "dev", "test")] == [
            "train_r1",
            "dev_r1",
            "test_r1",
        ]
    assert resolve_split("abisee/cnn_dailymail", "dev") == "validation"
    assert resolve_split("facebook/anli", "train_r2") == "train_r2"


def test_recipe_names_hub_split_and_config_and_filters_by_source_column():
    data = DataConfig(
        train="cnn_dailymail",
        dev="cnn_dailymail",
        test="cnn_dailymail",
        fields={"summary": "highlights"},
        max_chars={"article": 2048, "summary": 300},
        max_rows={"dev": 5},
        splits={"train": "validation"},
        config="2.0.0",
    )
    assert hub_query(data, "train") == HubQuery(
        "train", "validation", "2.0.0", {"article": 2048, "highlights": 300}, None
    )
    assert hub_query(data, "dev").max_rows == 5 and hub_query(data, "dev").hub_split is None


def test_recipe_hub_fields_are_validated_up_front(tmp_path):
    path = tmp_path / "r.yaml"
    base = "data: {train: anli, dev: anli, test: t.jsonl, %s}\n"
    path.write_text(base % "splits: {valid: dev_r2}")
    with pytest.raises(ConfigError, match="data.splits.valid: unknown split"):
        load_recipe(path)
    path.write_text(base % "splits: {test: test_r2}")
    with pytest.raises(ConfigError, match="data.splits.test: data.test is a file"):
        load_recipe(path)
    path.write_text(base % "splits: {train: train_r2}, config: plain_text")
    recipe = load_recipe(path)
    assert recipe.data.splits == {"train": "train_r2"} and recipe.data.config == "plain_text"


READ = """
import json
from protege.data.io import read_records
from protege.data.hub import HubQuery
from protege.errors import DataError
out = {}
for name in ("anli", "facebook/anli"):
    rows = read_records(name, "dev")
    out[name] = [len(rows), sorted({r["label"] for r in rows}), rows[0]["uid"]]
out["r2"] = len(read_records("facebook/anli", "train", hub=HubQuery(hub_split="train_r2")))
full = read_records("cnn_dailymail", "train")
short = read_records("abisee/cnn_dailymail", "train", hub=HubQuery(max_chars={"article": 2048}))
capped = read_records("cnn_dailymail", "dev", hub=HubQuery(max_chars={"article": 2048}, max_rows=3))
out["cnn"] = [len(full), len(short), max(len(r["article"]) for r in short), len(capped)]
out["config"] = len(read_records("cnn_dailymail", "test", hub=HubQuery(config="1.0.0")))
errors = []
for name, q in [("nobody/nothing", HubQuery()), ("facebook/anli", HubQuery(hub_split="train_r9")),
                ("abisee/cnn_dailymail", HubQuery(config="9.9.9")),
                ("cnn_dailymail", HubQuery(max_chars={"body": 10}))]:
    try:
        read_records(name, "train", hub=q)
    except DataError as e:
        errors.append(str(e))
out["errors"] = errors
print(json.dumps(out))
"""


@pytest.mark.slow
def test_hub_datasets_read_by_short_or_canonical_name(hub, tmp_path):
    out = json.loads(run_py(READ, hub_env(hub, tmp_path)).splitlines()[-1])
    assert out["anli"] == out["facebook/anli"]
    n, labels, _ = out["anli"]
    assert n == 60 and labels == ["contradiction", "entailment", "neutral"]  # ClassLabel names
    assert out["r2"] == 4
    full, short, longest, capped = out["cnn"]
    assert (full, short, capped) == (40, 30, 3) and longest < 2048  # 1 in 4 is too long
    assert out["config"] == 20
    missing, split, config, column = out["errors"]
    assert missing.startswith("nobody/nothing: cannot load nobody/nothing split 'train'")
    assert "train_r9" in split and "data.splits" in split and "\n" not in split
    assert "9.9.9" in config and "data.config" in config and "\n" not in config
    assert "max_chars: no column 'body'" in column
