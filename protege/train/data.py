"""Records -> tokenized examples with per-token span tags, length-grouped batches, padding.

Targets are built from `formats.make_examples` segments: each segment is tokenized without
special tokens, the ids are concatenated and wrapped in the special tokens the model's
tokenizer puts around a target (`protege.targets`: T5 `... </s>`, BART `<s> ... </s>`), and
every token keeps the tag of its segment (1 = label, 2 = rationale), so the split loss needs
no string re-parsing. The end token carries the last segment's tag (the model must learn to
stop); a prefix such as BART's `<s>`, which generation forces, is tagged 0 and left out.
Batches are padded only to their own longest row (dynamic padding) and rows of similar
length are batched together, so little compute goes to padding.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from protege.config import fingerprint
from protege.data.io import file_sha256, is_file_source, read_records, split_source
from protege.errors import ConfigError, DataError
from protege.formats import Example, TaskConfig, clip_sources, make_examples, render_input
from protege.targets import target_affixes
from protege.train.loss import IGNORE, LABEL_TAG, PAD_TAG, RATIONALE_TAG

TAGS = {"label": LABEL_TAG, "rationale": RATIONALE_TAG, "connector": RATIONALE_TAG}


@dataclass
class Encoded:
    """One tokenized training pair."""

    input_ids: list[int]
    target_ids: list[int]
    tags: list[int]
    uid: str = ""
    label_reach: int = 0
    """Generated tokens needed to read the label back (forced prefix, everything up to the
    label, the label, and the connector or end token after it); 0 for rows without one."""


@dataclass
class DataSummary:
    """What was read and what was left out, for the results table."""

    source: str
    n_records: int = 0
    n_examples: int = 0
    skipped_flagged: int = 0
    skipped_missing_rationale: int = 0
    skipped_low_confidence: int = 0
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    examples: list[Example] = field(default_factory=list, repr=False)
    groups: list[list[int]] = field(default_factory=list, repr=False)
    """Indices into `examples` per record (multitask: its predict: and explain: rows)."""

    def counts(self) -> dict[str, int]:
        return {
            "records": self.n_records,
            "scored": len(self.records),  # the rows dev metrics are computed over
            "examples": self.n_examples,
            "skipped_flagged": self.skipped_flagged,
            "skipped_missing_rationale": self.skipped_missing_rationale,
            "skipped_low_confidence": self.skipped_low_confidence,
        }


def load_examples(
    source: str,
    task: TaskConfig,
    max_rows: int | None = None,
    split: str = "train",
    min_confidence: float | None = None,
) -> DataSummary:
    """Read records and turn them into examples; flagged rows (teacher output that did not
    parse) are skipped and counted, as are rows without a rationale when the task says skip and
    rows whose teacher `confidence` is below `min_confidence`."""
    if not source:
        raise DataError("train config", "no data file given (train_data / dev_data)")
    path, rows = split_source(str(source))  # `dev.jsonl[800:]`: a slice of a file
    if rows is not None and not is_file_source(path):
        raise DataError(str(source), "a [a:b] row slice needs a file, not a hub dataset name")
    records = read_records(path, split)  # split: only used for hub dataset names
    if rows is not None:
        records = records[rows]
    if max_rows is not None:
        records = records[:max_rows]
    summary = DataSummary(source=str(source))
    unjudged = 0  # rows min_confidence cannot judge: the teacher gave no confidence
    for record in records:
        if record.get("flagged"):
            summary.skipped_flagged += 1
            continue
        confidence = record.get("confidence")
        unjudged += min_confidence is not None and confidence is None
        if min_confidence is not None and confidence is not None and confidence < min_confidence:
            summary.skipped_low_confidence += 1
            continue
        examples = make_examples(task, record, str(source))
        if not examples:
            summary.skipped_missing_rationale += 1
            continue
        summary.records.append(record)
        n = len(summary.examples)
        summary.groups.append(list(range(n, n + len(examples))))
        summary.examples.extend(examples)
    summary.n_records = len(records)
    summary.n_examples = len(summary.examples)
    if unjudged:
        print(
            f"{source}: min_confidence {min_confidence}: {unjudged} of {len(records)} rows have "
            "no teacher confidence (unavailable, or never computed): kept, not judged"
        )
    if not summary.examples:
        raise DataError(str(source), "no usable rows (all flagged or missing a rationale)")
    return summary


def encode(
    examples: list[Example],
    tok,
    max_source_len: int,
    max_target_len: int,
    decoder_start_id: int | None = None,
) -> list[Encoded]:
    """Tokenize sources (with the model's special tokens) and tagged targets, wrapped as the
    tokenizer wraps a `text_target` (see `protege.targets.target_affixes`)."""
    sources = [e.source for e in examples]
    sources = tok(
        clip_sources(sources, max_source_len), truncation=True, max_length=max_source_len
    )["input_ids"]
    prefix, suffix = target_affixes(tok, decoder_start_id)
    texts = clip_sources([text for e in examples for _, text in e.segments], max_target_len)
    seg_ids = iter(tok(texts, add_special_tokens=False)["input_ids"]) if texts else iter([])
    room = max(1, max_target_len - len(prefix) - len(suffix))
    out = []
    for example, src in zip(examples, sources, strict=True):
        pieces = fit_segments([(k, next(seg_ids)) for k, _ in example.segments], room)
        ids = [i for _, piece in pieces for i in piece]
        tags = [TAGS[kind] for kind, piece in pieces for _ in piece]
        last = tags[-1] if tags else TAGS[example.segments[-1][0]]
        out.append(
            Encoded(
                list(src),
                prefix + ids + suffix,
                [PAD_TAG] * len(prefix) + tags + [last] * len(suffix),
                example.uid,
                len(prefix) + label_reach(pieces, len(suffix)),
            )
        )
    return out


def fit_segments(pieces: list[tuple[str, list[int]]], room: int) -> list[tuple[str, list[int]]]:
    """Shorten a tokenized target to `room` tokens by cutting the rationale text only (from
    its end): the label and the connectors (` Explanation:`, ` Answer:`) always stay, so a
    long rationale can never take the label's place. Targets with no rationale (a label, a
    summary) are cut from the right."""
    total = sum(len(p) for _, p in pieces)
    if total <= room:
        return pieces
    over = total - room
    out = list(pieces)
    for j in range(len(out) - 1, -1, -1):
        kind, piece = out[j]
        if kind == "rationale" and over:
            cut = min(over, len(piece))
            out[j] = (kind, piece[: len(piece) - cut])
            over -= cut
    if over:  # nothing (left) to cut in a rationale: plain right truncation
        ids = [(k, i) for k, p in out for i in p][:room]
        return [(k, [i]) for k, i in ids]
    return out


def label_reach(pieces: list[tuple[str, list[int]]], n_suffix: int) -> int:
    """Target tokens up to the label and what ends it (the next connector, or the end token):
    what `parse_output` must see to read the label."""
    kinds = [k for k, _ in pieces]
    if "label" not in kinds:
        return 0
    j = len(kinds) - 1 - kinds[::-1].index("label")
    reach = sum(len(p) for _, p in pieces[: j + 1])
    if j + 1 < len(pieces) and kinds[j + 1] == "connector":
        return reach + len(pieces[j + 1][1])
    return reach + (n_suffix if j + 1 == len(pieces) else 1)


def length_grouped_batches(
    src_lengths: list[int],
    tgt_lengths: list[int],
    batch_size: int,
    seed: int,
    epoch: int,
    mega_batch: int = 50,
    groups: list[list[int]] | None = None,
) -> list[list[int]]:
    """Index batches of similar source AND target length, so dynamic padding wastes little.

    Shuffle; within windows of `mega_batch` batches sort by source length, then re-sort each
    run of 4 batches by target length (a batch costs its longest source plus its longest
    target; this two-key order beats sorting by either or by their sum); cut into batches;
    shuffle the batches. Deterministic in (seed, epoch), so a resumed run sees the same order.

    `groups`: rows that must share a batch (a multitask record's `predict:` and `explain:`
    rows, so every step trains both tasks on the same examples, as distilling step-by-step
    does); a group moves as one unit of its longest lengths, `batch_size` rows per batch.
    """
    groups = groups or [[i] for i in range(len(src_lengths))]
    src = [max(src_lengths[i] for i in g) for g in groups]
    tgt = [max(tgt_lengths[i] for i in g) for g in groups]
    per = max(1, batch_size // max(len(g) for g in groups))  # units per batch
    rng = random.Random(f"{seed}-{epoch}")
    order = list(range(len(groups)))
    rng.shuffle(order)
    window, group = per * mega_batch, per * 4
    batches = []
    for start in range(0, len(order), window):
        by_src = sorted(order[start : start + window], key=lambda i: -src[i])
        for g in range(0, len(by_src), group):
            chunk = sorted(by_src[g : g + group], key=lambda i: -tgt[i])
            batches += [chunk[i : i + per] for i in range(0, len(chunk), per)]
    rng.shuffle(batches)
    return [[i for u in b for i in groups[u]] for b in batches]


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest row of this batch: inputs with pad_id, labels with -100, tags with 0."""
    src_len = max(len(e.input_ids) for e in items)
    tgt_len = max(len(e.target_ids) for e in items)
    input_ids = torch.full((len(items), src_len), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), src_len), dtype=torch.long)
    labels = torch.full((len(items), tgt_len), IGNORE, dtype=torch.long)
    tags = torch.full((len(items), tgt_len), PAD_TAG, dtype=torch.long)
    for i, e in enumerate(items):
        input_ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        attention[i, : len(e.input_ids)] = 1
        labels[i, : len(e.target_ids)] = torch.tensor(e.target_ids)
        tags[i, : len(e.tags)] = torch.tensor(e.tags)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "tags": tags}


