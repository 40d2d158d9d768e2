"""ONNX export of classifier students, run by onnxruntime (int8 quantization, one scale per
token).

The export is torch's TorchScript-based ONNX exporter (no extra dependency) with dynamic batch
and sequence axes; `int8` then quantizes the weights of MatMul/Gemm with onnxruntime's dynamic
quantization, and `per_token_activations` gives each token's activations their own scale:
onnxruntime's dynamic quantization takes one scale over the whole padded batch, so an input's
answer would depend on the other inputs of its micro-batch. An export dir is self-contained:
`model.onnx`, the tokenizer, config.json (the label names), `protege_task.json` and
`protege_onnx.json` (what it was exported from, and how).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from protege.data.io import write_json
from protege.errors import ProtegeError
from protege.formats import TASK_FILE, display_label, load_task
from protege.students.dirs import export_dir

ONNX_MARKER = "protege_onnx.json"
"""An export dir of this runtime holds it (what it was exported from, and how)."""
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
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _ort()
    model_dir = Path(model_dir)
    if quantization not in QUANTIZATIONS:
        raise ProtegeError(
            f"unknown ONNX quantization {quantization!r} ({', '.join(QUANTIZATIONS)})"
        )
    if not (model_dir / TASK_FILE).exists():
        raise ProtegeError(f"{model_dir}: not a protege model directory (no {TASK_FILE})")
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    out = Path(output) if output else model_dir.parent / f"{model_dir.name}-onnx-{quantization}"

    def build(tmp: Path) -> None:
        model.config.return_dict = False
        example = tok(["a premise", "a longer hypothesis here"], padding=True)
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
            per_token_activations(tmp / "model.onnx")
            fp32.unlink()
        model.config.return_dict = True
        model.config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.copy(model_dir / TASK_FILE, tmp / TASK_FILE)
        write_json(
            tmp / ONNX_MARKER,
            {
                "source": str(model_dir.resolve()),
                "kind": "classifier",
                "quantization": quantization,
                "activation_scales": "per token" if quantization == "int8" else None,
            },
        )

    return export_dir(out, build)


def per_token_activations(path: Path) -> None:
    """Rewrite each `DynamicQuantizeLinear` of onnxruntime's dynamic quantization (one uint8
    scale and zero point over the whole tensor: every token of every input of the batch, its
    padding too) into a symmetric quantization of each token's vector on its own: scale =
    max |x| / 127 over the last axis, zero point 128. The `MatMulInteger` after it takes the
    scalar zero point as before and its output is rescaled by the (.., 1) scale by the same
    `Mul`s, so a token's numbers depend on that token alone, never on its batch."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    consts = {"pt_127": np.float32(127), "pt_128": np.float32(128), "pt_eps": np.float32(1e-12)}
    consts["pt_zp"] = np.uint8(128)
    if opset >= 18:  # ReduceMax takes its axes as an input
        consts["pt_axes"] = np.array([-1], dtype=np.int64)
    graph.initializer.extend(numpy_helper.from_array(np.array(v), k) for k, v in consts.items())
    nodes, rewritten = [], set()
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            continue
        (x,), (q, scale, zero) = node.input, node.output
        rewritten |= {q, scale, zero}

        def v(name: str, at: str = node.name or q) -> str:
            return f"{at}/pt_{name}"

        axes = {"axes": [-1]} if opset < 18 else {}
        reduce_in = [v("abs")] if opset < 18 else [v("abs"), "pt_axes"]
        nodes += [
            helper.make_node("Abs", [x], [v("abs")]),
            helper.make_node("ReduceMax", reduce_in, [v("max")], keepdims=1, **axes),
            helper.make_node("Max", [v("max"), "pt_eps"], [v("max_pos")]),
            helper.make_node("Div", [v("max_pos"), "pt_127"], [scale]),
            helper.make_node("Div", [x, scale], [v("scaled")]),
            helper.make_node("Round", [v("scaled")], [v("round")]),
            helper.make_node("Add", [v("round"), "pt_128"], [v("shift")]),
            helper.make_node("Cast", [v("shift")], [q], to=TensorProto.UINT8),
            helper.make_node("Identity", ["pt_zp"], [zero]),
        ]
    # Each `Mul(cast(MatMulInteger), Mul(scale, weight scale))` becomes two: by the weight
    # scale, then by the token's. (In the first form onnxruntime fuses it into a
    # MatMulIntegerToFloat that reads only the first of the token scales.)
    products = {}  # Mul(scale, weight scale) output -> (scale, weight scale)
    for node in nodes:
        if node.op_type == "Mul" and rewritten & set(node.input):
            a, b = node.input
            products[node.output[0]] = (a, b) if a in rewritten else (b, a)
    final = []
    for node in nodes:
        if node.output[0] in products:
            continue
        scaled = [i for i in node.input if i in products]
        if not scaled:
            final.append(node)
            continue
        if node.op_type != "Mul" or len(node.input) != 2:
            raise ProtegeError(f"ONNX int8: unexpected use of a quantization scale ({node.name})")
        (product,), (y,) = scaled, [i for i in node.input if i != scaled[0]]
        scale, w_scale = products[product]
        final += [
            helper.make_node("Mul", [y, w_scale], [f"{product}/pt_w"]),
            helper.make_node("Mul", [f"{product}/pt_w", scale], list(node.output)),
        ]
    del graph.node[:]
    graph.node.extend(final)
    rewritten |= set(products)
    kept = [vi for vi in graph.value_info if vi.name not in rewritten]  # shapes changed
    del graph.value_info[:]
    graph.value_info.extend(kept)
    onnx.save(model, str(path))


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
