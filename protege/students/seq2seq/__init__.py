"""The seq2seq kind (T5, BART, the BERT2BERT MiniLM), its whole life in this package:
`build` loads hub models and builds the offline `protege:` ones, this module encodes and
trains them (features and batching from `protege.train.data`), `torch_runtime` runs a saved
one in PyTorch and `ct2` exports it to CTranslate2 (int8) and runs the export.
"""

from __future__ import annotations

from pathlib import Path

import torch

from protege.formats import Example, TaskConfig
from protege.students.base import Student, StudentOptions
from protege.train import data


class Seq2SeqStudent(Student):
    kind = "seq2seq"

    @classmethod
    def load(
        cls, path: str, task: TaskConfig | None, options: StudentOptions, seed: int | None = None
    ) -> Seq2SeqStudent:
        from protege.students.seq2seq.build import load_student
        from protege.targets import decoder_start_id, target_affixes

        model, tok = load_student(path, seed=seed)
        if options.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        student = cls(model, tok, task)
        student.start_id = decoder_start_id(model)
        student.n_suffix = len(target_affixes(tok, student.start_id)[1])
        return student

    def configure_decoding(self, settings) -> None:
        """Also force the target prefix the trainer puts before every target (BART's `<s>`)."""
        from protege.students.base import set_decoding
        from protege.targets import target_affixes

        set_decoding(self.model, settings, target_affixes(self.tok, self.start_id)[0])

    @classmethod
    def backend(
        cls,
        model_dir: str | Path,
        task: TaskConfig,
        device: str = "cpu",
        threads: int | None = None,
    ):
        from protege.students.seq2seq.torch_runtime import TorchBackend

        return TorchBackend(model_dir, device=device, threads=threads)

    @classmethod
    def runtimes(cls):
        from protege.students.seq2seq.ct2 import CT2_MARKER, CT2Backend

        return {CT2_MARKER: CT2Backend}

    @classmethod
    def exporters(cls):
        from protege.students.seq2seq.ct2 import export_ct2

        return {"ct2": export_ct2}

    def encode(self, examples: list[Example], max_source_len: int, max_target_len: int) -> list:
        return data.encode(examples, self.tok, max_source_len, max_target_len, self.start_id)

    def collate(self, items) -> dict[str, torch.Tensor]:
        return data.collate(items, self.pad_id)

    def logits(self, model, batch):
        unwrapped = getattr(model, "module", model)  # DDP wraps; the helper lives on the model
        decoder_input_ids = unwrapped.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=decoder_input_ids,
        ).logits  # (B, T, V)
        return logits, batch["labels"], batch["tags"]

    def generate_ids(self, sources: list[str], max_new_tokens: int, num_beams: int = 1):
        enc = self.tok(
            sources,
            truncation=True,
            max_length=self.max_source_len,
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(
                **enc, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False
            )
        special = set(self.tok.all_special_ids)
        texts = [t.strip() for t in self.tok.batch_decode(out, skip_special_tokens=True)]
        return texts, [sum(1 for t in row if t not in special) for row in out.tolist()]

    def generate(self, sources: list[str], max_new_tokens: int, num_beams: int = 1) -> list[str]:
        return self.generate_ids(sources, max_new_tokens, num_beams)[0]