def data_fingerprint(*sources: str, max_rows: int | None = None) -> str:
    """sha256 of the data files (or the hub names), so a checkpoint says what it saw."""
    parts = []
    for source in sources:
        path, rows = split_source(str(source or ""))
        if path and is_file_source(path) and Path(path).exists():
            parts.append(file_sha256(path) + (f"[{rows.start}:{rows.stop}]" if rows else ""))
        else:
            parts.append(source)
    return fingerprint(parts, max_rows)


def refuse_selection_on_training_rows(cfg, task, train, dev) -> None:
    """Split hygiene in `protege train` itself: dev rows that are training rows would select
    checkpoints on what the student memorised. Refused when dev shares uids with training, or
    when every dev input is a training input (the same rows without uids); a partial input
    overlap (real datasets repeat some texts across splits) is reported on one line."""
    from protege.evaluate.hygiene import check_splits, normalise_text

    found = check_splits({"train_data": train, "dev_data": dev}, task)
    if found["ok"] or cfg.allow_dev_overlap:
        return
    (pair,) = found["pairs"]
    inputs = {normalise_text(render_input(task, r)) for r in dev} - {""}
    what = (
        f"dev_data {cfg.dev_data} shares {pair['same_uid']} uids and {pair['same_input']} "
        f"inputs with train_data {cfg.train_data} (of {len(dev)} dev rows)"
    )
    if pair["same_uid"] or pair["same_input"] >= len(inputs):
        raise ConfigError(
            f"{what}: selection on training rows is refused; use disjoint rows (e.g. "
            f"data.jsonl[:800] and data.jsonl[800:]) or set allow_dev_overlap=true"
        )
    print(f"split hygiene: {what}")
