"""How a causal student's prompt and completion are written in tokens: shared by its PyTorch
training and inference and by its CTranslate2 runtime."""

from __future__ import annotations

from protege.students.base import eos_id


def prompt_ids(tok, source: str, max_source_len: int = 512) -> list[int]:
    """Token ids of the prompt for `source`: the chat template's user turn and assistant
    header when the tokenizer has a template, else the source and a newline."""
    ids = tok(source, add_special_tokens=False).input_ids
    if len(ids) > max_source_len:  # truncate the input, never the template around it
        source = tok.decode(ids[:max_source_len])
    if tok.chat_template:
        text = tok.apply_chat_template(
            [{"role": "user", "content": source}], tokenize=False, add_generation_prompt=True
        )
        return tok(text, add_special_tokens=False).input_ids
    return tok(source + "\n").input_ids


def completion_affixes(tok) -> tuple[list[int], list[int]]:
    """(prefix, suffix) of a completion as `encode_targets` builds it: nothing before, eos
    after. A tokenizer that puts a BOS before every text (Llama-3, Gemma, Mistral) puts it
    before the prompt; a completion never starts with one."""
    return [], [eos_id(tok)]
