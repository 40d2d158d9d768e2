"""Training throughput: protege's trainer vs the reference setup of Paper A's code.

Both train the same T5-small-shaped random student (`protege:t5-small-random`, 60M params) on
the same 256 rows of ANLI R1 dev with teacher explanations (label+rationale format), batch 16,
a few optimizer steps each after one warm-up step, in this one run:

- protege: its real path (encode with span tags, length-grouped batches, dynamic padding,
  split loss, `trainer.train_step` under accelerate; bf16 autocast on a GPU).
- reference: HF `Seq2SeqTrainer` with inputs padded to 600 and targets to 400 tokens
  (`padding="max_length"`), labels padded with id 0 as Paper A did (so pads count in its loss).

Reported: real (non-pad) target tokens per second for both (mean tokens per step over the
median step time, robust to a busy shared machine), their ratio, and protege's
padding efficiency (real / processed tokens, source + target, over the epoch's batches).
Floors: ratio >= 5, padding efficiency >= 0.85. Last line: one JSON object.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_throughput.py [--steps 6] [--rows 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from protege.formats import TaskConfig  # noqa: E402
from protege.student import load_student  # noqa: E402
from protege.train import trainer  # noqa: E402
from protege.train.data import collate, encode, length_grouped_batches, load_examples  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared/data/anli-r1-emanli/dev.jsonl"
MODEL = "protege:t5-small-random"
SRC_PAD, TGT_PAD = 600, 400  # Paper A's fixed padding


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_protege(examples, steps: int, batch_size: int, phases: int = 2) -> dict:
    """protege's path; its timed steps are split over `phases`, run before and after the
    reference, so a shared machine's changing load hits both setups alike."""
    trainer.set_seed(0)
    model, tok = load_student(MODEL)
    items = encode(examples, tok, SRC_PAD, TGT_PAD)  # same truncation limits as the reference
    src = [len(e.input_ids) for e in items]
    tgt = [len(e.target_ids) for e in items]
    batches = length_grouped_batches(src, tgt, batch_size, seed=0, epoch=0)
    real = sum(src) + sum(tgt)
    processed = sum(
        len(b)
        * (max(len(items[i].input_ids) for i in b) + max(len(items[i].target_ids) for i in b))
        for b in batches
    )
    accelerator = trainer.make_accelerator("auto")
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4)
    scheduler = trainer.linear_schedule(optimizer, 0, steps + 1)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    tokens, times = [], []
    step = 0

    def run(n: int, timed: bool) -> None:
        nonlocal step
        for _ in range(n):
            micro = [collate([items[i] for i in batches[step % len(batches)]], tok.pad_token_id)]
            step += 1
            t0 = time.perf_counter()
            _, k = trainer.train_step(
                model, optimizer, scheduler, micro, (0.5, 0.5), accelerator, 1.0
            )
            sync()
            if timed:
                tokens.append(k)
                times.append(time.perf_counter() - t0)

    run(1, timed=False)  # warm-up
    per_phase = [steps // phases + (i < steps % phases) for i in range(phases)]
    for i, n in enumerate(per_phase):
        run(n, timed=True)
        if i < phases - 1:
            yield None  # the reference runs here
    yield {**rate(tokens, times), "padding_efficiency": real / processed}


def rate(tokens: list[float], times: list[float]) -> dict:
    """Mean real target tokens per step / median step time: robust to a busy shared machine."""
    return {
        "tokens": sum(tokens),
        "step_s": statistics.median(times),
        "tokens_per_s": statistics.mean(tokens) / statistics.median(times),
    }


def run_reference(examples, steps: int, batch_size: int) -> dict:
    from datasets import Dataset
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    trainer.set_seed(0)
    model, tok = load_student(MODEL)
    src = tok(
        [e.source for e in examples], padding="max_length", truncation=True, max_length=SRC_PAD
    )
    tgt = tok(
        [e.target for e in examples], padding="max_length", truncation=True, max_length=TGT_PAD
    )
    # Paper A: label padding kept as token id 0 (counted in the loss), not -100.
    labels = [
        [t if m else 0 for t, m in zip(ids, mask, strict=True)]
        for ids, mask in zip(tgt["input_ids"], tgt["attention_mask"], strict=True)
    ]
    real_per_row = sum(sum(m) for m in tgt["attention_mask"]) / len(examples)
    ds = Dataset.from_dict(
        {"input_ids": src["input_ids"], "attention_mask": src["attention_mask"], "labels": labels}
    ).with_format("torch")

    class Clock(TrainerCallback):
        times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.times.append(time.perf_counter())

    clock = Clock()
    gpu = torch.cuda.is_available()
    args = Seq2SeqTrainingArguments(
        output_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / "protege-bench-ref"),
        per_device_train_batch_size=batch_size,
        max_steps=steps + 1,
        learning_rate=6e-4,
        warmup_steps=0,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=not gpu,
        bf16=gpu and torch.cuda.is_bf16_supported(),
        seed=0,
    )
    Seq2SeqTrainer(model=model, args=args, train_dataset=ds, callbacks=[clock]).train()
    times = [b - a for a, b in zip(clock.times, clock.times[1:], strict=False)]
    return rate([real_per_row * batch_size] * len(times), times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data", default=str(DATA))
    args = parser.parse_args()
    task = TaskConfig(format="label+rationale")
    examples = load_examples(args.data, task, max_rows=args.rows).examples
    protege = run_protege(examples, args.steps, args.batch_size)
    next(protege)  # first half of protege's steps
    ref = run_reference(examples, args.steps, args.batch_size)
    ours = next(protege)  # second half
    tps, ref_tps = ours["tokens_per_s"], ref["tokens_per_s"]
    ratio = tps / ref_tps
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(
        f"device: {device}; {args.rows} rows, batch {args.batch_size}, {args.steps} timed steps\n"
    )
    print("| setup | real target tokens | median step s | real target tokens/s |")
    print("| --- | --- | --- | --- |")
    print(
        f"| protege (dynamic padding, length-grouped) | {ours['tokens']} | {ours['step_s']:.2f} | {tps:.0f} |"
    )
    print(
        f"| reference (Seq2SeqTrainer, pad 600/400) | {ref['tokens']:.0f} | {ref['step_s']:.2f} | {ref_tps:.0f} |"
    )
    print(
        f"\nratio: {ratio:.1f}x (floor 5x); padding efficiency: {ours['padding_efficiency']:.3f} (floor 0.85)"
    )
    print(
        json.dumps(
            {
                "tokens_per_s": round(tps, 1),
                "reference_tokens_per_s": round(ref_tps, 1),
                "ratio": round(ratio, 2),
                "padding_efficiency": round(ours["padding_efficiency"], 4),
                "device": device,
            }
        )
    )


if __name__ == "__main__":
    main()
