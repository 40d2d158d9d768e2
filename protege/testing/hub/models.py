"""The hub models of the replica: tiny random weights behind real configs and real-like tokenizers.

- `google-t5/t5-small`: t5-small's own config.json (task_specific_params with the
  `summarize: ` prefix ...) and generation_config.json, with d_model 32 and 2 layers; a
  SentencePiece unigram model trained in seconds on protege's sample text with T5's special
  pieces (pad 0, eos 1, unk 2) saved as `spiece.model`, the 100 `<extra_id_*>` tokens added by
  the tokenizer, and (unless `tokenizer_json=False`, as in many T5 fine-tunes) `tokenizer.json`.
- `facebook/bart-base`: bart-base's config.json and generation_config.json (forced BOS 0,
  no_repeat_ngram_size 3, num_beams 4, early_stopping ...), d_model 32; a byte-level BPE with
  BART's specials (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask>) whose post-processor wraps a text
  as `<s> ... </s>`, saved as vocab.json, merges.txt and tokenizer.json.

Neither repo has a tokenizer_config.json, as on the hub: transformers picks the tokenizer
class from config.json's `model_type`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

T5_CONFIG: dict[str, Any] = {
    "architectures": ["T5ForConditionalGeneration"],
    "d_ff": 2048,
    "d_kv": 64,
    "d_model": 512,
    "decoder_start_token_id": 0,
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "t5",
    "n_positions": 512,
    "num_heads": 8,
    "num_layers": 6,
    "output_past": True,
    "pad_token_id": 0,
    "relative_attention_num_buckets": 32,
    "task_specific_params": {
        "summarization": {
            "early_stopping": True,
            "length_penalty": 2.0,
            "max_length": 200,
            "min_length": 30,
            "no_repeat_ngram_size": 3,
            "num_beams": 4,
            "prefix": "summarize: ",
        },
        "translation_en_to_de": {
            "early_stopping": True,
            "max_length": 300,
            "num_beams": 4,
            "prefix": "translate English to German: ",
        },
        "translation_en_to_fr": {
            "early_stopping": True,
            "max_length": 300,
            "num_beams": 4,
            "prefix": "translate English to French: ",
        },
        "translation_en_to_ro": {
            "early_stopping": True,
            "max_length": 300,
            "num_beams": 4,
            "prefix": "translate English to Romanian: ",
        },
    },
    "vocab_size": 32128,
}
T5_GENERATION = {
    "_from_model_config": True,
    "decoder_start_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 0,
    "transformers_version": "4.27.0.dev0",
}
T5_TINY = {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 2}

BART_CONFIG: dict[str, Any] = {
    "_name_or_path": "bart-base",
    "activation_dropout": 0.1,
    "activation_function": "gelu",
    "add_bias_logits": False,
    "add_final_layer_norm": False,
    "architectures": ["BartModel"],
    "attention_dropout": 0.1,
    "bos_token_id": 0,
    "classif_dropout": 0.1,
    "classifier_dropout": 0.0,
    "d_model": 768,
    "decoder_attention_heads": 12,
    "decoder_ffn_dim": 3072,
    "decoder_layerdrop": 0.0,
    "decoder_layers": 6,
    "decoder_start_token_id": 2,
    "dropout": 0.1,
    "early_stopping": True,
    "encoder_attention_heads": 12,
    "encoder_ffn_dim": 3072,
    "encoder_layerdrop": 0.0,
    "encoder_layers": 6,
    "eos_token_id": 2,
    "forced_eos_token_id": 2,
    "forced_bos_token_id": 0,
    "gradient_checkpointing": False,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"},
    "init_std": 0.02,
    "is_encoder_decoder": True,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2},
    "max_position_embeddings": 1024,
    "model_type": "bart",
    "no_repeat_ngram_size": 3,
    "normalize_before": False,
    "normalize_embedding": True,
    "num_beams": 4,
    "num_hidden_layers": 6,
    "pad_token_id": 1,
    "scale_embedding": False,
    "task_specific_params": {
        "summarization": {
            "length_penalty": 1.0,
            "max_length": 128,
            "min_length": 12,
            "num_beams": 4,
        },
        "summarization_cnn": {
            "length_penalty": 2.0,
            "max_length": 142,
            "min_length": 56,
            "num_beams": 4,
        },
        "summarization_xsum": {
            "length_penalty": 1.0,
            "max_length": 62,
            "min_length": 11,
            "num_beams": 6,
        },
    },
    "torch_dtype": "float32",
    "transformers_version": "4.12.0.dev0",
    "use_cache": True,
    "vocab_size": 50265,
}
BART_GENERATION = {
    "_from_model_config": True,
    "bos_token_id": 0,
    "decoder_start_token_id": 2,
    "early_stopping": True,
    "eos_token_id": 2,
    "forced_bos_token_id": 0,
    "forced_eos_token_id": 2,
    "no_repeat_ngram_size": 3,
    "num_beams": 4,
    "pad_token_id": 1,
    "transformers_version": "4.27.0.dev0",
}
BART_TINY = {
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "num_hidden_layers": 2,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
}
BART_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def corpus() -> list[str]:
    """Text to train the tokenizers on: protege's sample rows (and ANLI, when present)."""
    from protege.data.io import read_records
    from protege.data.samples import sample_path
    from protege.testing.hub.datasets import _nli_rows

    texts = []
    for split in ("train", "dev", "test"):
        for r in read_records(sample_path("nli", split)):
            texts += [r["premise"], r["hypothesis"]]
        for r in read_records(sample_path("summarization", split)):
            texts += [r["article"], r["summary"]]
    for rows in _nli_rows().values():
        for r in rows:
            texts += [r["premise"], r["hypothesis"], str(r.get("rationale") or "")]
    words = "Premise Hypothesis Explanation Rationale Answer predict explain summarize translate"
    words += " Entailment Neutral Contradiction entailment neutral contradiction"
    return [*texts, words, words.lower()]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _weights(model_cls, config_cls, config: dict[str, Any], repo: Path, seed: int) -> None:
    """Random weights for `config`, saved as model.safetensors; the config.json written is
    the real one (with the tiny dimensions), not what this transformers would re-serialise."""
    import torch

    torch.manual_seed(seed)
    model = model_cls(config_cls(**{k: v for k, v in config.items() if not k.startswith("_")}))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        shutil.copy(Path(tmp) / "model.safetensors", repo / "model.safetensors")
    _write_json(repo / "config.json", config)


