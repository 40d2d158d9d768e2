"""The hub datasets of the replica, written in their real repositories' layout.

- `facebook/anli`: one parquet file per split under `plain_text/` (`train_r1-00000-of-00001
  .parquet` ...), a README whose YAML declares the `plain_text` config's `data_files` and
  `dataset_info` with `label` a `class_label` (entailment, neutral, contradiction). Columns
  uid, premise, hypothesis, label (int), reason. Rows: the ANLI R1 rows of
  `../shared/data/anli-r1-emanli` when present, else protege's NLI samples.
- `abisee/cnn_dailymail`: configs 1.0.0, 2.0.0, 3.0.0, each `<config>/<split>-0000i-of-0000n
  .parquet` (train in two shards), columns article, highlights, id; no default config, as on
  the hub. Rows: protege's summarization samples, plus articles of 2,048 characters or more
  (several joined) so a length filter has something to drop.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

ANLI_LABELS = ["entailment", "neutral", "contradiction"]
_REPO = Path(__file__).resolve().parents[3]
# `../shared` of the checkout (also from a worktree one level further down).
SHARED_ANLI = [
    d / "shared" / "data" / "anli-r1-emanli" for d in (_REPO.parent, _REPO.parent.parent)
]


def _write_card(repo: Path, meta: dict[str, Any], body: str) -> None:
    text = "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + body
    (repo / "README.md").write_text(text, encoding="utf-8")


def _write_parquet(path: Path, rows: list[dict[str, Any]], features) -> int:
    import datasets
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    # The Arrow table carries the features (ClassLabel names) in its schema metadata, as the
    # hub's parquet files do.
    pq.write_table(datasets.Dataset.from_list(rows, features=features).data.table, path)
    return path.stat().st_size


def _features_yaml(features) -> list[dict[str, Any]]:
    out = []
    for name, feat in features.items():
        if hasattr(feat, "names"):
            names = {str(i): n for i, n in enumerate(feat.names)}
            out.append({"name": name, "dtype": {"class_label": {"names": names}}})
        else:
            out.append({"name": name, "dtype": feat.dtype})
    return out


def _nli_rows() -> dict[str, list[dict[str, Any]]]:
    """(dev, test) ANLI rows with string labels."""
    from protege.data.io import read_records
    from protege.data.samples import sample_path

    for d in SHARED_ANLI:
        if (d / "dev.jsonl").exists():
            return {"dev": read_records(d / "dev.jsonl"), "test": read_records(d / "test.jsonl")}
    dev = read_records(sample_path("nli", "dev")) + read_records(sample_path("nli", "train"))
    return {"dev": dev, "test": read_records(sample_path("nli", "test"))}


def build_anli(root: Path, n: int = 60) -> Path:
    """`facebook/anli` under `root/datasets/`: train/dev/test for rounds 1-3 (r1 has `n` rows
    per split, train_r1 twice that; r2 and r3 a few rows each)."""
    import datasets

    repo = root / "datasets" / "facebook" / "anli"
    repo.mkdir(parents=True, exist_ok=True)
    features = datasets.Features(
        {
            "uid": datasets.Value("string"),
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=ANLI_LABELS),
            "reason": datasets.Value("string"),
        }
    )
    src = _nli_rows()

    def convert(rows: list[dict[str, Any]], tag: str = "") -> list[dict[str, Any]]:
        return [
            {
                "uid": (str(r.get("uid", i)) + tag),
                "premise": r["premise"],
                "hypothesis": r["hypothesis"],
                "label": ANLI_LABELS.index(str(r["label"]).lower()),
                "reason": "",
            }
            for i, r in enumerate(rows)
        ]

    splits = {
        "train_r1": convert(src["dev"][n : 3 * n], "-train"),  # dev rows under new uids
        "dev_r1": convert(src["dev"][:n]),
        "test_r1": convert(src["test"][:n]),
    }
    for r in ("r2", "r3"):
        splits[f"train_{r}"] = convert(src["dev"][:4], f"-train-{r}")
        splits[f"dev_{r}"] = convert(src["dev"][4:8], f"-{r}")
        splits[f"test_{r}"] = convert(src["test"][4:8], f"-{r}")
    info_splits, data_files = [], []
    for name, rows in splits.items():
        size = _write_parquet(
            repo / "plain_text" / f"{name}-00000-of-00001.parquet", rows, features
        )
        info_splits.append({"name": name, "num_bytes": size, "num_examples": len(rows)})
        data_files.append({"split": name, "path": f"plain_text/{name}-*"})
    meta = {
        "annotations_creators": ["crowdsourced", "machine-generated"],
        "language": ["en"],
        "license": ["cc-by-nc-4.0"],
        "task_categories": ["text-classification"],
        "task_ids": ["natural-language-inference", "multi-input-text-classification"],
        "paperswithcode_id": "anli",
        "pretty_name": "Adversarial NLI",
        "dataset_info": {
            "config_name": "plain_text",
            "features": _features_yaml(features),
            "splits": info_splits,
        },
        "configs": [{"config_name": "plain_text", "data_files": data_files, "default": True}],
    }
    _write_card(repo, meta, "# Dataset Card for Adversarial NLI (replica)\n")
    return repo


def _long_articles(articles: list[str], n: int, min_chars: int = 2048) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        text = ""
        while len(text) < min_chars:
            text += (" " if text else "") + articles[i % len(articles)]
            i += 1
        out.append(text)
    return out


def build_cnn_dailymail(root: Path, n: dict[str, int] | None = None) -> Path:
    """`abisee/cnn_dailymail` under `root/datasets/`: configs 1.0.0, 2.0.0 and 3.0.0 with the
    same rows; one row in four of every split has an article of 2,048+ characters."""
    import datasets

    from protege.data.io import read_records
    from protege.data.samples import sample_path

    n = n or {"train": 40, "validation": 20, "test": 20}
    repo = root / "datasets" / "abisee" / "cnn_dailymail"
    repo.mkdir(parents=True, exist_ok=True)
    features = datasets.Features(
        {
            "article": datasets.Value("string"),
            "highlights": datasets.Value("string"),
            "id": datasets.Value("string"),
        }
    )
    sample = {"train": "train", "validation": "dev", "test": "test"}
    infos, configs = [], []
    rows_by_split = {}
    for split, count in n.items():
        src = read_records(sample_path("summarization", sample[split]))
        longs = iter(_long_articles([r["article"] for r in src[count:]], count))
        rows = []
        for i, r in enumerate(src[:count]):
            article = next(longs) if i % 4 == 3 else r["article"]
            uid = hashlib.sha1(f"{split}-{i}".encode()).hexdigest()
            rows.append({"article": article, "highlights": r["summary"], "id": uid})
        rows_by_split[split] = rows
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        info_splits, data_files = [], []
        for split, rows in rows_by_split.items():
            shards = 2 if split == "train" else 1
            size = 0
            for s in range(shards):
                part = rows[s::shards]
                name = f"{version}/{split}-{s:05d}-of-{shards:05d}.parquet"
                size += _write_parquet(repo / name, part, features)
            info_splits.append({"name": split, "num_bytes": size, "num_examples": len(rows)})
            data_files.append({"split": split, "path": f"{version}/{split}-*"})
        infos.append(
            {
                "config_name": version,
                "features": _features_yaml(features),
                "splits": info_splits,
            }
        )
        configs.append({"config_name": version, "data_files": data_files})
    meta = {
        "annotations_creators": ["no-annotation"],
        "language": ["en"],
        "license": ["apache-2.0"],
        "task_categories": ["summarization"],
        "paperswithcode_id": "cnn-daily-mail-1",
        "pretty_name": "CNN / Daily Mail",
        "dataset_info": infos,
        "configs": configs,
    }
    _write_card(repo, meta, "# Dataset Card for CNN Dailymail Dataset (replica)\n")
    return repo
