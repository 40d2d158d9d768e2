"""ONNX export of TF-IDF classical students, run by onnxruntime: text in, label probabilities
out, in one graph.

The features are `skl2onnx`'s conversion of the fitted vectorizers (`StringNormalizer` to
lowercase, `Tokenizer`, `TfIdfVectorizer` per block, L2 norm); the classifier is appended:
`MatMul + Add + Softmax` for logistic regression, LightGBM's trees converted by `onnxmltools`
and merged in. The features were chosen to convert exactly (ASCII word pattern, character
n-grams, plain term frequencies); one step stays outside the graph: whitespace runs are
collapsed to one space (and the ends stripped) before the text is fed, as the student does
(`features.normalise`), because scikit-learn collapses them before cutting character n-grams
and ONNX has no operator that can. Lowercasing uses the `C.UTF-8` locale (Unicode case
folding, present on Debian and Ubuntu). Static-embedding students have no export: model2vec's
tokenizer has no ONNX form.

Nothing to quantize (a linear layer over sparse features, or trees): the export is float32
whatever `quantization` asks. An export dir holds `model.onnx`, `protege_task.json` and the
marker `protege_onnx_classical.json` (labels, classes, what it was exported from).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from protege.data.io import write_json
from protege.errors import ConfigError
from protege.formats import TASK_FILE, display_label, load_task
from protege.students.classical.features import Tfidf, normalise
from protege.students.classical.models import (
    ClassicalModel,
    LogReg,
    Trees,
    read_config,
    require,
)
from protege.students.dirs import export_dir

MARKER = "protege_onnx_classical.json"
OPSET = {"": 15, "ai.onnx.ml": 1}
"""onnxmltools converts LightGBM up to opset 15: both parts of a graph must share one."""


def _features_graph(features: Tfidf):
    """skl2onnx's graph of the fitted vectorizers: input `input` (n, 1) strings, output a
    dense float (n, dim)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    union = FeatureUnion([(b.name, b.vectorizer()) for b in features.blocks])
    with warnings.catch_warnings():  # "char analyzer may not work": checked by export --check
        warnings.simplefilter("ignore", UserWarning)
        return to_onnx(
            union,
            initial_types=[("input", StringTensorType([None, 1]))],
            options={TfidfVectorizer: {"locale": "C.UTF-8"}},
            target_opset=OPSET,
        )


def _append_logreg(graph_model, clf: LogReg):
    from onnx import helper, numpy_helper

    g = graph_model.graph
    x = g.output[0].name
    g.initializer.extend([
        numpy_helper.from_array(clf.coef.astype(np.float32), "classical_W"),
        numpy_helper.from_array(clf.intercept.astype(np.float32), "classical_b"),
    ])  # fmt: skip
    g.node.extend([
        helper.make_node("MatMul", [x, "classical_W"], ["classical_z0"]),
        helper.make_node("Add", ["classical_z0", "classical_b"], ["classical_z"]),
        helper.make_node("Softmax", ["classical_z"], ["probabilities"], axis=-1),
    ])  # fmt: skip
    out = helper.make_tensor_value_info("probabilities", 1, [None, clf.coef.shape[1]])
    del g.output[:]
    g.output.append(out)
    return graph_model


def _merge_trees(graph_model, clf: Trees, dim: int):
    from onnx import compose
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    trees = convert_lightgbm(
        clf.booster,
        initial_types=[("features", FloatTensorType([None, dim]))],
        zipmap=False,
        target_opset=OPSET[""],
    )
    trees = compose.add_prefix(trees, "trees_")
    trees.ir_version = graph_model.ir_version
    del trees.opset_import[:]
    trees.opset_import.extend(graph_model.opset_import)
    merged = compose.merge_models(
        graph_model,
        trees,
        io_map=[(graph_model.graph.output[0].name, "trees_features")],
        outputs=["trees_probabilities"],
    )
    merged.graph.output[0].name = "probabilities"
    for node in merged.graph.node:
        node.output[:] = ["probabilities" if o == "trees_probabilities" else o for o in node.output]
    return merged


def export_onnx(model_dir, output=None, quantization: str = "int8") -> Path:
    """Export a fitted TF-IDF classical student dir to one ONNX graph; returns the export dir."""
    import onnx

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    require(config, export=True)
    if config.get("features") != "tfidf":
        raise ConfigError(
            f"{model_dir}: static-embedding students have no ONNX export (model2vec's "
            "tokenizer has no ONNX form); serve the model dir itself"
        )
    if "classes" not in config:
        raise ConfigError(f"{model_dir}: not fitted yet; train it before exporting")
    model = ClassicalModel.load(model_dir, config)
    out = Path(output) if output else model_dir.parent / f"{model_dir.name}-onnx"

    def build(tmp: Path) -> None:
        graph = _features_graph(model.features)
        if isinstance(model.classifier, LogReg):
            graph = _append_logreg(graph, model.classifier)
        else:
            graph = _merge_trees(graph, model.classifier, model.features.dim)

        onnx.checker.check_model(graph)
        onnx.save(graph, str(tmp / "model.onnx"))
        shutil.copy(model_dir / TASK_FILE, tmp / TASK_FILE)
        write_json(
            tmp / MARKER,
            {
                "source": str(model_dir.resolve()),
                "kind": "classical",
                "model": config["model"],
                "labels": config["labels"],
                "classes": config["classes"],
                "quantization": "float32",
                "asked_quantization": quantization,
                "input": "one string per row, shape (n, 1); whitespace runs collapsed to one "
                "space and the ends stripped before it is fed",
                "output": "probabilities (n, len(classes)): column j is labels[classes[j]]",
            },
        )

    return export_dir(out, build)


class OnnxClassicalRuntime:
    """An exported classical student under onnxruntime, behind the predictor's backend
    interface (no tokenizer: it reads text)."""

    tok = None
    start_id = None

    def __init__(self, export_dir, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        export_dir = Path(export_dir)
        marker = json.loads((export_dir / MARKER).read_text())
        self.task = load_task(export_dir)
        self.classes = marker["classes"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        opts.log_severity_level = 3  # the trees' label shape warning is noise
        self.session = ort.InferenceSession(
            str(export_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"]
        )
        self.max_source_len = 512

    def label_probs(self, sources: list[str]) -> list[list[float]]:
        if not sources:
            return []
        feed = np.array([[normalise(s)] for s in sources], dtype=object)
        (p,) = self.session.run(["probabilities"], {"input": feed})
        out = np.zeros((len(sources), len(self.task.labels)))
        out[:, self.classes] = p
        return out.tolist()

    def generate(self, sources: list[str], max_new_tokens: int, num_beams: int = 1) -> list[str]:
        labels = self.task.labels
        return [display_label(labels[int(np.argmax(p))]) for p in self.label_probs(sources)]
