"""The split loss of Paper A, done right: each term is a mean over its own real tokens.

    L = F_label * CE(label tokens) + F_rationale * CE(rationale tokens),  F_label + F_rationale = 1

Per-token tags say which span a target token belongs to: 1 = label, 2 = rationale, 0 = padding.
Padding (tag 0, label id -100) never enters the loss. The `label` format (the baseline) uses the
plain mean CE over all real tokens instead (`weights=None`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100
PAD_TAG, LABEL_TAG, RATIONALE_TAG = 0, 1, 2


@dataclass
class LossTerms:
    """The loss to optimise and both terms, each a mean over its span's real tokens."""

    total: torch.Tensor
    label: torch.Tensor
    rationale: torch.Tensor


@dataclass
class TokenSums:
    """Summed CE and token counts per span: what evaluation accumulates over a whole dev set."""

    label_sum: float = 0.0
    label_n: int = 0
    rationale_sum: float = 0.0
    rationale_n: int = 0
    span_sum: float = 0.0
    span_n: int = 0
    """The label's own tokens, the end token excluded: the same span in every format (the
    end token is a label token in `label` targets but a rationale token after a rationale),
    so its mean CE compares a baseline with split-loss runs."""

    def add(self, other: TokenSums) -> None:
        self.label_sum += other.label_sum
        self.label_n += other.label_n
        self.rationale_sum += other.rationale_sum
        self.rationale_n += other.rationale_n
        self.span_sum += other.span_sum
        self.span_n += other.span_n

    def as_list(self) -> list[float]:
        return [
            self.label_sum,
            self.label_n,
            self.rationale_sum,
            self.rationale_n,
            self.span_sum,
            self.span_n,
        ]

    @classmethod
    def from_list(cls, v: list[float]) -> TokenSums:
        return cls(v[0], int(v[1]), v[2], int(v[3]), v[4], int(v[5]))

    def means(self) -> tuple[float | None, float | None, float | None]:
        """(label, rationale, label span) mean CE; None for a span with no token (never an
        average that counts a missing span as 0)."""
        return (
            self.label_sum / self.label_n if self.label_n else None,
            self.rationale_sum / self.rationale_n if self.rationale_n else None,
            self.span_sum / self.span_n if self.span_n else None,
        )

    def terms(self, weights: tuple[float, float] | None) -> tuple[float, float, float]:
        """(total, label mean, rationale mean), combined as `split_loss` combines them."""
        lab = self.label_sum / self.label_n if self.label_n else 0.0
        rat = self.rationale_sum / self.rationale_n if self.rationale_n else 0.0
        if weights is None:
            n = self.label_n + self.rationale_n
            total = (self.label_sum + self.rationale_sum) / n if n else 0.0
        else:
            total = weights[0] * lab + weights[1] * rat
        return total, lab, rat


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross entropy (B, T), 0 at ignored positions. Computed in float32."""
    B, T, V = logits.shape
    ce = F.cross_entropy(
        logits.float().reshape(B * T, V),
        labels.reshape(B * T),
        ignore_index=IGNORE,
        reduction="none",
    )
    return ce.reshape(B, T)


def split_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    tags: torch.Tensor,
    weights: tuple[float, float] | None,
) -> LossTerms:
    """The split loss. logits (B, T, V), labels (B, T) with -100 at padding, tags (B, T).

    A span with no real token in the batch contributes 0 (e.g. a multitask batch of only
    `predict:` examples). `weights=None` is the baseline: mean CE over all real tokens.
    """
    ce = token_ce(logits, labels)  # (B, T)
    is_label = (tags == LABEL_TAG) & (labels != IGNORE)
    is_rat = (tags == RATIONALE_TAG) & (labels != IGNORE)
    zero = ce.new_zeros(())
    label = (ce * is_label).sum() / is_label.sum() if is_label.any() else zero
    rationale = (ce * is_rat).sum() / is_rat.sum() if is_rat.any() else zero
    if weights is None:
        real = is_label | is_rat
        total = (ce * real).sum() / real.sum().clamp(min=1)
    else:
        total = weights[0] * label + weights[1] * rationale
    return LossTerms(total, label, rationale)


def token_sums(
    logits: torch.Tensor, labels: torch.Tensor, tags: torch.Tensor, n_suffix: int = 1
) -> TokenSums:
    """Summed CE and counts per span of one batch (for exact means over many batches);
    `n_suffix`: the end tokens closing every target, left out of the label span."""
    with torch.no_grad():
        ce = token_ce(logits, labels)
        real = labels != IGNORE
        is_label = (tags == LABEL_TAG) & real
        is_rat = (tags == RATIONALE_TAG) & real
        pos = torch.arange(labels.shape[1], device=labels.device)[None, :]
        last = torch.where(real, pos, -1).max(dim=1, keepdim=True).values  # either padding side
        span = is_label & (pos <= last - n_suffix)
        return TokenSums(
            float((ce * is_label).sum()),
            int(is_label.sum()),
            float((ce * is_rat).sum()),
            int(is_rat.sum()),
            float((ce * span).sum()),
            int(span.sum()),
        )
