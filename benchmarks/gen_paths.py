"""The generate reference paths of `serve_latency.py`: HF generate constrained to the label
set's token trie (always a valid label), and a Paper A student's label + rationale written to
its real target length."""

from __future__ import annotations


def constrained_generate(p, sources: list[str]) -> list[str | None]:
    """HF generate restricted to the label set's token trie (always a valid label)."""
    import torch

    b = p.backend
    cands = p.candidates.ids
    eos = cands[0][-1]

    def allowed(_batch_id, ids):
        prefix = ids.tolist()[1:]  # drop the decoder start token
        nxt = {c[len(prefix)] for c in cands if len(c) > len(prefix) and c[: len(prefix)] == prefix}
        return sorted(nxt) or [eos]

    with torch.inference_mode():
        enc = b._encode(sources)
        out = b.model.generate(
            **enc,
            max_new_tokens=p.candidates.max_len,
            do_sample=False,
            num_beams=1,
            prefix_allowed_tokens_fn=allowed,
        )
    seqs = out[:, 1:].tolist()
    labels = []
    for s in seqs:
        match = [lab for lab, c in zip(p.candidates.labels, cands, strict=True) if s[: len(c)] == c]
        labels.append(match[0] if match else None)
    return labels


def rationale_generate(p, source: str, n_tokens: int) -> str:
    """HF generate as a Paper A (label+rationale) student is served: it writes the label, then
    the rationale. Random weights never stop on their own, so each input generates exactly the
    length of its real target ("{Label} Explanation: {gpt-3.5 rationale}" + eos, tokenized)."""
    import torch

    b = p.backend
    with torch.inference_mode():
        enc = b._encode([source])
        out = b.model.generate(
            **enc, min_new_tokens=n_tokens, max_new_tokens=n_tokens, do_sample=False, num_beams=1
        )
    return b.tok.decode(out[0], skip_special_tokens=True)


def target_lengths(records: list[dict], tok) -> dict[str, int]:
    """Tokens in each row's label+rationale target, as the trainer builds it (+ eos)."""
    from protege.formats import TaskConfig, make_examples

    task = TaskConfig(format="label+rationale")
    out = {}
    for r in records:
        [ex] = make_examples(task, r)
        out[r["uid"]] = len(tok(ex.target, add_special_tokens=False)["input_ids"]) + 1
    return out
