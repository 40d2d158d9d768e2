"""Build the report's sections from a run directory's files; every number shown is read
from `train/results.json`, `train/<id>/history.jsonl`, `eval/summary.json` or
`generate/*.summary.json`. A section with no data says which file it needed."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from protege.data.io import iter_jsonl
from protege.report import plots
from protege.report.model import Figure, Section, Table, ci, num, pct


class RunFiles:
    """The files of one run directory, read once."""

    def __init__(self, run_dir: Path, out_dir: Path):
        self.run_dir, self.out_dir = run_dir, out_dir
        self.results = _read_json(run_dir / "train" / "results.json") or []
        self.summary = _read_json(run_dir / "eval" / "summary.json")
        self.task = (self.summary or {}).get("task") or _recipe_task(run_dir)
        self.kind = (self.task or {}).get("type", "classification")
        self.metric = "accuracy" if self.kind == "classification" else "rougeL"
        self.entries = {e["name"]: e for e in (self.summary or {}).get("models", [])}

    def history(self, cfg: dict[str, Any]) -> list[dict[str, Any]]:
        path = self.run_dir / "train" / (cfg.get("history") or f"{cfg['id']}/history.jsonl")
        return list(iter_jsonl(path)) if path.exists() else []

    def fmt(self, value: float | None) -> str:
        """The headline metric as shown: accuracy in %, ROUGE already 0-100."""
        return pct(value) if self.metric == "accuracy" else num(value)

    def scale(self) -> float:
        return 100.0 if self.metric == "accuracy" else 1.0


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _recipe_task(run_dir: Path) -> dict[str, Any] | None:
    from protege.config import read_yaml

    path = run_dir / "recipe.yaml"
    return read_yaml(path).get("task") if path.exists() else None


def split_text(cfg: dict[str, Any]) -> str:
    if cfg.get("baseline") or not cfg.get("split"):
        return "baseline"
    return "/".join(f"{x:g}" for x in cfg["split"])


def dev_value(best: dict[str, Any] | None, metric: str) -> float | None:
    """The dev score training recorded, on the scale the report shows for test: accuracy as
    a fraction (shown in %), ROUGE-L x100 (training records it as a fraction, rouge-score's
    F-measure; evaluation reports ROUGE x100)."""
    if not best:
        return None
    if metric == "accuracy":
        return best.get("eval_accuracy")
    value = best.get("eval_rougeL")
    return 100.0 * value if value is not None else None


def hygiene_section(run: RunFiles) -> Section:
    s = Section("Split hygiene")
    if not run.summary:
        s.empty = "No eval/summary.json: run `protege eval RUN_DIR` to check the splits."
        return s
    pairs = run.summary["hygiene"]["pairs"]
    skipped = run.summary["hygiene"].get("not_checked") or []
    if skipped:
        s.paragraphs.append(f"Not checked (not a local file): {'; '.join(skipped)}.")
    if not pairs:
        s.paragraphs.append("No uid and no normalised input text is shared between the splits.")
        return s
    s.paragraphs.append("**Overlap found** between splits; test numbers may be inflated.")
    s.tables.append(
        Table(
            ["splits", "same uid", "same input", "examples"],
            [
                [
                    " / ".join(p["splits"]),
                    str(p["same_uid"]),
                    str(p["same_input"]),
                    "; ".join(p["examples"]),
                ]
                for p in pairs
            ],
        )
    )
    return s


def _paired_text(entry: dict[str, Any] | None, run: RunFiles) -> str:
    paired = (entry or {}).get("paired")
    if not paired:
        return ""
    boot = paired["paired_bootstrap"]
    p = paired["mcnemar"]["p_value"] if "mcnemar" in paired else boot["p_value"]
    test = "McNemar" if "mcnemar" in paired else "bootstrap"
    return f"{boot['diff'] * run.scale():+.1f} ({test} p={p:.3f})"


def generated_text(test: dict[str, Any]) -> str:
    """Free generation's test accuracy and coverage, `71.7 (95.0)`; where generation is the
    served path (rationale+label), the headline itself."""
    gen = test.get("generated") or test
    if gen.get("accuracy") is None:
        return "–"
    return f"{pct(gen.get('accuracy'))} ({pct(gen.get('coverage'))})"


def grid_section(run: RunFiles) -> Section:
    m = run.metric
    s = Section(f"Table 1 — grid: {m} of both checkpoints on dev and test (Paper A)")
    if not run.results:
        s.empty = "No train/results.json: the run has not been trained yet."
        return s
    cls = run.kind == "classification"
    headers = ["config", "format", "lr", "split (label/rationale)", "seed"]
    for ck in ("best-loss", "best-accuracy"):
        headers += [f"{ck} dev" + (" [95% CI]" if cls else ""), f"{ck} test [95% CI]"]
    if cls:
        headers += ["free generation (coverage)", "BLEU", "sentBLEU"]
    headers.append("Δ test vs baseline")
    rows = []
    for cfg in run.results:
        row = [
            cfg["id"],
            str(cfg.get("format")),
            f"{cfg.get('lr'):g}" if cfg.get("lr") else "–",
            split_text(cfg),
            str(cfg.get("seed", "–")),
        ]
        best = cfg.get("best") or {}
        acc_entry = None
        for kind, ck in (("loss", "best-loss"), ("accuracy", "best-accuracy")):
            e = run.entries.get(f"{cfg['id']}/{ck}")
            test = (e or {}).get("test") or {}
            test_text = f"{run.fmt(test.get(m))} {ci(test.get(f'{m}_ci'), run.scale())}"
            dev_ci = ci(((e or {}).get("dev") or {}).get("accuracy_ci"), run.scale())
            dev_text = f"{run.fmt(dev_value(best.get(kind), m))} {dev_ci}"
            row += [dev_text.strip(), test_text.strip()]
            acc_entry = e if ck == "best-accuracy" else acc_entry
        t = (acc_entry or {}).get("test") or {}
        if cls:
            row += [generated_text(t), num(t.get("bleu"), 1), num(t.get("sentence_bleu_nltk"))]
        row.append(_paired_text(acc_entry, run))
        rows.append(row)
    s.tables.append(Table(headers, rows))
    notes = [
        "dev = the selection metric recorded by training (its interval is a Wilson 95% "
        "interval over the dev rows scored, as per-example dev scores are not kept; dev rows "
        "left out as flagged or without a rationale are in neither); test = this "
        "evaluation, with a bootstrap 95% interval, of the path `protege predict` and "
        "`protege serve` answer with: label scoring (the closed label set scored, never "
        "malformed) where the label comes first in the target, generation for rationale+label.",
    ]
    if cls:
        notes.append(
            "Free generation: test accuracy of greedy generation read back (what dev "
            "selection measured), malformed outputs counted wrong, and its coverage (the share "
            "that parsed). It, BLEU and Δ refer to the best-accuracy checkpoint. BLEU is sacrebleu "
            "corpus BLEU (13a, 0–100) of the generated rationale against the teacher's; "
            "sentBLEU is Paper A's variant (NLTK sentence BLEU, no smoothing, averaged, 0–1)."
        )
        no_refs = [
            e["name"]
            for e in run.entries.values()
            if e.get("format") != "label" and (e.get("test") or {}).get("n_rationale_refs") == 0
        ]
        if no_refs:
            field = (run.task or {}).get("rationale_field", "rationale")
            notes.append(
                f"BLEU is empty where the test file has no teacher rationales (field "
                f"`{field}`) to compare with."
            )
        if any((e.get("test") or {}).get("bleu_lowercased") for e in run.entries.values()):
            notes.append(
                "BLEU is case-insensitive here: the student's tokenizer is uncased, so it "
                "cannot reproduce the teacher's capitals."
            )
    if not run.summary:
        notes.append("No eval/summary.json yet: test columns are empty.")
    s.paragraphs += notes
    seeds = [a for a in (run.summary or {}).get("aggregates", []) if a[f"test_{m}"]["n"] > 1]
    if seeds:
        s.tables.append(_seed_table(seeds, run))
    return s


def _seed_table(aggs: list[dict[str, Any]], run: RunFiles) -> Table:
    m = run.metric
    rows = []
    for a in aggs:
        t = a[f"test_{m}"]
        std = f" ± {run.fmt(t['std'])}" if t["std"] is not None else ""
        split = "baseline" if a["baseline"] else "/".join(f"{x:g}" for x in a["split"] or [])
        rows.append(
            [
                str(a["format"]),
                "–" if a["lr"] is None else f"{a['lr']:g}",
                split,
                a["checkpoint"],
                str(len(a["seeds"])),
                run.fmt(t["mean"]) + std,
            ]
        )
    return Table(
        ["format", "lr", "split", "checkpoint", "seeds", f"test {m} mean ± std"],
        rows,
        caption="Seeds aggregated (sample standard deviation).",
    )


def eval_vs_test_section(run: RunFiles) -> Section:
    s = Section("Eval vs test per model, both checkpoints (Paper A Fig. 3)")
    points = []
    for cfg in run.results:
        for kind, ck in (("loss", "best-loss"), ("accuracy", "best-accuracy")):
            e = run.entries.get(f"{cfg['id']}/{ck}")
            dev = dev_value((cfg.get("best") or {}).get(kind), run.metric)
            if e and dev is not None:
                test = e["test"].get(run.metric)
                points.append(
                    {
                        "checkpoint": ck,
                        "baseline": bool(cfg.get("baseline")),
                        "dev": dev * run.scale(),
                        "test": test * run.scale(),
                    }
                )
    png = plots.eval_vs_test(points, run.out_dir / "eval_vs_test.png", run.metric)
    if png is None:
        s.empty = "Needs train/results.json with dev scores and eval/summary.json."
    else:
        s.figures.append(Figure(png, "Each point a checkpoint; dashed line: dev = test."))
    return s


def _series(run: RunFiles, key: str, group_by_format: bool) -> dict[str, dict[str, list]]:
    groups: dict[str, dict[str, list]] = defaultdict(dict)
    for cfg in run.results:
        pts = [
            (h["epoch"], h[key] * (1.0 if key == "eval_bleu" else 100.0))
            for h in run.history(cfg)
            if h.get(key) is not None and h.get("epoch") is not None
        ]
        label = "baseline" if cfg.get("baseline") else split_text(cfg)
        if cfg.get("lr") is not None:  # a self-fitting student has none
            label += f" lr={cfg['lr']:g}"
        if cfg.get("seed") is not None:
            label += f" s{cfg['seed']}"
        group = str(cfg.get("format")) if group_by_format else "all"
        groups[group][label] = pts
    return groups


def curves_section(run: RunFiles) -> Section:
    key = "eval_accuracy" if run.metric == "accuracy" else "eval_rougeL"
    s = Section(f"Eval {run.metric} over training (Paper A Figs 4–5)")
    for group, series in sorted(_series(run, key, group_by_format=True).items()):
        png = plots.curves(
            series,
            run.out_dir / f"curve_{key}_{_safe(group)}.png",
            f"dev {run.metric}" + (" (%)" if run.metric == "accuracy" else ""),
            f"{group}: dev {run.metric} per evaluation",
        )
        if png:
            s.figures.append(Figure(png, f"Format `{group}`, one line per configuration."))
    if not s.figures:
        s.empty = f"No train/<id>/history.jsonl with `{key}` values."
    return s


def bleu_curves_section(run: RunFiles) -> Section:
    s = Section("Rationale BLEU over training")
    series = _series(run, "eval_bleu", group_by_format=False).get("all", {})
    png = plots.curves(
        series,
        run.out_dir / "curve_eval_bleu.png",
        "dev rationale BLEU",
        "Rationale BLEU per evaluation",
    )
    if png:
        s.figures.append(Figure(png, "BLEU of generated vs teacher rationales on dev."))
    else:
        s.empty = "No history has `eval_bleu` values (baseline-only or summarization run)."
    return s


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)
