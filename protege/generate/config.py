"""Options and result of one generation job (`protege generate`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from protege.config import require_positive
from protege.teacher.config import TeacherConfig

NLI_LABELS = ["entailment", "neutral", "contradiction"]
NLI_VERBS = {"entailment": "entails", "neutral": "is neutral to", "contradiction": "contradicts"}


@dataclass
class GenerateConfig:
    """One generation job: which recipe over which records, written where, by which teacher."""

    recipe: str = "explain"
    """A shipped recipe (5w, explain, label, reverse, summarize) or a path to a Jinja template."""
    input: str = ""
    """A JSONL/CSV/Parquet file, or a Hugging Face dataset name (`anli`, `cnn_dailymail`)."""
    split: str = "train"
    """Split to load when `input` is a hub dataset name."""
    fields: dict[str, str] = field(default_factory=dict)
    """Field names: {protege name: name in the data}, e.g. {summary: highlights}."""
    labels: list[str] = field(default_factory=lambda: list(NLI_LABELS))
    """The closed label set (explain: gold labels must be in it; label: answers must be)."""
    label_field: str = "label"
    """The field holding the gold label (explain)."""
    verbs: dict[str, str] = field(default_factory=lambda: dict(NLI_VERBS))
    """explain: the verb for each gold label in Paper A's prompt."""
    input_template: str = "Premise: {premise} Hypothesis: {hypothesis}"
    """How a record becomes `{{ input }}` in a template (label): a Python format string."""
    with_rationale: bool = False
    """label: also ask for a one-sentence reason (kept as `<output_field>_rationale`)."""
    output: str = ""
    """Output JSONL; a summary JSON is written next to it (`<name>.summary.json`)."""
    output_field: str = ""
    """Field for the parsed answer; empty means the recipe's default (5w/explain: rationale)."""
    structured: bool = True
    """Ask for the recipe's JSON schema (`response_format`) where it has one (label: the label
    an enum of `labels`; a template's `<name>.schema.json`); answers that break it are flagged."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """Which teacher answers (kind, model, endpoint, limits, prices)."""
    max_cost: float | None = None
    """Dollar budget for this job; calls stop before it could be exceeded."""
    dry_run: bool = False
    """Count calls, cached calls, tokens and cost; call nothing, write nothing."""
    limit: int | None = None
    """Use only the first N records."""
    progress: bool = True
    """Show a live progress bar."""

    def __post_init__(self) -> None:
        require_positive("max_cost", self.max_cost, zero_ok=True)
        require_positive("limit", self.limit)


@dataclass
class GenerateResult:
    """What one job did; also written to `<output>.summary.json`."""

    output: str
    n_records: int = 0
    n_requests: int = 0
    """Distinct prompts (5w: one per distinct premise)."""
    n_written: int = 0
    n_failed: int = 0
    """Records whose call failed after every retry: not written, retried by the next run."""
    n_skipped: int = 0
    """Records not sent because the budget would have been exceeded."""
    n_flagged: int = 0
    n_calls: int = 0
    """Requests sent to the teacher in this job (not counting retries)."""
    n_retries: int = 0
    n_cached: int = 0
    """Distinct prompts answered from the store, without a call."""
    cost_usd: float = 0.0
    mean_latency_s: float | None = None
    est_input_tokens: int = 0
    est_output_tokens: int = 0
    est_cost_usd: float | None = None
    """Dry-run estimate for the prompts not yet answered (an upper bound on output); None when
    the model's price is unknown."""
    est_batch_cost_usd: float | None = None
    """The same estimate at the Batch API price (`teacher.mode: batch`)."""
    n_elsewhere: int = 0
    """Prompts answered by another process on the same job while this one ran (not paid here)."""
    price_source: str | None = None
    """Where the price came from: config, genai-prices, free (local/replay); None: unknown."""
    learned: list[str] = field(default_factory=list)
    """Parameter rules learned from the endpoint's 400s in this job (kept in the store)."""
    endpoint: str | None = None
    """The endpoint id the answers are stored under (`teacher/endpoint_ids.py`)."""
    answered_elsewhere: dict[str, int] = field(default_factory=dict)
    """Prompts still to send that other endpoints answered: endpoint id -> count (not used
    unless `teacher.reuse_answers_from` names it)."""
    dry_run: bool = False
    confidence: str | None = None
    """label recipe: how the rows' confidence was computed, or why it is unavailable."""
    errors: list[str] = field(default_factory=list)
    """A few of the failures, for the summary."""

    @property
    def reduction(self) -> float:
        """Share of calls saved by reusing one answer across records (5w premises)."""
        return 1 - self.n_requests / self.n_records if self.n_records else 0.0
