"""The split loss against numbers computed by hand (tiny logits, V = 2).

With two classes, logits [0, 0] give CE ln 2 for either target; logits [ln 3, 0] give
CE ln(4/3) for target 0 and ln 4 for target 1.
"""

import math

import pytest
import torch

from protege.train.loss import IGNORE, TokenSums, split_loss, token_sums

LN2, LN4, LN43 = math.log(2), math.log(4), math.log(4 / 3)
L3 = math.log(3)


def batch(pad_logit: float = 0.0):
    # Row 0: a two-token label span then one rationale token. Row 1: one rationale token, 2 pads.
    logits = torch.tensor(
        [
            [[0.0, 0.0], [L3, 0.0], [L3, 0.0]],
            [[0.0, 0.0], [pad_logit, -pad_logit], [pad_logit, 0.0]],
        ]
    )  # (B=2, T=3, V=2)
    labels = torch.tensor([[0, 1, 0], [1, IGNORE, IGNORE]])
    tags = torch.tensor([[1, 1, 2], [2, 0, 0]])
    return logits, labels, tags


def test_terms_are_means_over_their_own_real_tokens():
    t = split_loss(*batch(), weights=(0.25, 0.75))
    label = (LN2 + LN4) / 2  # the whole label span, not just its first token
    rationale = (LN43 + LN2) / 2
    assert t.label.item() == pytest.approx(label, abs=1e-6)
    assert t.rationale.item() == pytest.approx(rationale, abs=1e-6)
    assert t.total.item() == pytest.approx(0.25 * label + 0.75 * rationale, abs=1e-6)


def test_baseline_is_plain_mean_over_real_tokens():
    t = split_loss(*batch(), weights=None)
    assert t.total.item() == pytest.approx((LN2 + LN4 + LN43 + LN2) / 4, abs=1e-6)


def test_padding_never_counts():
    a = split_loss(*batch(0.0), weights=(0.5, 0.5))
    b = split_loss(*batch(50.0), weights=(0.5, 0.5))
    assert a.total.item() == pytest.approx(b.total.item(), abs=1e-6)
    assert a.total.item() == pytest.approx(0.5 * (LN2 + LN4) / 2 + 0.5 * (LN43 + LN2) / 2, abs=1e-6)


def test_missing_span_contributes_zero():
    logits, labels, tags = batch()
    tags = torch.where(tags == 2, torch.ones_like(tags), tags)  # everything is label
    t = split_loss(logits, labels, tags, weights=(0.75, 0.25))
    assert t.rationale.item() == 0.0
    assert t.total.item() == pytest.approx(0.75 * (LN2 + LN4 + LN43 + LN2) / 4, abs=1e-6)


def test_token_sums_combine_like_split_loss():
    logits, labels, tags = batch()
    sums = TokenSums()
    sums.add(token_sums(logits[:1], labels[:1], tags[:1]))
    sums.add(token_sums(logits[1:], labels[1:], tags[1:]))
    assert (sums.label_n, sums.rationale_n) == (2, 2)
    total, label, rationale = sums.terms((0.25, 0.75))
    t = split_loss(logits, labels, tags, weights=(0.25, 0.75))
    assert total == pytest.approx(t.total.item(), abs=1e-6)
    assert label == pytest.approx(t.label.item(), abs=1e-6)
    assert sums.terms(None)[0] == pytest.approx(split_loss(logits, labels, tags, None).total.item())


def test_gradient_reaches_only_real_tokens():
    logits, labels, tags = batch()
    logits.requires_grad_(True)
    split_loss(logits, labels, tags, weights=(0.5, 0.5)).total.backward()
    assert logits.grad[1, 1:].abs().sum().item() == 0.0  # pads
    assert logits.grad[0].abs().sum().item() > 0


def test_label_span_leaves_out_the_end_token():
    logits = torch.zeros(2, 4, 5)
    labels = torch.tensor([[1, 2, 3, IGNORE], [1, 4, IGNORE, IGNORE]])
    tags = torch.tensor([[1, 1, 1, 0], [1, 2, 0, 0]])  # row 2: label then a rationale-tagged end
    sums = token_sums(logits, labels, tags, n_suffix=1)
    assert (sums.label_n, sums.rationale_n, sums.span_n) == (4, 1, 3)
    assert sums.means()[2] == pytest.approx(math.log(5))
    assert TokenSums().means() == (None, None, None)