def _card(repo: Path, meta: str, title: str) -> None:
    (repo / "README.md").write_text(f"---\n{meta}---\n\n# {title} (replica: tiny random weights)\n")


def build_t5(root: Path, repo_id: str = "google-t5/t5-small", tokenizer_json: bool = True) -> Path:
    import sentencepiece as spm
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    repo = root / "models" / repo_id
    repo.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "spiece")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus()),
            model_prefix=prefix,
            vocab_size=1000,
            model_type="unigram",
            character_coverage=1.0,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            hard_vocab_limit=False,
            minloglevel=2,
        )
        shutil.copy(prefix + ".model", repo / "spiece.model")
        n_pieces = spm.SentencePieceProcessor(model_file=prefix + ".model").get_piece_size()
        if tokenizer_json:  # the fast tokenizer, as transformers converts spiece.model
            spiece_only = Path(tmp) / "repo"
            spiece_only.mkdir()
            shutil.copy(repo / "spiece.model", spiece_only / "spiece.model")
            T5Tokenizer.from_pretrained(str(spiece_only)).save_pretrained(tmp)
            shutil.copy(Path(tmp) / "tokenizer.json", repo / "tokenizer.json")
    config = {**T5_CONFIG, **T5_TINY, "vocab_size": n_pieces + 100}
    _weights(T5ForConditionalGeneration, T5Config, config, repo, seed=0)
    _write_json(repo / "generation_config.json", T5_GENERATION)
    meta = "language:\n- en\n- fr\n- ro\n- de\nlicense: apache-2.0\ntags:\n- summarization\n"
    meta += "- translation\ndatasets:\n- c4\n"
    _card(repo, meta, "Model Card for T5 Small")
    return repo


def build_bart(root: Path, repo_id: str = "facebook/bart-base") -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import BartConfig, BartForConditionalGeneration, BartTokenizer

    repo = root / "models" / repo_id
    repo.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus(), vocab_size=1200, special_tokens=BART_SPECIALS)
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(Path(tmp) / name, repo / name)
        # BART's tokenizer: byte-level BPE, `<s> ... </s>` around every text (RoBERTa's).
        tok = BartTokenizer(vocab=str(repo / "vocab.json"), merges=str(repo / "merges.txt"))
        tok.save_pretrained(tmp)
        shutil.copy(Path(tmp) / "tokenizer.json", repo / "tokenizer.json")
        vocab_size = len(tok)
    config = {**BART_CONFIG, **BART_TINY, "vocab_size": vocab_size}
    _weights(BartForConditionalGeneration, BartConfig, config, repo, seed=0)
    _write_json(repo / "generation_config.json", BART_GENERATION)
    _card(repo, "license: apache-2.0\nlanguage: en\n", "BART (base-sized model)")
    return repo
