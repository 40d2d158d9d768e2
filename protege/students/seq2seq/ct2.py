"""CTranslate2 export of a student, and a predictor backend over `ctranslate2.Translator`.

The converter handles T5 and BART students; transformers' `EncoderDecoderModel` (the BERT2BERT
MiniLM student) has no CTranslate2 loader, so exporting it is a clear error, not a crash deep
inside the converter. An export dir is self-contained: the CTranslate2 model, the tokenizer,
`protege_task.json` and `protege_ct2.json` (what it was exported from, and how).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from protege.data.io import write_json
from protege.errors import ProtegeError
from protege.formats import TASK_FILE, clip_sources
from protege.students.ct2base import QUANTIZATIONS, _ct2, model_type
from protege.students.dirs import export_dir
from protege.targets import eos_id

CT2_MARKER = "protege_ct2.json"
"""An export dir of this runtime holds it (what it was exported from, and how)."""
SUPPORTED = ("t5", "mt5", "bart", "mbart")
# Config attributes CTranslate2's BART loader reads that transformers 5 no longer defines
# (`'BartConfig' object has no attribute 'normalize_before'`), with the values transformers'
# own implementation has: BART is post-norm, mBART pre-norm, both with an embedding norm.
CONVERTER_DEFAULTS = {
    "bart": {"normalize_before": False, "normalize_embedding": True},
    "mbart": {"normalize_before": True, "normalize_embedding": True},
}


def export_ct2(
    model_dir: str | Path, output: str | Path | None = None, quantization: str = "int8"
) -> Path:
    """Convert a T5/BART student dir to CTranslate2; returns the export dir.

    Written to a temp dir and renamed, so a half-written export never exists; an existing
    export is an error rather than something silently replaced.
    """
    from protege.students.seq2seq.build import load_tokenizer

    ctranslate2 = _ct2()
    model_dir = Path(model_dir)
    if not (model_dir / TASK_FILE).exists():
        raise ProtegeError(f"{model_dir}: not a protege model directory (no {TASK_FILE})")
    kind = model_type(model_dir)
    if kind not in SUPPORTED:
        raise ProtegeError(
            f"{model_dir}: CTranslate2 export supports T5 and BART students, not {kind!r}"
            + (
                " (a BERT2BERT EncoderDecoderModel, such as protege:minilm-encdec, has no "
                "CTranslate2 converter: serve it as it is, `protege serve MODEL_DIR`, or train "
                "a T5/BART student, e.g. model=t5-small, for an int8 export)"
                if kind == "encoder-decoder"
                else ""
            )
        )
    if quantization not in QUANTIZATIONS:
        raise ProtegeError(f"unknown quantization {quantization!r} ({', '.join(QUANTIZATIONS)})")
    out = Path(output) if output else model_dir.parent / f"{model_dir.name}-ct2-{quantization}"

    def build(tmp: Path) -> None:
        source = _converter_source(model_dir, kind, tmp / "src")
        ctranslate2.converters.TransformersConverter(str(source)).convert(
            str(tmp / "ct2"), quantization=quantization, force=True
        )
        shutil.rmtree(tmp / "src", ignore_errors=True)
        for item in (tmp / "ct2").iterdir():
            item.rename(tmp / item.name)
        (tmp / "ct2").rmdir()
        tok = load_tokenizer(model_dir)
        config = json.loads((tmp / "config.json").read_text())
        # BERT tokenizers have [CLS]/[SEP], not bos/eos: CTranslate2 needs the tokens.
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        filled = {"eos_token": eos_id(tok), "bos_token": bos}
        missing = {k: v for k, v in filled.items() if config.get(k) is None and v is not None}
        if missing:
            config.update({k: tok.convert_ids_to_tokens(v) for k, v in missing.items()})
            write_json(tmp / "config.json", config)
        tok.save_pretrained(tmp)
        shutil.copy(model_dir / TASK_FILE, tmp / TASK_FILE)
        if (model_dir / "generation_config.json").exists():  # the decoding the student uses
            shutil.copy(model_dir / "generation_config.json", tmp / "generation_config.json")
        write_json(
            tmp / CT2_MARKER,
            {"source": str(model_dir.resolve()), "model_type": kind, "quantization": quantization},
        )

    return export_dir(out, build)


def _converter_source(model_dir: Path, kind: str, scratch: Path) -> Path:
    """The model dir, or (when its config lacks what the converter reads) a copy of it with
    the missing attributes filled in: links to the weights and a completed config.json."""
    config = json.loads((model_dir / "config.json").read_text())
    missing = {k: v for k, v in CONVERTER_DEFAULTS.get(kind, {}).items() if k not in config}
    if not missing:
        return model_dir
    scratch.mkdir(parents=True)
    for item in model_dir.iterdir():
        if item.name != "config.json":
            (scratch / item.name).symlink_to(item.resolve())
    write_json(scratch / "config.json", {**config, **missing})
    return scratch


class CT2Backend:
    """`ctranslate2.Translator` behind the predictor's backend interface."""

    def __init__(
        self,
        export_dir: str | Path,
        device: str = "cpu",
        max_source_len: int = 512,
        threads: int | None = None,
    ):
        from protege.students.seq2seq.build import load_tokenizer

        ctranslate2 = _ct2()
        self.tok = load_tokenizer(export_dir)
        # One OpenMP thread per core: more threads than cores only spin on a busy machine.
        threads = threads or min(4, os.cpu_count() or 1)
        self.translator = ctranslate2.Translator(
            str(export_dir), device=device, intra_threads=threads
        )
        self.max_source_len = max_source_len
        self.eos = eos_id(self.tok)
        start = json.loads((Path(export_dir) / "config.json").read_text()).get(
            "decoder_start_token"
        )
        self.start_id = self.tok.convert_tokens_to_ids(start) if start else None
        gen_path = Path(export_dir) / "generation_config.json"
        gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
        # Decode as the PyTorch student does: its forced first token (BART's <s>) and its
        # n-gram rule come from the generation config training wrote.
        forced = gen.get("forced_bos_token_id")
        self.target_prefix = [self.tok.convert_ids_to_tokens(forced)] if forced is not None else []
        self.no_repeat_ngram_size = int(gen.get("no_repeat_ngram_size") or 0)
        self.length_penalty = float(gen.get("length_penalty") or 1.0)

    def _tokens(self, sources: list[str]) -> list[list[str]]:
        sources = clip_sources(sources, self.max_source_len)
        ids = self.tok(sources, truncation=True, max_length=self.max_source_len).input_ids
        return [self.tok.convert_ids_to_tokens(x) for x in ids]

    def token_logprobs(
        self, sources: list[str], candidates: list[list[int]], prefix: list[int] = ()
    ) -> list[list[list[float]]]:
        # score_batch always appends eos to the target; drop ours, and cut at our length. The
        # prefix (a forced BOS) is part of the scored target; its log-probs are cut off.
        prefix = list(prefix)
        targets = [
            self.tok.convert_ids_to_tokens(prefix + (c[:-1] if c[-1] == self.eos else c))
            for c in candidates
        ]
        src = self._tokens(sources)
        k = len(candidates)
        results = self.translator.score_batch(
            [s for s in src for _ in range(k)], [t for _ in src for t in targets]
        )
        lps = [r.log_probs for r in results]
        p = len(prefix)
        return [
            [lps[i * k + j][p : p + len(c)] for j, c in enumerate(candidates)]
            for i in range(len(src))
        ]

    def first_logprobs(self, sources: list[str], token_ids: list[int]) -> list[list[float]]:
        import numpy as np

        results = self.translator.translate_batch(
            self._tokens(sources),
            beam_size=1,
            max_decoding_length=1,
            min_decoding_length=0,
            return_logits_vocab=True,
        )
        out = []
        for r in results:
            logits = np.asarray(r.logits[0][0], dtype=np.float64)  # (V,) raw logits, step 0
            top = logits.max()
            lse = top + np.log(np.exp(logits - top).sum())
            out.append([float(logits[t] - lse) for t in token_ids])
        return out

    def generate(self, sources: list[str], max_new_tokens: int, num_beams: int = 1) -> list[str]:
        results = self.translator.translate_batch(
            self._tokens(sources),
            target_prefix=[self.target_prefix] * len(sources) if self.target_prefix else None,
            beam_size=num_beams,
            length_penalty=self.length_penalty,
            max_decoding_length=max_new_tokens,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
        )
        ids = [self.tok.convert_tokens_to_ids(r.hypotheses[0]) for r in results]
        return self.tok.batch_decode(ids, skip_special_tokens=True)
