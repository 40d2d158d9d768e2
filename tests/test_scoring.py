"""Closed-label scoring: the choice rules by hand, candidate ids, and agreement with greedy."""

from __future__ import annotations

import pytest
from serve_util import nli_rows, trained_model

from protege.formats import TaskConfig
from protege.serve.scoring import Candidates, choose, supports_scoring


def test_greedy_rule_follows_first_token_sum_rule_follows_total():
    ids = [[1, 2, 9], [3, 9]]
    lps = [[-0.5, -3.0, -0.1], [-0.9, -0.1]]
    assert choose(ids, lps, "greedy") == 0  # -0.5 beats -0.9 at the first token
    assert choose(ids, lps, "sum") == 1  # -1.0 beats -3.6 in total


def test_greedy_rule_walks_shared_prefixes():
    ids = [[1, 2, 9], [1, 3, 9], [4, 9]]
    lps = [[-0.2, -1.0, -0.1], [-0.2, -0.5, -3.0], [-1.5, -0.01]]
    assert choose(ids, lps, "greedy") == 1  # token 1, then 3 (-0.5) over 2 (-1.0)
    assert choose(ids, lps, "sum") == 0  # totals -1.3, -3.7, -1.51


def test_sum_rule_exact_totals():
    ids = [[1, 2, 9], [1, 3, 9], [4, 9]]
    lps = [[-0.2, -1.0, -0.1], [-0.2, -0.5, -3.0], [-1.0, -0.01]]
    assert choose(ids, lps, "sum") == 2  # -1.01 beats -1.3 and -3.7


def test_candidates_match_trainer_targets(tiny_nli):
    from protege.students.seq2seq.build import load_tokenizer

    tok = load_tokenizer(tiny_nli)
    plain = Candidates.for_task(TaskConfig(format="label"), tok)
    assert plain.ids[0] == [4372, 14162, 3672, tok.sep_token_id]  # en ##tail ##ment [SEP]
    assert plain.ids[1] == [8699, tok.sep_token_id]  # neutral [SEP]
    with_rationale = Candidates.for_task(TaskConfig(format="label+rationale"), tok)
    explanation = tok(" Explanation:", add_special_tokens=False).input_ids[0]
    assert [c[-1] for c in with_rationale.ids] == [explanation] * 3


def test_supports_scoring():
    assert supports_scoring(TaskConfig(format="label"))
    assert supports_scoring(TaskConfig(format="multitask"))
    assert not supports_scoring(TaskConfig(format="rationale+label"))
    assert not supports_scoring(TaskConfig(type="summarization", format="label"))


@pytest.fixture(scope="session")
def tiny_nli(pytestconfig):
    return trained_model(pytestconfig)


def test_token_logprobs_equal_the_training_loss(tiny_nli):
    """The batched decoder pass gives the same log-likelihood as the model's own loss."""
    import torch

    from protege.serve.predictor import Predictor

    p = Predictor.load(tiny_nli)
    sources = [p.source(r) for r in nli_rows("dev", 3)]
    ids = p.candidates.ids
    lps = p.backend.token_logprobs(sources, ids)
    model, tok = p.backend.model, p.backend.tok
    for i, source in enumerate(sources):
        enc = tok([source], return_tensors="pt")
        for k, cand in enumerate(ids):
            with torch.no_grad():
                loss = model(**enc, labels=torch.tensor([cand])).loss.item()
            assert sum(lps[i][k]) == pytest.approx(-loss * len(cand), abs=1e-3)


def test_scoring_picks_greedy_label_wherever_greedy_is_valid(tiny_nli):
    from protege.serve.predictor import Predictor

    p = Predictor.load(tiny_nli)
    rows = nli_rows("dev") + nli_rows("train", 48)
    generated = p.predict(rows, fast=False)
    scored = p.predict(rows, fast=True)
    valid = [(g["label"], s["label"]) for g, s in zip(generated, scored, strict=True) if g["label"]]
    assert len(valid) >= len(rows) // 2  # the property is checked on real, valid outputs
    assert len({g for g, _ in valid}) >= 2  # ... with more than one label
    assert all(g == s for g, s in valid), [v for v in valid if v[0] != v[1]]
    assert all(s["label"] in p.task.labels for s in scored)  # never malformed


