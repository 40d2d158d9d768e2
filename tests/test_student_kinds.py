"""The student interface: kind detection, causal features and KV-cache label scoring, the
classifier kind (labels only, softmax scores), on tiny models built from real configs."""

from __future__ import annotations

import json

import pytest
import torch
from serve_util import nli_rows

from protege.errors import ConfigError
from protege.formats import FORMATS, TaskConfig, make_examples
from protege.serve.scoring import Candidates
from protege.students import detect_kind, kind_from_config, load_student
from protege.train.loss import IGNORE, LABEL_TAG, RATIONALE_TAG, split_loss, token_ce


@pytest.fixture(scope="module")
def llama():
    return load_student("protege:tiny-llama", TaskConfig(format="label+rationale"))


def test_kind_comes_from_the_config():
    assert kind_from_config({"is_encoder_decoder": True}) == "seq2seq"
    assert kind_from_config({"architectures": ["LlamaForCausalLM"]}) == "causal"
    assert kind_from_config({"architectures": ["BertForSequenceClassification"]}) == "classifier"
    assert kind_from_config({"architectures": ["T5ForConditionalGeneration"]}) == "seq2seq"
    assert kind_from_config({"architectures": ["BertModel"]}) is None
    assert detect_kind("protege:tiny-t5")[1] == "seq2seq"
    assert detect_kind("protege:minilm-cls")[1] == "classifier"
    path, kind = detect_kind("protege:tiny-llama")
    assert kind == "causal" and detect_kind(path)[1] == "causal"  # from its config.json


def test_a_bare_encoder_needs_an_explicit_kind():
    from protege.students.builtins import minilm_dir

    with pytest.raises(ConfigError, match="set student.kind"):
        detect_kind(minilm_dir())
    assert detect_kind(minilm_dir(), "classifier")[1] == "classifier"


@pytest.mark.parametrize("fmt", FORMATS)
def test_causal_features_put_the_loss_on_completion_tokens_only(llama, fmt):
    task = TaskConfig(format=fmt)
    examples = [e for r in nli_rows("train", 3) for e in make_examples(task, r)]
    enc = llama.encode(examples, 128, 64)
    batch = llama.collate(enc)
    width = batch["input_ids"].shape[1]
    for i, e in enumerate(enc):
        m = len(e.target_ids)  # left padding: every completion ends at the last position
        assert (batch["labels"][i, : width - m] == IGNORE).all()  # no loss on prompt, padding
        assert batch["labels"][i, width - m :].tolist() == e.target_ids
        assert batch["input_ids"][i, width - m - len(e.input_ids) : width - m].tolist() == (
            e.input_ids
        )
        assert e.target_ids[-1] == llama.tok.eos_token_id
        # The completion spells the target exactly as seq2seq students learn it.
        assert llama.tok.decode(e.target_ids[:-1]) == examples[i].target
        assert llama.tok.decode(e.input_ids).endswith("<|im_start|>assistant\n")  # chat template
    tags = {t for e in enc for t in e.tags}
    assert tags == ({LABEL_TAG} if fmt == "label" else {LABEL_TAG, RATIONALE_TAG})


def test_causal_logits_give_the_models_own_loss_and_ignore_padding(llama):
    task = TaskConfig(format="label+rationale")
    examples = [e for r in nli_rows("train", 4) for e in make_examples(task, r)]
    batch = llama.collate(llama.encode(examples, 128, 64))
    with torch.no_grad():
        logits, labels, tags = llama.logits(llama.model, batch)
        hf = llama.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            labels=batch["labels"],
        ).loss
        ours = split_loss(logits, labels, tags, None).total
    assert ours.item() == pytest.approx(hf.item(), abs=1e-5)
    alone = llama.collate(llama.encode(examples[:1], 128, 64))  # no padding at all
    with torch.no_grad():
        one = split_loss(*llama.logits(llama.model, alone), None).total
        padded = token_ce(logits, labels)[0][labels[0] != IGNORE]
    assert padded.mean().item() == pytest.approx(one.item(), abs=1e-4)


