"""Closed-label-set scoring: pick a label by scoring each candidate instead of free generation.

One encoder pass, one batched decoder pass over every (input, candidate) pair, no malformed
outputs. A candidate is the label's display form tokenized exactly as the trainer builds
targets (segment ids with `add_special_tokens=False`), followed by the token that ends the
label span: eos for the `label` and `multitask` formats, the first token of the rationale
connector (` Explanation:`) for `label+rationale`. The target prefix the trainer puts before
every target (BART's `<s>`, forced by its generation config) is fed to the decoder first and
not scored. `rationale+label` puts the label after the
rationale, so scoring the label alone is not valid there: those students generate.

Two rules turn per-token log-probs into a choice:

- `greedy` (default): greedy decoding constrained to the candidates' token trie. The exact
  condition for agreeing with free greedy generation: if free greedy emits one candidate's
  exact token sequence (the label as the trainer tokenizes it, then its end token), each of
  those tokens was the argmax of the full vocabulary, hence also of the candidates' tokens,
  and this rule picks that label. Free greedy output that *parses* to a label through other
  tokens (another casing or tokenization, the label without its end token, a label followed
  by more text) carries no such guarantee: the rule may then pick another label. It never
  produces a malformed output.
- `sum`: the candidate with the largest summed log-prob (the usual likelihood ranking).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from protege.formats import TaskConfig, display_label
from protege.targets import target_affixes

Rule = Literal["greedy", "sum"]


def supports_scoring(task: TaskConfig) -> bool:
    """Classification students whose label comes first in the target can be scored."""
    return task.type == "classification" and task.format != "rationale+label"


@dataclass
class Candidates:
    """The token sequences scored for one task: `ids[k]` spells `labels[k]` plus its end."""

    labels: list[str]
    ids: list[list[int]]
    prefix: list[int] = field(default_factory=list)
    """Tokens every target starts with (BART's `<s>`): decoder input, not scored."""

    @classmethod
    def for_task(
        cls,
        task: TaskConfig,
        tok,
        decoder_start_id: int | None = None,
        affixes: tuple[list[int], list[int]] | None = None,
    ) -> Candidates:
        """`affixes`: (prefix, suffix) of the model's targets where they are not what the
        tokenizer puts around a `text_target` (a causal completion: none, then eos)."""
        prefix, suffix = affixes or target_affixes(tok, decoder_start_id)
        if task.format == "label+rationale":
            end = tok(f" {task.rationale_name}:", add_special_tokens=False).input_ids[0]
        else:
            end = suffix[0]
        ids = [
            tok(display_label(label), add_special_tokens=False).input_ids + [end]
            for label in task.labels
        ]
        return cls(list(task.labels), ids, prefix)

    @classmethod
    def label_budget(
        cls,
        task: TaskConfig,
        tok,
        decoder_start_id: int | None = None,
        forced_eos: bool = False,
        affixes: tuple[list[int], list[int]] | None = None,
    ) -> int:
        """New tokens that free generation needs to write any label so `parse_output` reads
        it, and no more: the forced prefix (BART's `<s>`), the longest label, then what ends
        it: the end token, or every real token of the connector (` Rationale:` is three
        WordPiece tokens for MiniLM) for `label+rationale`. A generation config that forces
        the end token at the last step (`forced_eos_token_id`) would overwrite the connector's
        last token, so one more is counted there."""
        c = cls.for_task(task, tok, decoder_start_id, affixes)
        if task.format != "label+rationale":
            return c.max_len
        connector = tok(f" {task.rationale_name}:", add_special_tokens=False).input_ids
        longest = max(len(ids) - 1 for ids in c.ids)  # label tokens, without the end token
        return len(c.prefix) + longest + len(connector) + int(forced_eos)

    @property
    def max_len(self) -> int:
        """Generated tokens that spell the longest candidate, the forced prefix included."""
        return len(self.prefix) + max(len(c) for c in self.ids)


def choose(ids: list[list[int]], logprobs: list[list[float]], rule: Rule = "greedy") -> int:
    """Index of the chosen candidate given each candidate's per-token log-probs.

    `logprobs[k][t]` is log p(ids[k][t] | ids[k][:t], input). Candidates sharing a prefix see
    the same distribution at the next position, which is what makes the trie walk exact.
    """
    if rule == "sum":
        totals = [sum(lp) for lp in logprobs]
        return max(range(len(ids)), key=lambda k: totals[k])
    alive = list(range(len(ids)))
    t = 0
    while len(alive) > 1:
        # Candidates still alive share ids[:t]; pick the best next token among them.
        steps = [k for k in alive if t < len(ids[k])]
        if not steps:  # duplicates: identical sequences
            return alive[0]
        best = max(steps, key=lambda k: logprobs[k][t])
        alive = [k for k in steps if ids[k][t] == ids[best][t]]
        t += 1
    return alive[0]


def sequence_score(logprobs: list[float]) -> float:
    """Probability of the whole candidate sequence (a confidence, not calibrated)."""
    return math.exp(sum(logprobs))
