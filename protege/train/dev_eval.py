"""Dev evaluation during training: split loss on dev, and metrics of GENERATED text.

Label accuracy reads each generated string back with `formats.parse_output`; an output that
does not parse counts as wrong (and lowers coverage), never skipped. Rationale BLEU is
`evaluate.metrics.rationale_bleu`, the function test scoring uses (same case handling, no
smoothing), over the rows that have a teacher rationale. Summarization reports
ROUGE-L F1 (rouge-score, 0-1) instead of accuracy. Under DDP each process scores a shard and
the results are gathered, so every process reaches the same numbers and decisions.
"""

from __future__ import annotations

from typing import Any

import torch

from protege.evaluate.metrics import is_uncased, rationale_bleu
from protege.formats import (
    TaskConfig,
    clip_sources,
    explain_input,
    inference_input,
    normalise_label,
    parse_output,
)
from protege.train.data import Encoded
from protege.train.loss import TokenSums, token_sums


def _gather(accelerator, items: list) -> list:
    from accelerate.utils import gather_object

    return gather_object(items) if accelerator.num_processes > 1 else items


def dev_loss(student, dev: list[Encoded], batch_size: int, accelerator) -> TokenSums:
    """Summed CE per span over the whole dev set (this process's shard, then gathered)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    shard = sorted(dev[rank::world], key=lambda e: len(e.input_ids))
    sums = TokenSums()
    for i in range(0, len(shard), batch_size):
        batch = {
            k: v.to(accelerator.device)
            for k, v in student.collate(shard[i : i + batch_size]).items()
        }
        with torch.no_grad(), accelerator.autocast():
            logits, targets, tags = student.logits(student.model, batch)  # (B, T, V) ...
        sums.add(token_sums(logits, targets, tags, student.n_suffix))
    total = TokenSums()
    for part in _gather(accelerator, [sums]):
        total.add(part)
    return total


def generate(student, texts: list[str], cfg, accelerator) -> list[str]:
    """Generated strings for `texts` (sharded across processes, order restored); every other
    decoding setting is the model's generation config (`Student.configure_decoding`)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = sorted(range(rank, len(texts), world), key=lambda i: len(texts[i]))
    out: list[tuple[int, str]] = []
    bs = cfg.eval_batch_size
    gen = cfg.generation
    for start in range(0, len(mine), bs):
        idx = mine[start : start + bs]
        with torch.no_grad(), accelerator.autocast():
            batch = clip_sources([texts[i] for i in idx], cfg.max_source_len)  # a huge row: no cost
            texts_out = student.generate(batch, gen.max_new_tokens, gen.num_beams)
        out += zip(idx, texts_out, strict=True)
    return [text for _, text in sorted(_gather(accelerator, out))]


def score(
    task: TaskConfig,
    records: list[dict[str, Any]],
    outputs: list[str],
    explanations: list[str] | None = None,
    lowercase: bool = False,
) -> dict[str, float | None]:
    """Accuracy, coverage, BLEU (or ROUGE-L) of generated outputs against the records;
    `lowercase`: an uncased student, whose BLEU is case-insensitive (as at test time)."""

    if task.type == "summarization":
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        refs = [str(r[task.target_field]) for r in records]
        f1 = [
            scorer.score(ref, out)["rougeL"].fmeasure
            for ref, out in zip(refs, outputs, strict=True)
        ]
        return {
            "eval_accuracy": None,
            "eval_coverage": None,
            "eval_bleu": None,
            "eval_rougeL": sum(f1) / len(f1),
        }
    parsed = [parse_output(task, text) for text in outputs]
    gold = [normalise_label(str(r.get(task.label_field, "")), task.labels) for r in records]
    correct = sum(p.label is not None and p.label == g for p, g in zip(parsed, gold, strict=True))
    metrics: dict[str, float | None] = {
        "eval_accuracy": correct / len(records),
        "eval_coverage": sum(p.label is not None for p in parsed) / len(records),
        "eval_bleu": None,
    }
    if task.needs_rationale:
        hyps = explanations if explanations is not None else [p.rationale or "" for p in parsed]
        # The rows with a reference rationale, scored as at test time (`rationale_bleu`).
        pairs = [
            (h, str(r.get(task.rationale_field) or ""))
            for h, r in zip(hyps, records, strict=True)
            if str(r.get(task.rationale_field) or "").strip()
        ]
        metrics["eval_bleu"] = rationale_bleu(
            [h for h, _ in pairs], [r for _, r in pairs], lowercase
        )
    return metrics


def evaluate(
    student,
    task: TaskConfig,
    records: list[dict[str, Any]],
    dev: list[Encoded],
    weights,
    cfg,
    accelerator,
) -> dict[str, float | None]:
    """Everything one evaluation logs: eval loss (and both terms) and generated-text metrics."""
    model, tok = student.model, student.tok
    was_training = model.training
    model.eval()
    sums = dev_loss(student, dev, cfg.eval_batch_size, accelerator)
    total, lab, rat = sums.terms(weights)
    outputs = generate(student, [inference_input(task, r) for r in records], cfg, accelerator)
    explanations = None
    if task.format == "multitask":
        explanations = generate(
            student, [explain_input(task, r) for r in records], cfg, accelerator
        )
    metrics = {
        "eval_loss": total,  # what this run optimises: not comparable across formats/splits
        "eval_loss_label": lab,
        "eval_loss_rationale": rat,
        "eval_loss_label_span": sums.means()[2],  # comparable: the label's own tokens
    }
    metrics.update(score(task, records, outputs, explanations, is_uncased(tok)))
    model.train(was_training)
    return metrics
