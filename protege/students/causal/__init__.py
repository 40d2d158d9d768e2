"""Causal (decoder-only) students: any `AutoModelForCausalLM` (SmolLM2, Qwen3, Llama, Gemma).

Prompt = the input, through the tokenizer's chat template when it has one (a user turn and the
assistant header); completion = the target in the task's format, built exactly as for seq2seq
(segments tokenized without special tokens, eos appended, each token tagged label/rationale),
so the split loss is the same. The loss covers completion tokens only.

Batches: rows are grouped by prompt + completion length (one sequence) and left-padded with
explicit position ids, in training as in inference, so a row's numbers never depend on the
other rows of its batch; every completion then ends at the last position, and logits (the
costly vocabulary projection) are computed only over the last longest-completion positions. Label scoring runs the prompts once, then every candidate over
the prompts' KV cache (repeated per candidate).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from protege.errors import ConfigError
from protege.formats import Example, TaskConfig
from protege.students.base import Encoded, Student, StudentOptions, encode_targets
from protege.students.causal.prompts import completion_affixes, prompt_ids
from protege.train.loss import IGNORE, PAD_TAG


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of rows padded on the left to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore left padding: 0 at each row's first real token."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


class CausalStudent(Student):
    kind = "causal"

    @classmethod
    def load(
        cls, path: str, task: TaskConfig | None, options: StudentOptions, seed: int | None = None
    ) -> CausalStudent:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path)
        except OSError as e:
            raise ConfigError(f"cannot load causal student {path!r}: {e}") from e
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token  # masked everywhere it is used as padding
        if options.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        if options.lora:
            model = _with_lora(model, options)
        return cls(model, tok, task)

    @classmethod
    def runtimes(cls):
        from protege.students.causal.ct2 import CT2_CAUSAL_MARKER, CT2CausalBackend

        return {CT2_CAUSAL_MARKER: CT2CausalBackend}

    @classmethod
    def exporters(cls):
        from protege.students.causal.ct2 import export_ct2_causal

        return {"ct2": export_ct2_causal}

    # ---- features --------------------------------------------------------------------------

    def target_affixes(self) -> tuple[list[int], list[int]]:
        return completion_affixes(self.tok)

    def prompt_ids(self, source: str, max_source_len: int | None = None) -> list[int]:
        return prompt_ids(self.tok, source, max_source_len or self.max_source_len)

    def encode(self, examples: list[Example], max_source_len: int, max_target_len: int) -> list:
        targets = encode_targets(examples, self.tok, max_target_len)
        return [
            Encoded(self.prompt_ids(e.source, max_source_len), ids, tags, e.uid, reach)
            for e, (ids, tags, reach) in zip(examples, targets, strict=True)
        ]

    def lengths(self, items: list[Encoded]) -> tuple[list[int], list[int]]:
        # One sequence: a batch costs its longest prompt + completion.
        return [len(e.input_ids) + len(e.target_ids) for e in items], [0] * len(items)

    def collate(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        """Left-padded prompt+completion, so every completion ends at the last position and
        logits are needed only for the last (longest completion + 1) positions; labels -100
        on the prompt and the padding; position ids that skip the padding."""
        rows = [e.input_ids + e.target_ids for e in items]
        ids, mask = left_pad(rows, self.pad_id)
        width = ids.shape[1]
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        tags = torch.full((len(items), width), PAD_TAG, dtype=torch.long)
        for i, e in enumerate(items):
            m = len(e.target_ids)
            labels[i, width - m :] = torch.tensor(e.target_ids)
            tags[i, width - m :] = torch.tensor(e.tags)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions(mask),
            "labels": labels,
            "tags": tags,
        }

    def logits(self, model, batch):
        T = batch["input_ids"].shape[1]
        real = (batch["labels"] != IGNORE).any(0).nonzero()  # (N, 1) positions with a target
        start = int(real.min()) - 1 if len(real) else T - 1  # first position predicting one
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            logits_to_keep=T - start,
        ).logits  # (B, T - start, V): positions start .. T-1
        # Position p predicts token p + 1.
        return logits[:, :-1], batch["labels"][:, start + 1 :], batch["tags"][:, start + 1 :]

    def save(self, model, dest: Path) -> None:
        if hasattr(model, "merge_and_unload"):  # peft: save a plain model, LoRA merged in
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(dest)
        self.tok.save_pretrained(dest)

    # ---- inference -------------------------------------------------------------------------

    def _prompts(self, sources: list[str]):
        ids, mask = left_pad([self.prompt_ids(s) for s in sources], self.pad_id)
        return ids.to(self.device), mask.to(self.device)

    def generate_ids(self, sources: list[str], max_new_tokens: int, num_beams: int = 1):
        ids, mask = self._prompts(sources)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                do_sample=False,
                pad_token_id=self.pad_id,
                eos_token_id=self.tok.eos_token_id,
            )
        new = out[:, ids.shape[1] :].tolist()
        special = set(self.tok.all_special_ids)
        texts = [t.strip() for t in self.tok.batch_decode(new, skip_special_tokens=True)]
        return texts, [sum(1 for t in row if t not in special) for row in new]

    def generate(self, sources: list[str], max_new_tokens: int, num_beams: int = 1) -> list[str]:
        return self.generate_ids(sources, max_new_tokens, num_beams)[0]

    def _prompt_pass(self, sources: list[str]):
        ids, mask = self._prompts(sources)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions(mask),
            use_cache=True,
            logits_to_keep=1,
        )
        return out, mask

    def first_logprobs(self, sources: list[str], token_ids: list[int]) -> list[list[float]]:
        with torch.inference_mode():
            out, _ = self._prompt_pass(sources)
            lp = out.logits[:, -1].float().log_softmax(-1)[:, token_ids]  # (B, J)
        return lp.cpu().tolist()

    def token_logprobs(
        self, sources: list[str], candidates: list[list[int]], prefix: list[int] = ()
    ) -> list[list[list[float]]]:
        """One pass over the prompts, then every candidate over their KV cache."""
        assert not prefix, "a causal completion has no target prefix"
        b, k = len(sources), len(candidates)
        t = max(len(c) for c in candidates)
        with torch.inference_mode():
            out, mask = self._prompt_pass(sources)
            first = out.logits[:, -1].float().log_softmax(-1)  # (B, V): the candidates' first
            lp = torch.zeros((b, k, t))
            for j, c in enumerate(candidates):
                lp[:, j, 0] = first[:, c[0]].cpu()
            if t > 1:
                cache = out.past_key_values
                cache.batch_repeat_interleave(k)  # (B*K, ...): row i*k + j = input i, cand j
                cand = torch.full((k, t - 1), self.pad_id, dtype=torch.long)
                cmask = torch.zeros((k, t - 1), dtype=torch.long)
                for j, c in enumerate(candidates):
                    cand[j, : len(c) - 1] = torch.tensor(c[:-1])
                    cmask[j, : len(c) - 1] = 1
                cand, cmask = cand.repeat(b, 1).to(self.device), cmask.repeat(b, 1).to(self.device)
                n_real = mask.sum(-1).repeat_interleave(k)[:, None]  # (B*K, 1)
                step = torch.arange(t - 1, device=self.device)[None]
                logits = self.model(
                    input_ids=cand,
                    attention_mask=torch.cat([mask.repeat_interleave(k, 0), cmask], -1),
                    position_ids=n_real + step,
                    past_key_values=cache,
                ).logits.float()  # (B*K, T-1, V)
                rest = logits.log_softmax(-1)
                for j, c in enumerate(candidates):
                    target = torch.tensor(c[1:], device=self.device)
                    rows = rest[j::k, : len(c) - 1]  # (B, len-1, V)
                    got = rows.gather(-1, target[None, :, None].expand(b, -1, 1)).squeeze(-1)
                    lp[:, j, 1 : len(c)] = got.cpu()
        return [[lp[i, j, : len(c)].tolist() for j, c in enumerate(candidates)] for i in range(b)]


def _with_lora(model, options: StudentOptions):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise ConfigError("student.lora needs peft: pip install 'protege[lora]'") from e
    config = LoraConfig(
        r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