def test_one_step_path_equals_the_full_trie_walk(tiny_nli):
    """Distinct first tokens: the one-decoder-step fast path picks what the full walk picks."""
    from protege.serve.predictor import Predictor

    p = Predictor.load(tiny_nli)
    rows = nli_rows("dev", 40)
    ids = p.candidates.ids
    full = p.backend.token_logprobs([p.source(r) for r in rows], ids)
    walked = [p.candidates.labels[choose(ids, lps, "greedy")] for lps in full]
    assert [x["label"] for x in p.predict(rows)] == walked
    summed = Predictor(p.backend, p.task, rule="sum").predict(rows)
    assert [x["label"] for x in summed] == [
        p.candidates.labels[choose(ids, lps, "sum")] for lps in full
    ]


@pytest.mark.parametrize("name", ["Rationale", "Explanation"])
@pytest.mark.parametrize("forced_eos", [False, True])
def test_label_budget_reaches_every_label_and_the_whole_connector(name, forced_eos):
    """MiniLM writes ` Rationale:` as three pieces; a budget of label + 2 stopped before the
    colon. The budget must cover the longest target up to its connector's end (as the trainer
    builds it), plus the step a forced eos takes."""
    from protege.formats import make_examples
    from protege.students.seq2seq.build import load_tokenizer, resolve_model
    from protege.train.data import encode

    tok = load_tokenizer(resolve_model("protege:tiny-t5"))
    task = TaskConfig(format="label+rationale", rationale_name=name)
    rows = [
        {"premise": "p", "hypothesis": "h", "label": lab, "rationale": "because."}
        for lab in task.labels
    ]
    encoded = encode([e for r in rows for e in make_examples(task, r)], tok, 32, 64, 101)
    budget = Candidates.label_budget(task, tok, 101, forced_eos)
    assert budget == max(e.label_reach for e in encoded) + forced_eos
    label_only = Candidates.label_budget(TaskConfig(format="label"), tok, 101, forced_eos)
    assert label_only == Candidates.for_task(TaskConfig(format="label"), tok, 101).max_len


def _free_greedy(table: dict[tuple[int, ...], dict[int, float]], max_len: int = 4) -> list[int]:
    """Free greedy decoding over a hand-made next-token table (full vocabulary)."""
    out: list[int] = []
    while len(out) < max_len and tuple(out) in table:
        nxt = table[tuple(out)]
        out.append(max(nxt, key=nxt.get))
        if out[-1] == 9:
            break
    return out


def _candidate_logprobs(table, ids):
    return [[table[tuple(c[:t])][c[t]] for t in range(len(c))] for c in ids]


def test_greedy_rule_agrees_with_free_greedy_exactly_when_it_emits_a_candidate():
    ids = [[1, 9], [2, 9]]  # label A, label B, each then eos (9)
    # Free greedy emits [2, 9], candidate B's exact tokens: the rule picks B.
    table = {(): {1: -2.0, 2: -0.5, 7: -1.0}, (1,): {9: -0.1}, (2,): {9: -0.1, 5: -3.0}}
    assert _free_greedy(table) == [2, 9]
    assert choose(ids, _candidate_logprobs(table, ids)) == 1
    # Free greedy emits [7, 9], say "b" lowercased, which parse_output reads as label B too;
    # not a candidate's tokens, so no guarantee: the rule picks A (token 1 beats token 2).
    table = {(): {1: -1.0, 2: -2.0, 7: -0.5}, (1,): {9: -0.1}, (2,): {9: -0.1}, (7,): {9: 0.0}}
    assert _free_greedy(table) == [7, 9]
    assert choose(ids, _candidate_logprobs(table, ids)) == 0
