"""Targets built the way the model's tokenizer builds them (`tokenizer(text_target=...)`).

Tokenizers put special tokens around a target: T5 `... </s>`, BART `<s> ... </s>`, BERT
`[CLS] ... [SEP]`. protege tokenizes a target's label and rationale segments on their own (so
each token keeps its span tag) and wraps them in the same tokens. A leading token that is the
model's decoder start token is dropped: the decoder input already begins with it (the
BERT2BERT student starts decoding at [CLS]). What remains before the text (BART's `<s>`,
which bart-base's generation config forces with `forced_bos_token_id: 0`) is the target
*prefix*: generation emits it first, so label scoring feeds it to the decoder and a label
budget counts it. (A causal completion is no `text_target`: a tokenizer's BOS goes before the
prompt, never before the completion; see `students.causal.completion_affixes`.)
"""

from __future__ import annotations

PROBE = "x"


def eos_id(tok) -> int:
    """BERT tokenizers have no eos; their [SEP] ends a sequence."""
    return tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id


def target_affixes(tok, decoder_start_id: int | None) -> tuple[list[int], list[int]]:
    """(prefix, suffix) special-token ids around a target's text, as `text_target` adds them."""
    bare = tok(PROBE, add_special_tokens=False)["input_ids"]
    full = tok(text_target=PROBE)["input_ids"]
    start = next(
        (i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), None
    )
    if start is None:  # a tokenizer that rewrites the text: fall back to "text + eos"
        return [], [eos_id(tok)]
    prefix, suffix = list(full[:start]), list(full[start + len(bare) :])
    if prefix and prefix[0] == decoder_start_id:
        prefix = prefix[1:]
    return prefix, suffix or [eos_id(tok)]


def decoder_start_id(model) -> int | None:
    """The model's decoder start token (generation config first, as `generate` reads it)."""
    start = getattr(model.generation_config, "decoder_start_token_id", None)
    if start is None:
        start = getattr(model.config, "decoder_start_token_id", None)
    return start
