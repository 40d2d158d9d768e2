"""The other student kinds for the benchmarks, each on its fastest path (shared helpers).

- classifier: the packaged MiniLM with a fresh 3-label head (`protege:minilm-cls`, 22.7M
  parameters), exported to ONNX int8, one softmax per input.
- causal: SmolLM2-135M-Instruct (`protege:smollm2-135m`), exported to CTranslate2 int8, label
  scoring from the prompt's last position (one prompt pass; NLI labels differ at the first
  token).

- classical: `protege:tfidf-logreg` (TF-IDF word 1-2 and char 2-5 grams, logistic
  regression), fitted through the trainer on ANLI rows (`classical_dirs`: its fit time is
  measured), served from its model dir (NumPy) and from its ONNX export.

Untrained heads and weights give the same latency as trained ones (the same computation).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from protege.formats import TaskConfig, save_task

CAUSAL_MODEL = "protege:smollm2-135m"


def kind_dirs(work: Path) -> dict[str, Path]:
    """Saved label-format students of the two kinds and their fastest exports."""
    from protege.students import export_student, load_student

    task = TaskConfig(format="label")
    dirs = {}
    for kind, name in (("classifier", "protege:minilm-cls"), ("causal", "protege:smollm2-135m")):
        student = load_student(name, task)
        model_dir = work / kind
        student.save(student.model, model_dir)
        save_task(task, model_dir)
        dirs[kind] = model_dir
        dirs[f"{kind}_export"] = export_student(model_dir, None, work / f"{kind}-int8", "int8")
    return dirs


def kind_paths(dirs: dict[str, Path], threads: int) -> tuple[dict[str, Callable], dict[str, int]]:
    """({path name: predict one record}, {kind: parameters})."""
    from protege.serve.predictor import Predictor
    from protege.students import load_student

    names = {"classifier_export": CLASSIFIER, "causal_export": CAUSAL,
             "classical": CLASSICAL, "classical_export": CLASSICAL + ", ONNX"}  # fmt: skip
    predictors = {name: Predictor.load(dirs[k], threads=threads)
                  for k, name in names.items() if k in dirs}  # fmt: skip
    kinds = [k for k in ("classifier", "causal", "classical") if k in dirs]
    params = {k: load_student(dirs[k]).n_params() for k in kinds}
    paths = {name: (lambda r, p=p: p.predict([r])[0]["label"]) for name, p in predictors.items()}
    return paths, params


CLASSIFIER = "classifier MiniLM, ONNX int8"
CAUSAL = "causal SmolLM2-135M, CT2 int8 scoring"
CLASSICAL = "classical TF-IDF + LR"


def classical_dirs(data: Path, skip: int, work: Path, n_dev: int = 100):
    """`protege:tfidf-logreg` fitted through the trainer (its grid of C, each scored on dev)
    on `data`'s rows after the first `skip` (the timed inputs): the last `n_dev` choose, the
    others train. ({classical: its best-loss dir, classical_export: the ONNX export}, seconds
    the fit took, loading and saving included)."""
    import time

    from protege.students import export_student
    from protege.train.config import GenerationConfig, TrainConfig
    from protege.train.trainer import train_one

    n = sum(1 for _ in open(data))
    cfg = TrainConfig(
        model="protege:tfidf-logreg",
        task=TaskConfig(format="label"),
        train_data=f"{data}[{skip}:{n - n_dev}]",
        dev_data=f"{data}[{n - n_dev}:]",
        output_dir=str(work / "classical"),
        generation=GenerationConfig(max_new_tokens=8),
    )
    t0 = time.perf_counter()
    train_one(cfg, work / "classical", "classical")
    seconds = time.perf_counter() - t0
    best = work / "classical" / "best-loss"
    exported = export_student(best, None, work / "classical-onnx")
    return {"classical": best, "classical_export": exported}, seconds


def causal_throughput(examples, steps: int, batch_size: int, name: str = CAUSAL_MODEL) -> dict:
    """A causal student's real target tokens/s on protege's path (length-grouped batches,
    left padding, logits over the completion positions only, split loss) beside a reference
    padded to the longest row of the set (right-padded, logits everywhere, HF's own loss),
    steps interleaved so both see the same load. Padding efficiency: real prompt + completion
    tokens over the tokens the batches process."""
    import statistics
    import time

    import torch

    from protege.students import load_student
    from protege.train import trainer
    from protege.train.data import length_grouped_batches
    from protege.train.loss import IGNORE

    task = TaskConfig(format="label+rationale")
    trainer.set_seed(0)
    ours = load_student(name, task)
    ref = load_student(name, task)
    items = ours.encode(examples, 512, 256)
    lengths, zeros = ours.lengths(items)
    batches = length_grouped_batches(lengths, zeros, batch_size, seed=0, epoch=0)
    processed = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    efficiency = sum(lengths) / processed
    longest = max(lengths)
    acc = trainer.make_accelerator("auto")
    opt_a = torch.optim.AdamW(ours.model.parameters(), lr=1e-5)
    opt_b = torch.optim.AdamW(ref.model.parameters(), lr=1e-5)
    sched = trainer.linear_schedule(opt_a, 0, steps + 1)
    model_a, opt_a = acc.prepare(ours.model, opt_a)
    model_b = ref.model.to(acc.device)
    model_a.train()
    model_b.train()
    real_tokens, t_ours, t_ref = [], [], []
    for n in range(steps + 1):
        batch = batches[n % len(batches)]
        micro = [ours.collate([items[i] for i in batch])]
        t0 = time.perf_counter()
        _, _, k = trainer.train_step(
            model_a, opt_a, sched, micro, (0.5, 0.5), acc, 1.0, ours.n_suffix, logits_fn=ours.logits
        )
        t1 = time.perf_counter()
        ids = torch.full((len(batch), longest), ours.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), longest), IGNORE, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(batch):
            e = items[i]
            row = e.input_ids + e.target_ids
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
            labels[r, len(e.input_ids) : len(row)] = torch.tensor(e.target_ids)
        t2 = time.perf_counter()
        with acc.autocast():
            loss = model_b(
                input_ids=ids.to(acc.device),
                attention_mask=mask.to(acc.device),
                labels=labels.to(acc.device),
            ).loss
        loss.backward()
        opt_b.step()
        opt_b.zero_grad()
        t3 = time.perf_counter()
        if n:  # the first step of each is a warm-up
            real_tokens.append(k)
            t_ours.append(t1 - t0)
            t_ref.append(t3 - t2)
    mean_tokens = statistics.mean(real_tokens)
    tps = mean_tokens / statistics.median(t_ours)
    ref_tps = mean_tokens / statistics.median(t_ref)
    return {
        "model": name,
        "tokens_per_s": tps,
        "reference_tokens_per_s": ref_tps,
        "ratio": tps / ref_tps,
        "padding_efficiency": efficiency,
        "times": [round(t, 2) for t in t_ours],
        "reference_times": [round(t, 2) for t in t_ref],
    }
