"""ONNX export of classifier students, run by onnxruntime (dynamic int8 quantization).

The export is torch's TorchScript-based ONNX exporter (no extra dependency) with dynamic batch
and sequence axes; `int8` then quantizes the weights of MatMul/Gemm with onnxruntime's dynamic
quantization. An export dir is self-contained: `model.onnx`, the tokenizer, config.json (the
label names), `protege_task.json` and `protege_onnx.json` (what it was exported from, and how).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from protege.data.io import write_json
from protege.errors import ProtegeError
from protege.formats import TASK_FILE, display_label, load_task
from protege.serve.predictor import ONNX_MARKER

QUANTIZATIONS = ("int8", "float32")


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise ProtegeError("ONNX export needs onnxruntime: pip install 'protege[onnx]'") from e
    return onnxruntime


def export_onnx(
    model_dir: str | Path, output: str | Path | None = None, quantization: str = "int8"
) -> Path:
    """Export a classifier student dir to ONNX (+ int8); returns the export dir."""
    import torch

    from protege.students import load_student

    _ort()
    model_dir = Path(model_dir)
    if quantization not in QUANTIZATIONS:
        raise ProtegeError(
            f"unknown ONNX quantization {quantization!r} ({', '.join(QUANTIZATIONS)})"
        )
    task = load_task(model_dir)
    student = load_student(model_dir, task)
    out = Path(output) if output else model_dir.parent / f"{model_dir.name}-onnx-{quantization}"
    if out.exists():
        raise ProtegeError(f"{out}: already exists (remove it or pass --output)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model = student.model.eval()
        model.config.return_dict = False
        example = student.tok(["a premise", "a longer hypothesis here"], padding=True)
        args = tuple(torch.tensor(example[k]) for k in ("input_ids", "attention_mask"))
        fp32 = tmp / ("model.onnx" if quantization == "float32" else "model-fp32.onnx")
        with torch.inference_mode():
            torch.onnx.export(
                model,
                args,
                str(fp32),
                dynamo=False,
                input_names=["input_ids", "attention_mask"],
                output_names=["logits"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "seq"},
                    "attention_mask": {0: "batch", 1: "seq"},
                    "logits": {0: "batch"},
                },
                opset_version=17,
            )
        if quantization == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(fp32), str(tmp / "model.onnx"), weight_type=QuantType.QInt8)
            fp32.unlink()
        model.config.return_dict = True
        model.config.save_pretrained(tmp)
        student.tok.save_pretrained(tmp)
        shutil.copy(model_dir / TASK_FILE, tmp / TASK_FILE)
        write_json(
            tmp / ONNX_MARKER,
            {
                "source": str(model_dir.resolve()),
                "kind": "classifier",
                "quantization": quantization,
            },
        )
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class OnnxClassifierBackend:
    """An exported classifier under onnxruntime, behind the predictor's backend interface."""

    start_id = None

    def __init__(
        self,
        export_dir: str | Path,
        device: str = "cpu",
        max_source_len: int = 512,
        threads: int | None = None,
    ):
        from transformers import AutoTokenizer

        ort = _ort()
        self.tok = AutoTokenizer.from_pretrained(str(export_dir))
        self.task = load_task(export_dir)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        self.session = ort.InferenceSession(
            str(Path(export_dir) / "model.onnx"), opts, providers=["CPUExecutionProvider"]
        )
        self.max_source_len = max_source_len

    def label_probs(self, sources: list[str]) -> list[list[float]]:
        import numpy as np

        enc = self.tok(
            sources,
            truncation=True,
            max_length=self.max_source_len,
            padding=True,
            return_tensors="np",
        )
        feed = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
        logits = self.session.run(["logits"], feed)[0].astype(np.float64)  # (B, C)
        z = np.exp(logits - logits.max(-1, keepdims=True))
        return (z / z.sum(-1, keepdims=True)).tolist()

    def generate(self, sources: list[str], max_new_tokens: int, num_beams: int = 1) -> list[str]:
        labels = self.task.labels
        return [
            display_label(labels[max(range(len(p)), key=p.__getitem__)])
            for p in self.label_probs(sources)
        ]
