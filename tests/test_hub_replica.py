"""The Hugging Face Hub replica answers as the hub does: checked over raw HTTP (headers, status
codes, error codes, pagination, ranges) and with the real clients (`datasets.load_dataset`,
`AutoTokenizer`/`AutoModelForSeq2SeqLM.from_pretrained`) in a fresh interpreter."""

from __future__ import annotations

import json

import httpx
import pytest
from hub_util import hub_env, run_py


def test_resolve_headers_match_the_hub(hub):
    url = f"{hub.endpoint}/google-t5/t5-small/resolve/main/config.json"
    head = httpx.head(url)
    assert head.status_code == 200
    repo = hub.repos[("model", "google-t5/t5-small")]
    assert head.headers["X-Repo-Commit"] == repo.sha
    assert head.headers["ETag"] == f'"{repo.files["config.json"].oid}"'  # git blob sha1
    assert int(head.headers["Content-Length"]) == repo.files["config.json"].size
    assert (
        json.loads(httpx.get(url).content)["task_specific_params"]["summarization"]["prefix"]
        == "summarize: "
    )
    lfs = httpx.head(f"{hub.endpoint}/google-t5/t5-small/resolve/main/model.safetensors")
    entry = repo.files["model.safetensors"]
    assert lfs.headers["X-Linked-Etag"] == f'"{entry.sha256}"'
    assert int(lfs.headers["X-Linked-Size"]) == entry.size
    part = httpx.get(
        f"{hub.endpoint}/google-t5/t5-small/resolve/{repo.sha}/model.safetensors",
        headers={"Range": "bytes=0-7"},
    )
    assert part.status_code == 206 and len(part.content) == 8
    assert part.headers["Content-Range"] == f"bytes 0-7/{entry.size}"


def test_errors_carry_the_hubs_error_codes(hub):
    missing = httpx.head(f"{hub.endpoint}/google-t5/t5-small/resolve/main/added_tokens.json")
    assert missing.status_code == 404
    assert missing.headers["X-Error-Code"] == "EntryNotFound"
    assert missing.headers["X-Repo-Commit"] == hub.repos[("model", "google-t5/t5-small")].sha
    norepo = httpx.get(f"{hub.endpoint}/api/models/nobody/nothing")
    assert norepo.status_code == 401 and norepo.headers["X-Error-Code"] == "RepoNotFound"
    assert norepo.json() == {"error": "Repository not found"}
    badrev = httpx.get(f"{hub.endpoint}/api/datasets/facebook/anli/revision/v9")
    assert badrev.status_code == 404 and badrev.headers["X-Error-Code"] == "RevisionNotFound"


def test_renamed_repos_redirect(hub):
    r = httpx.get(f"{hub.endpoint}/api/models/t5-small")
    assert r.status_code == 307 and r.headers["Location"] == "/api/models/google-t5/t5-small"
    r = httpx.head(f"{hub.endpoint}/t5-small/resolve/main/config.json")
    assert r.headers["Location"] == "/google-t5/t5-small/resolve/main/config.json"
    r = httpx.get(f"{hub.endpoint}/api/datasets/anli/revision/main")
    assert r.headers["Location"] == "/api/datasets/facebook/anli/revision/main"


def test_info_tree_and_paths_info(hub):
    info = httpx.get(f"{hub.endpoint}/api/datasets/facebook/anli", params={"blobs": "true"})
    body = info.json()
    assert (
        body["id"] == "facebook/anli" and body["sha"] == hub.repos[("dataset", "facebook/anli")].sha
    )
    label = next(f for f in body["cardData"]["dataset_info"]["features"] if f["name"] == "label")
    assert label["dtype"]["class_label"]["names"] == {
        "0": "entailment",
        "1": "neutral",
        "2": "contradiction",
    }
    files = {s["rfilename"] for s in body["siblings"]}
    assert "plain_text/train_r1-00000-of-00001.parquet" in files
    assert all("lfs" in s for s in body["siblings"] if s["rfilename"].endswith(".parquet"))
    top = httpx.get(f"{hub.endpoint}/api/datasets/abisee/cnn_dailymail/tree/main").json()
    assert [e["path"] for e in top if e["type"] == "directory"] == ["1.0.0", "2.0.0", "3.0.0"]
    sub = httpx.get(f"{hub.endpoint}/api/datasets/abisee/cnn_dailymail/tree/main/3.0.0").json()
    assert "3.0.0/train-00001-of-00002.parquet" in {e["path"] for e in sub}
    pi = httpx.post(
        f"{hub.endpoint}/api/datasets/abisee/cnn_dailymail/paths-info/main",
        data={"paths": ["README.md", "3.0.0", "nope"], "expand": "false"},
    ).json()
    assert [(e["path"], e["type"]) for e in pi] == [("README.md", "file"), ("3.0.0", "directory")]


