"""Encoder classifier students: any `AutoModelForSequenceClassification` (MiniLM, ModernBERT,
DeBERTa-v3). One forward pass per input and a softmax over the task's labels: the fastest
neural student for classification, whose scores are label probabilities.

Labels only: a classifier head cannot write a rationale, so a format that asks for one is
refused at load. The head's label order is the task's (`config.id2label`); a saved classifier
whose labels differ from the task's is refused rather than silently mislabelled.
"""

from __future__ import annotations

import torch

from protege.errors import ConfigError
from protege.formats import Example, TaskConfig, display_label, normalise_label
from protege.students.base import Encoded, Student, StudentOptions, require_label_task
from protege.train.loss import LABEL_TAG


class ClassifierStudent(Student):
    kind = "classifier"
    n_suffix = 0  # the one "token" is the label

    @classmethod
    def check_task(cls, task: TaskConfig) -> None:
        require_label_task("classifier", "a classifier head", task)

    @classmethod
    def load(
        cls, path: str, task: TaskConfig | None, options: StudentOptions, seed: int | None = None
    ) -> ClassifierStudent:
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(path)
            tok = AutoTokenizer.from_pretrained(path)
        except OSError as e:
            raise ConfigError(f"cannot load classifier student {path!r}: {e}") from e
        has_head = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
        saved = [config.id2label[i] for i in sorted(config.id2label)] if has_head else None
        if task is None:
            if saved is None:
                raise ConfigError(f"{path}: a classifier without a head needs the task's labels")
            task = TaskConfig(labels=saved)
        cls.check_task(task)
        labels = list(task.labels)
        if saved is not None and saved != labels:
            raise ConfigError(
                f"{path}: its classifier head predicts {saved}, the task's labels are {labels}"
            )
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
        if options.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return cls(model, tok, task)

    @classmethod
    def runtimes(cls):
        from protege.students.classifier.onnx import ONNX_MARKER, OnnxClassifierBackend

        return {ONNX_MARKER: OnnxClassifierBackend}

    @classmethod
    def exporters(cls):
        from protege.students.classifier.onnx import export_onnx

        return {"onnx": export_onnx}

    def configure_decoding(self, settings) -> None:
        return None  # nothing is decoded: one softmax over the labels

    # ---- features --------------------------------------------------------------------------

    def label_index(self, text: str) -> int:
        label = normalise_label(text, self.task.labels)
        assert label is not None, text  # targets come from formats.make_examples
        return self.task.labels.index(label)

    def encode(self, examples: list[Example], max_source_len: int, max_target_len: int) -> list:
        ids = self.tok(
            [e.source for e in examples], truncation=True, max_length=max_source_len
        ).input_ids
        return [
            Encoded(list(x), [self.label_index(e.target)], [LABEL_TAG], e.uid)
            for e, x in zip(examples, ids, strict=True)
        ]

    def collate(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for e in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, e in enumerate(items):
            ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            mask[i, : len(e.input_ids)] = 1
        labels = torch.tensor([e.target_ids[0] for e in items])[:, None]  # (B, 1)
        tags = torch.full_like(labels, LABEL_TAG)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "tags": tags}

    def logits(self, model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits[:, None, :], batch["labels"], batch["tags"]  # one "token": the label

    # ---- inference -------------------------------------------------------------------------

    def label_probs(self, sources: list[str]) -> list[list[float]]:
        """`[input][k]`: softmax probability of `task.labels[k]`."""
        enc = self.tok(
            sources,
            truncation=True,
            max_length=self.max_source_len,
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            logits = self.model(**enc).logits.float()  # (B, C)
        return logits.softmax(-1).cpu().tolist()

    def generate(self, sources: list[str], max_new_tokens: int, num_beams: int = 1) -> list[str]:
        """The most probable label, written as a generative student would write it."""
        labels = self.task.labels
        return [
            display_label(labels[max(range(len(p)), key=p.__getitem__)])
            for p in self.label_probs(sources)
        ]

    def generate_ids(self, sources: list[str], max_new_tokens: int, num_beams: int = 1):
        return self.generate(sources, max_new_tokens), [0] * len(sources)  # nothing generated
