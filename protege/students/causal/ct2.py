"""CTranslate2 export of causal students (the Llama family: Llama, SmolLM2, Qwen2/3, Mistral,
Gemma), and a predictor backend over `ctranslate2.Generator`.

The prompt is built exactly as in training (`protege.students.causal.prompt_ids`: the chat
template's user turn and assistant header). Label scoring scores prompt + candidate with
`score_batch` (CTranslate2 gives log p of every token after the first).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from protege.data.io import write_json
from protege.errors import ProtegeError
from protege.formats import TASK_FILE
from protege.students.causal.prompts import completion_affixes, prompt_ids
from protege.students.ct2base import QUANTIZATIONS, _ct2, model_type
from protege.students.dirs import export_dir

CT2_CAUSAL_MARKER = "protege_ct2_causal.json"
"""An export dir of this runtime holds it (what it was exported from, and how)."""


def export_ct2_causal(
    model_dir: str | Path, output: str | Path | None = None, quantization: str = "int8"
) -> Path:
    """Convert a causal student dir to a CTranslate2 generator; returns the export dir."""
    from transformers import AutoTokenizer

    ctranslate2 = _ct2()
    model_dir = Path(model_dir)
    if not (model_dir / TASK_FILE).exists():
        raise ProtegeError(f"{model_dir}: not a protege model directory (no {TASK_FILE})")
    if quantization not in QUANTIZATIONS:
        raise ProtegeError(f"unknown quantization {quantization!r} ({', '.join(QUANTIZATIONS)})")
    out = Path(output) if output else model_dir.parent / f"{model_dir.name}-ct2-{quantization}"

    def build(tmp: Path) -> None:
        try:
            ctranslate2.converters.TransformersConverter(str(model_dir)).convert(
                str(tmp / "ct2"), quantization=quantization, force=True
            )
        except ValueError as e:  # the converter's "No conversion is registered for ..."
            raise ProtegeError(f"{model_dir}: CTranslate2 cannot convert this model: {e}") from e
        for item in (tmp / "ct2").iterdir():
            item.rename(tmp / item.name)
        (tmp / "ct2").rmdir()
        AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(tmp)
        shutil.copy(model_dir / TASK_FILE, tmp / TASK_FILE)
        if (model_dir / "generation_config.json").exists():  # the decoding training recorded
            shutil.copy(model_dir / "generation_config.json", tmp / "generation_config.json")
        write_json(
            tmp / CT2_CAUSAL_MARKER,
            {
                "source": str(model_dir.resolve()),
                "model_type": model_type(model_dir),
                "quantization": quantization,
            },
        )

    return export_dir(out, build)


class CT2CausalBackend:
    """`ctranslate2.Generator` behind the predictor's backend interface."""

    def __init__(
        self,
        export_dir: str | Path,
        device: str = "cpu",
        max_source_len: int = 512,
        threads: int | None = None,
    ):
        from transformers import AutoTokenizer

        ctranslate2 = _ct2()
        self.tok = AutoTokenizer.from_pretrained(str(export_dir))
        threads = threads or min(4, os.cpu_count() or 1)
        self.generator = ctranslate2.Generator(
            str(export_dir), device=device, intra_threads=threads
        )
        self.max_source_len = max_source_len

    def _prompt(self, source: str) -> list[int]:
        return prompt_ids(self.tok, source, self.max_source_len)

    start_id = None  # no decoder start: candidates follow the prompt directly

    def target_affixes(self) -> tuple[list[int], list[int]]:
        return completion_affixes(self.tok)

    def token_logprobs(
        self, sources: list[str], candidates: list[list[int]], prefix: list[int] = ()
    ) -> list[list[list[float]]]:
        assert not prefix, "a causal completion has no target prefix"
        prompts = [self._prompt(s) for s in sources]
        k = len(candidates)
        seqs = [self.tok.convert_ids_to_tokens(p + c) for p in prompts for c in candidates]
        results = self.generator.score_batch(seqs, max_input_length=0)
        # log_probs[t] = log p(token t+1 | tokens <= t): the candidate's are the last len(c).
        return [
            [list(results[i * k + j].log_probs[-len(c) :]) for j, c in enumerate(candidates)]
            for i in range(len(prompts))
        ]

    def first_logprobs(self, sources: list[str], token_ids: list[int]) -> list[list[float]]:
        import numpy as np

        out = []
        for source in sources:  # one at a time: step-0 logits of a batch of unequal prompts
            # would come from CTranslate2's constrained prompt decoding, not the prompt's end
            (r,) = self.generator.generate_batch(
                [self.tok.convert_ids_to_tokens(self._prompt(source))],
                max_length=1,
                beam_size=1,
                include_prompt_in_result=False,
                return_logits_vocab=True,
            )
            logits = np.asarray(r.logits[0][0], dtype=np.float64)  # (V,) raw logits, step 0
            top = logits.max()
            lse = top + np.log(np.exp(logits - top).sum())
            out.append([float(logits[t] - lse) for t in token_ids])
        return out

    def generate(self, sources: list[str], max_new_tokens: int, num_beams: int = 1) -> list[str]:
        prompts = [self.tok.convert_ids_to_tokens(self._prompt(s)) for s in sources]
        results = self.generator.generate_batch(
            prompts,
            max_length=max_new_tokens,
            beam_size=num_beams,
            include_prompt_in_result=False,
            end_token=self.tok.eos_token,
        )
        ids = [r.sequences_ids[0] for r in results]
        return [t.strip() for t in self.tok.batch_decode(ids, skip_special_tokens=True)]
