"""Hugging Face hub datasets as plain rows: names, splits, configs, labels, filters.

datasets 5 takes only `namespace/name` repository ids, so the short names of older datasets
(`anli`, `cnn_dailymail`) are mapped to their canonical repos (`facebook/anli`,
`abisee/cnn_dailymail`); the split and config tables are keyed by the canonical name, so
either spelling finds them. protege's split names (`train`, `dev`, `test`) are mapped to the
dataset's own (`train_r1`, `validation` ...) unless a recipe names them (`data.splits`,
`data.config`). Class ids become the names of the dataset's own `ClassLabel` feature. Length
filters and row caps run on the Arrow dataset (`Dataset.filter`, `select`) before any row
becomes a Python dict: CNN/DailyMail's train split is ~287k articles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protege.errors import DataError

# Canonical repos of the short names that datasets < 3 accepted.
ALIASES = {"anli": "facebook/anli", "cnn_dailymail": "abisee/cnn_dailymail"}
# protege's split names -> the dataset's own, for names a user is likely to pass.
SPLITS = {
    "facebook/anli": {"train": "train_r1", "dev": "dev_r1", "test": "test_r1"},
    "abisee/cnn_dailymail": {"dev": "validation"},
}
CONFIGS = {"abisee/cnn_dailymail": "3.0.0"}


@dataclass
class HubQuery:
    """Which part of a hub dataset to read, and what to keep of it."""

    split: str = "train"
    """protege's split name (`train`, `dev`, `test`) or the dataset's own (`train_r2`)."""
    hub_split: str | None = None
    """The dataset's split to read, overriding the table (a recipe's `data.splits`)."""
    config: str | None = None
    """The dataset's config (`3.0.0`), overriding the table (a recipe's `data.config`)."""
    max_chars: dict[str, int] = field(default_factory=dict)
    """Keep rows whose column is shorter than N characters: `{article: 2048}`."""
    max_rows: int | None = None
    """Keep the first N rows (after filtering)."""


def canonical(name: str) -> str:
    """`anli` -> `facebook/anli`; other names unchanged."""
    return ALIASES.get(name, name)


def resolve_split(name: str, split: str) -> str:
    table = SPLITS.get(canonical(name), {})
    if split in table:
        return table[split]
    return "validation" if split == "dev" else split


def label_names(features) -> dict[str, list[str]]:
    """`{column: names}` for every `ClassLabel` column of a dataset's features."""
    import datasets

    return {k: list(f.names) for k, f in features.items() if isinstance(f, datasets.ClassLabel)}


def _why(e: Exception) -> str:
    """The first line of a datasets/hub error, which is the one that says what went wrong."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def read_hub(name: str, query: HubQuery | None = None) -> list[dict[str, Any]]:
    """The rows of one split of a hub dataset, as plain dicts with label names."""
    try:
        import datasets
    except ImportError as e:
        raise DataError(name, "install `datasets` to load hub datasets") from e
    q = query or HubQuery()
    repo = canonical(name)
    split = q.hub_split or resolve_split(name, q.split)
    config = q.config or CONFIGS.get(repo)
    where = f"{repo}" + (f" ({config})" if config else "") + f" split {split!r}"
    try:
        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as e:  # ValueError/HfUriError, DatasetNotFoundError, HTTP and I/O errors
        why = _why(e)
        hint = ""
        if "split" in why.lower():
            hint = " (a recipe names the dataset's split with data.splits)"
        elif "config" in why.lower():
            hint = " (a recipe names the dataset's config with data.config)"
        raise DataError(name, f"cannot load {where} from the hub: {why}{hint}") from e
    for column, limit in q.max_chars.items():
        if column not in ds.column_names:
            raise DataError(
                name, f"max_chars: no column {column!r} (columns: {', '.join(ds.column_names)})"
            )
        ds = ds.filter(
            lambda values, n=limit: [len(str(v)) < n for v in values],
            input_columns=[column],
            batched=True,
        )
    if q.max_rows is not None:
        ds = ds.select(range(min(q.max_rows, len(ds))))
    labels = label_names(ds.features)
    rows = ds.to_list()
    for column, names in labels.items():  # class ids -> names, so every source looks alike
        for row in rows:
            value = row.get(column)
            if isinstance(value, int) and 0 <= value < len(names):
                row[column] = names[value]
    return rows