def test_tree_pagination_uses_link_headers(hub, monkeypatch):
    from protege.testing.hub import server

    monkeypatch.setattr(server, "PAGE", 3)  # our own server's page size, not a client's code
    url = f"{hub.endpoint}/api/datasets/facebook/anli/tree/main/plain_text"
    paths, pages = [], 0
    while url:
        r = httpx.get(url, params={"recursive": "true"} if pages == 0 else None)
        paths += [e["path"] for e in r.json()]
        url = r.links.get("next", {}).get("url")
        pages += 1
    assert pages == 3 and len(paths) == len(set(paths)) == 9


@pytest.mark.slow
def test_real_clients_load_datasets_and_models(hub, tmp_path):
    code = """
import json
from datasets import load_dataset
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
out = {}
ds = load_dataset("facebook/anli", split="dev_r1")
out["anli"] = [len(ds), ds.features["label"].names, ds.column_names]
ds = load_dataset("abisee/cnn_dailymail", "3.0.0", split="train")
out["cnn"] = [len(ds), ds.column_names, max(len(a) for a in ds["article"])]
for name in ["google-t5/t5-small", "t5-small", "facebook/bart-base"]:
    tok = AutoTokenizer.from_pretrained(name)
    model = AutoModelForSeq2SeqLM.from_pretrained(name)
    g = model.generation_config
    out[name] = [tok("Ada lives in Ghent.").input_ids, model.config.d_model,
                 g.forced_bos_token_id, g.num_beams, g.no_repeat_ngram_size,
                 tok.convert_ids_to_tokens([0, 1, 2]), tok.convert_tokens_to_ids("<extra_id_0>")]
print(json.dumps(out))
"""
    out = json.loads(run_py(code, hub_env(hub, tmp_path)).splitlines()[-1])
    assert out["anli"] == [
        60,
        ["entailment", "neutral", "contradiction"],
        ["uid", "premise", "hypothesis", "label", "reason"],
    ]
    assert out["cnn"][0] == 40 and out["cnn"][2] >= 2048
    t5, short, bart = out["google-t5/t5-small"], out["t5-small"], out["facebook/bart-base"]
    assert t5 == short  # the renamed repo, through the hub's redirect
    assert t5[0][-1] == 1 and t5[1] == 32 and t5[5] == ["<pad>", "</s>", "<unk>"]
    config = json.loads((hub.root / "models/google-t5/t5-small/config.json").read_text())
    assert t5[6] == config["vocab_size"] - 1  # <extra_id_0> is the last id, as in T5
    assert bart[0][0] == 0 and bart[0][-1] == 2  # <s> ... </s>
    assert bart[2:5] == [0, 4, 3] and bart[5] == ["<s>", "<pad>", "</s>"]


@pytest.mark.slow
def test_sentencepiece_only_t5_loads_and_matches_the_fast_one(hub, tmp_path):
    """Many T5 fine-tunes ship spiece.model and no tokenizer.json: transformers 5 converts it
    with protobuf (without it: a misleading "tiktoken is required")."""
    code = """
from transformers import AutoTokenizer
text = "Premise: Ada Berg lives in Ghent. <extra_id_0> summarize: it"
a = AutoTokenizer.from_pretrained("protege-test/t5-small-spiece-only")
b = AutoTokenizer.from_pretrained("google-t5/t5-small")
print(a(text).input_ids == b(text).input_ids, len(a) == len(b))
"""
    assert run_py(code, hub_env(hub, tmp_path)).split()[-2:] == ["True", "True"]
