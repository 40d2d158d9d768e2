"""Training throughput: protege's trainer vs the reference setup of Paper A's code.

Both train the same T5-small-shaped random student (`protege:t5-small-random`, 60M params) on
the same 256 rows of ANLI R1 dev with teacher explanations (label+rationale format), batch 16,
a few optimizer steps each after one warm-up step, in this one run:

- protege: its real path (encode with span tags, length-grouped batches, dynamic padding,
  split loss, `trainer.train_step` under accelerate; bf16 autocast on a GPU), one step run
  after each reference step, so a shared machine's changing load hits both alike.
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
from protege.students.seq2seq.build import load_student  # noqa: E402
from protege.train import trainer  # noqa: E402
from protege.train.data import length_grouped_batches, load_examples  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared/data/anli-r1-emanli/dev.jsonl"
MODEL = "protege:t5-small-random"
SRC_PAD, TGT_PAD = 600, 400  # Paper A's fixed padding


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class ProtegeSteps:
    """protege's real path: encode with span tags, length-grouped batches, dynamic padding,
    split loss, `trainer.train_step` under accelerate."""

    def __init__(self, examples, batch_size: int, total_steps: int):
        from protege.students import load_student as load_any

        trainer.set_seed(0)
        self.student = load_any(MODEL, TaskConfig(format="label+rationale"))
        model, self.tok = self.student.model, self.student.tok
        self.items = self.student.encode(examples, SRC_PAD, TGT_PAD)  # same truncation limits
        src = [len(e.input_ids) for e in self.items]
        tgt = [len(e.target_ids) for e in self.items]
        self.batches = length_grouped_batches(src, tgt, batch_size, seed=0, epoch=0)
        processed = sum(
            len(b) * (max(src[i] for i in b) + max(tgt[i] for i in b)) for b in self.batches
        )
        self.padding_efficiency = (sum(src) + sum(tgt)) / processed
        self.accelerator = trainer.make_accelerator("auto")
        optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4)
        self.scheduler = trainer.linear_schedule(optimizer, 0, total_steps)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.model.train()
        self.n, self.tokens, self.times = 0, [], []

    def step(self) -> None:
        """One optimizer step; every step but the first (warm-up) is timed."""
        batch = self.batches[self.n % len(self.batches)]
        micro = [self.student.collate([self.items[i] for i in batch])]
        t0 = time.perf_counter()
        _, _, k = trainer.train_step(
            self.model, self.optimizer, self.scheduler, micro, (0.5, 0.5), self.accelerator, 1.0,
            self.student.n_suffix, logits_fn=self.student.logits,
        )  # fmt: skip
        sync()
        if self.n:
            self.tokens.append(k)
            self.times.append(time.perf_counter() - t0)
        self.n += 1


def rate(tokens: list[float], times: list[float]) -> dict:
    """Mean real target tokens per step over the median (and the fastest) step time: the
    median and the minimum are both robust to bursts of load on a shared machine."""
    mean = statistics.mean(tokens)
    return {
        "tokens": sum(tokens),
        "step_s": statistics.median(times),
        "min_step_s": min(times),
        "tokens_per_s": mean / statistics.median(times),
        "tokens_per_s_best": mean / min(times),
        "times": [round(t, 2) for t in times],
    }


def run_both(examples, steps: int, batch_size: int) -> tuple[dict, dict, float]:
    """The reference's Trainer loop, with one protege step run after each of its steps (outside
    its timing), so both setups see the same load on a shared machine."""
    from datasets import Dataset
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    ours = ProtegeSteps(examples, batch_size, steps + 1)
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
    ref_times: list[float] = []

    class Interleave(TrainerCallback):
        t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            ref_times.append(time.perf_counter() - self.t0)
            ours.step()

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
    Seq2SeqTrainer(model=model, args=args, train_dataset=ds, callbacks=[Interleave()]).train()
    ref_times = ref_times[1:]  # its warm-up step is not timed either
    ref = rate([real_per_row * batch_size] * len(ref_times), ref_times)
    return rate(ours.tokens, ours.times), ref, ours.padding_efficiency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--causal-model", default="protege:smollm2-135m")
    args = parser.parse_args()
    task = TaskConfig(format="label+rationale")
    examples = load_examples(args.data, task, max_rows=args.rows).examples
    ours, ref, padding_efficiency = run_both(examples, args.steps, args.batch_size)
    from kinds import causal_throughput

    causal = causal_throughput(examples, args.steps, args.batch_size, args.causal_model)
    tps, ref_tps = ours["tokens_per_s"], ref["tokens_per_s"]
    ratio = tps / ref_tps
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(
        f"device: {device}; {args.rows} rows, batch {args.batch_size}, {args.steps} timed steps\n"
    )
    print("| setup | real target tokens | step s (each) | median step s | real target tokens/s |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in (
        ("protege (dynamic padding, length-grouped)", ours),
        ("reference (Seq2SeqTrainer, pad 600/400)", ref),
    ):
        print(
            f"| {name} | {r['tokens']:.0f} | {' '.join(map(str, r['times']))} "
            f"| {r['step_s']:.2f} | {r['tokens_per_s']:.1f} |"
        )
    best_ratio = ours["tokens_per_s_best"] / ref["tokens_per_s_best"]
    print(
        f"\nratio: {ratio:.2f}x on median step times, {best_ratio:.2f}x on fastest steps "
        f"(floor 5x); padding efficiency: {padding_efficiency:.3f} (floor 0.85)"
    )
    print(
        f"causal student {causal['model']}: {causal['tokens_per_s']:.1f} real target tokens/s "
        f"(steps {causal['times']}) vs {causal['reference_tokens_per_s']:.1f} padded to the "
        f"longest row (steps {causal['reference_times']}): {causal['ratio']:.2f}x (floor 5x); "
        f"padding efficiency {causal['padding_efficiency']:.3f} (floor 0.95)"
    )
    print(
        json.dumps(
            {
                "tokens_per_s": round(tps, 1),
                "reference_tokens_per_s": round(ref_tps, 1),
                "ratio": round(ratio, 2),
                "padding_efficiency": round(padding_efficiency, 4),
                "ratio_fastest_steps": round(best_ratio, 2),
                "device": device,
                "causal_ratio": round(causal["ratio"], 2),
                "causal_padding_efficiency": round(causal["padding_efficiency"], 4),
                "causal_tokens_per_s": round(causal["tokens_per_s"], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