def test_causal_scoring_over_the_kv_cache_equals_full_forward_passes(llama):
    """log p(candidate | prompt) from the cached pass = a plain forward over prompt+candidate."""
    task = TaskConfig(format="label+rationale")
    cands = Candidates.for_task(task, llama.tok).ids
    sources = [f"Premise: {r['premise']} Hypothesis: {r['hypothesis']}" for r in nli_rows("dev", 3)]
    lps = llama.token_logprobs(sources, cands)
    for i, source in enumerate(sources):
        prompt = llama.prompt_ids(source)
        for k, cand in enumerate(cands):
            ids = torch.tensor([prompt + cand])
            with torch.no_grad():
                logp = llama.model(input_ids=ids).logits[0].log_softmax(-1)
            want = [logp[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(cand)]
            assert lps[i][k] == pytest.approx(want, abs=1e-4)
    firsts = llama.first_logprobs(sources, [c[0] for c in cands])
    for i, row in enumerate(lps):
        assert firsts[i] == pytest.approx([row[k][0] for k in range(3)], abs=1e-5)


@pytest.fixture(scope="module")
def sharp_llama(llama):
    """The tiny Llama with weights scaled up: far from uniform, so positions matter."""
    import copy

    sharp = copy.deepcopy(llama)
    with torch.no_grad():
        for p in sharp.model.parameters():
            if p.ndim >= 2:
                p.mul_(6)
    return sharp


def test_a_causal_rows_scores_never_depend_on_its_batch(sharp_llama):
    """Left padding and position ids: a row scored alone = the same row among longer ones."""
    llama = sharp_llama
    cands = Candidates.for_task(TaskConfig(), llama.tok).ids
    rows = nli_rows("dev", 6)
    sources = [f"Premise: {r['premise']} Hypothesis: {r['hypothesis']}" for r in rows]
    sources[0] = "short"
    together = llama.token_logprobs(sources, cands)
    for i, source in enumerate(sources):
        alone = llama.token_logprobs([source], cands)[0]
        for k in range(len(cands)):
            assert together[i][k] == pytest.approx(alone[k], abs=1e-4)
    spread = [max(x[0] for x in row) - min(x[0] for x in row) for row in together]
    assert max(spread) > 0.5  # the candidates really differ: the check can fail
    gen_together = llama.generate(sources, 4)
    assert gen_together == [llama.generate([s], 4)[0] for s in sources]


def test_classifier_refuses_rationale_formats_in_one_line():
    for fmt in ("label+rationale", "rationale+label", "multitask"):
        with pytest.raises(ConfigError, match="classifier head cannot write") as e:
            load_student("protege:minilm-cls", TaskConfig(format=fmt))
        assert "\n" not in str(e.value)


def test_classifier_features_and_probabilities(tmp_path):
    task = TaskConfig(format="label")
    s = load_student("protege:minilm-cls", task)
    assert s.kind == "classifier" and s.model.config.num_labels == 3
    examples = [e for r in nli_rows("train", 6) for e in make_examples(task, r)]
    enc = s.encode(examples, 128, 8)
    assert [task.labels[e.target_ids[0]] for e in enc] == [r["label"] for r in nli_rows("train", 6)]
    batch = s.collate(enc)
    logits, labels, tags = s.logits(s.model, batch)
    assert logits.shape == (6, 1, 3) and labels.shape == (6, 1)
    probs = s.label_probs([ex.source for ex in examples])
    assert all(abs(sum(p) - 1) < 1e-5 for p in probs)
    # Saved with its head, it loads back with the same labels and numbers; others are refused.
    s.save(s.model, tmp_path / "m")
    again = load_student(tmp_path / "m", task)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["id2label"]["0"] == "entailment"
    assert again.label_probs([examples[0].source])[0] == pytest.approx(probs[0], abs=1e-5)
    with pytest.raises(ConfigError, match="classifier head predicts"):
        load_student(tmp_path / "m", TaskConfig(labels=["yes", "no"]))


@pytest.mark.parametrize(
    "name, fmt, student",
    [
        ("protege:tiny-llama", "multitask", {"lora": True, "lora_r": 4}),
        ("protege:tiny-llama", "rationale+label", {"gradient_checkpointing": True}),
        ("protege:minilm-cls", "label", {}),
    ],
)
def test_the_trainer_runs_every_kind_end_to_end(tmp_path, name, fmt, student):
    """Train through `run_train`, then the best checkpoint is an ordinary model dir that
    predict serves (LoRA merged in: no adapter weights left)."""
    from safetensors import safe_open
    from test_train import tiny_config

    from protege.serve.predictor import Predictor
    from protege.train import run_train

    cfg = tiny_config(tmp_path, model=name, task={"format": fmt}, student=student, max_steps=2)
    out = run_train(cfg)
    (run,) = json.loads((out / "results.json").read_text())
    assert run["status"] == "done" and run["steps"] == 2
    best = out / run["best"]["loss"]["path"]
    with safe_open(str(best / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "lora" in k]
    preds = Predictor.load(best).predict(nli_rows("dev", 3))
    assert len(preds) == 3 and all("label" in p for p in preds)


@pytest.mark.slow
def test_smollm2_from_the_gguf_fine_tunes_and_scores_labels(tmp_path):
    """The real offline causal student: 134.5M parameters dequantised from the GGUF, a chat
    template; a few steps on the sample NLI set lower the loss, and label scoring answers."""
    from protege.serve.predictor import Predictor

    task = TaskConfig(format="label")
    s = load_student("protege:smollm2-135m", task)
    assert s.n_params() == 134_515_008 and s.tok.chat_template
    examples = [e for r in nli_rows("train", 16) for e in make_examples(task, r)]
    batch = s.collate(s.encode(examples, 128, 8))
    opt = torch.optim.AdamW(s.model.parameters(), lr=5e-5)
    s.model.train()
    losses = []
    for _ in range(4):
        loss = split_loss(*s.logits(s.model, batch), None).total
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    s.model.eval()
    from protege.formats import save_task

    s.save(s.model, tmp_path / "m")
    save_task(task, tmp_path / "m")
    preds = Predictor.load(tmp_path / "m").predict(nli_rows("dev", 6))
    assert all(p["label"] in task.labels for p in preds)
