"""The training loop for one configuration, readable top to bottom.

Plain PyTorch with `accelerate` for the device, DDP (`accelerate launch`), bf16 autocast on a
GPU. Gradient accumulation is done by hand (no_sync on all but the last micro-batch) so the
loop stays explicit. Dev evaluation `evals_per_epoch` times per epoch; after each, the
history is written, the best-loss / best-accuracy checkpoints are replaced when beaten, and a
resumable `last/` is saved. DONE is written last: its existence means the run finished.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protege.config import to_dict
from protege.data.io import atomic_write_text, write_json
from protege.errors import ConfigError
from protege.formats import model_task_prefix
from protege.students import load_student
from protege.train import checkpoint
from protege.train.config import TrainConfig
from protege.train.data import (
    data_fingerprint,
    length_grouped_batches,
    load_examples,
    refuse_selection_on_training_rows,
)
from protege.train.dev_eval import evaluate
from protege.train.loss import TokenSums, split_loss, token_sums
from protege.train.results import json_lines, read_upto, result_entry


def set_seed(seed: int) -> None:
    """The one place that seeds random, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def choose_precision(cuda: bool, bf16_native: bool, model_type: str | None = None) -> str:
    """`auto` mixed precision: bf16 on GPUs that compute in it natively (A100, H100 ...),
    fp16 on older GPUs that only emulate bf16 (T4, V100), full precision on CPU. T5 overflows
    in fp16 (its activations exceed 65,504), so T5 without native bf16 trains in fp32."""
    if not cuda:
        return "no"
    if bf16_native:
        return "bf16"
    return "no" if model_type in ("t5", "mt5", "umt5") else "fp16"


def make_accelerator(mixed_precision: str = "auto", model: str | None = None):
    from accelerate import Accelerator

    if mixed_precision == "auto":
        cuda = torch.cuda.is_available()
        native = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
        model_type = _model_type(model) if cuda and not native and model else None
        mixed_precision = choose_precision(cuda, native, model_type)
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu_ddp())


def _model_type(model: str) -> str | None:
    from protege.students import read_config, resolve

    config = read_config(resolve(model)[0])  # None: a name not built or cached yet
    return config.get("model_type") if config else None


def cpu_ddp() -> bool:
    """Several processes and no GPU (`accelerate launch --multi_gpu` / torchrun on a CPU box):
    accelerate picks DDP over gloo only when told it runs on CPU."""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def end_processes() -> None:
    """After a successful run under `accelerate launch`: every process meets, then the process
    group is destroyed. Left to the interpreter's exit, gloo's threads can abort a process
    ("terminate called without an active exception", SIGABRT) after all the work is done.
    Not called after an error: a process stuck elsewhere would never reach the barrier."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up to the peak lr, then linear decay to zero at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def generation_budget(cfg: TrainConfig, task, encoded) -> int:
    """`generation.max_new_tokens`, raised where it would stop generation before the label of
    the longest target can be read back (`rationale+label`: the whole target); kept as is
    otherwise. Every dev, test and serve output would else be malformed by construction."""
    if task.type != "classification" or not encoded:
        return cfg.generation.max_new_tokens
    return max(cfg.generation.max_new_tokens, max(e.label_reach for e in encoded))


def local_batches(
    items, cfg: TrainConfig, epoch: int, rank: int, world: int, groups=None, lengths=None
) -> list[list[int]]:
    """This process's batches of one epoch: the same global order everywhere, dealt round-robin
    (trimmed to a multiple of the world size so every process takes the same number of steps).
    Fewer batches than processes would leave one without work, waiting for the others
    forever: that stops with an error, on every process alike. `lengths(items)`: the two
    grouping keys (the student's; default source and target lengths)."""
    if lengths is None:
        src, tgt = [len(e.input_ids) for e in items], [len(e.target_ids) for e in items]
    else:
        src, tgt = lengths(items)
    batches = length_grouped_batches(
        src, tgt, cfg.batch_size, cfg.seed, epoch, cfg.mega_batch, groups
    )
    if len(batches) < world:
        raise ConfigError(
            f"train_data: {len(items)} examples make {len(batches)} batches of batch_size="
            f"{cfg.batch_size}, fewer than the {world} processes; lower batch_size to at most "
            f"{max(1, len(items) // world)} or run fewer processes"
        )
    batches = batches[: len(batches) // world * world]
    return batches[rank::world]


def train_step(
    model,
    optimizer,
    scheduler,
    micro_batches,
    weights,
    accelerator,
    max_grad_norm,
    n_suffix=1,
    *,
    logits_fn,
):
    """One optimizer step over `micro_batches` (gradient accumulation). Returns the mean loss
    optimised, the per-span token sums (so a term absent from a batch is missing, not 0) and
    the real target tokens seen. `logits_fn(model, batch)` is the student's: (logits, targets,
    tags) aligned, (B, T, V), (B, T), (B, T)."""
    total = 0.0
    sums = TokenSums()
    tokens = 0
    for i, batch in enumerate(micro_batches):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            logits, targets, tags = logits_fn(model, batch)  # (B, T, V), (B, T), (B, T)
            terms = split_loss(logits, targets, tags, weights)
            accelerator.backward(terms.total / len(micro_batches))
        total += float(terms.total.detach()) / len(micro_batches)
        sums.add(token_sums(logits.detach(), targets, tags, n_suffix))
        tokens += int((batch["tags"] > 0).sum())
    if max_grad_norm:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total, sums, tokens


def eval_steps(steps_per_epoch: int, evals_per_epoch: int, total_steps: int) -> set[int]:
    """The steps evaluated at: `evals_per_epoch` evenly spaced points of every epoch, the last
    one on the epoch's end (265 steps per epoch, 2 per epoch: 133, 265, 398, 530, ...), and
    the final step. Never drifts off the epoch boundaries."""
    per = max(1, steps_per_epoch)
    k = min(evals_per_epoch, per)
    within = {math.ceil(j * per / k) for j in range(1, k + 1)}
    epochs = math.ceil(total_steps / per)
    out = {e * per + w for e in range(epochs) for w in within}
    return {s for s in out if s <= total_steps} | {total_steps}


def window_losses(accelerator, step_totals: list[float], sums: TokenSums) -> dict[str, Any]:
    """Train losses of the steps since the last evaluation, over ALL processes: the mean loss
    optimised, and each term as a token mean over the batches that had it (None if none)."""
    local = [sum(step_totals), len(step_totals), *sums.as_list()]
    vec = torch.tensor(local, dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        vec = accelerator.reduce(vec, "sum")
    v = vec.cpu().tolist()
    lab, rat, span = TokenSums.from_list(v[2:]).means()
    return {
        "train_loss": v[0] / v[1] if v[1] else None,
        "train_loss_label": lab,
        "train_loss_rationale": rat,
        "train_loss_label_span": span,
    }


def train_one(cfg: TrainConfig, out: Path, run_id: str, baseline: bool = False) -> dict[str, Any]:
    """Train one configuration into `out`; resumes from `out/last` when it exists."""
    from tqdm.auto import tqdm

    from protege.students import student_class

    if student_class(cfg.model, cfg.student.kind).fits_itself:  # a kind without gradient steps
        from protege.train.fit import fit_one

        set_seed(cfg.seed)
        student = load_student(cfg.model, cfg.task, cfg.student.kind, cfg.student, seed=cfg.seed)
        return fit_one(student, cfg, out, run_id, baseline)
    # A fresh Accelerator per configuration: what it tracks for save_state/load_state
    # (model, optimizer, scheduler) must be this configuration's alone.
    accelerator = make_accelerator(cfg.mixed_precision, cfg.model)
    main = accelerator.is_main_process
    task = cfg.task
    set_seed(cfg.seed)
    with accelerator.main_process_first():  # builds protege: models once, not per process
        student = load_student(cfg.model, task, cfg.student.kind, cfg.student, seed=cfg.seed)
    model = student.model
    if task.input_prefix is None:  # the model's own task prefix (t5-small: "summarize: ")
        task = replace(task, input_prefix=model_task_prefix(model.config, task.type))
    student.task = task
    train = load_examples(cfg.train_data, task, cfg.max_train_rows,
                          min_confidence=cfg.min_confidence)  # fmt: skip
    dev = load_examples(cfg.dev_data, task, cfg.max_dev_rows, split="dev")
    refuse_selection_on_training_rows(cfg, task, train.records, dev.records)
    train_enc = student.encode(train.examples, cfg.max_source_len, cfg.max_target_len)
    dev_enc = student.encode(dev.examples, cfg.max_source_len, cfg.max_target_len)
    budget = generation_budget(cfg, task, train_enc + dev_enc)
    if budget != cfg.generation.max_new_tokens:
        if main:
            print(
                f"[{run_id}] generation.max_new_tokens raised from "
                f"{cfg.generation.max_new_tokens} to {budget}: the longest {task.format} "
                f"target needs {budget} tokens to reach its label"
            )
        cfg = replace(cfg, generation=replace(cfg.generation, max_new_tokens=budget))
    decoding = cfg.generation.settings()  # the one source: dev, checkpoints, test, serve
    student.configure_decoding(decoding)
    weights = None if task.format == "label" else (cfg.split[0], cfg.split[1])
    rank, world = accelerator.process_index, accelerator.num_processes

    groups = train.groups if task.format == "multitask" else None  # predict:+explain: rows
    n_local = len(local_batches(train_enc, cfg, 0, rank, world, groups, student.lengths))
    steps_per_epoch = math.ceil(n_local / cfg.grad_accum)
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    evaluate_at = eval_steps(steps_per_epoch, cfg.evals_per_epoch, total_steps)
    n_suffix = student.n_suffix

    trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters only
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    scheduler = linear_schedule(optimizer, cfg.warmup_steps, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped once per optimizer step, by us
    unwrapped = accelerator.unwrap_model(model)
    student.model, student.device = unwrapped, accelerator.device  # generation in dev evals
    student.max_source_len = cfg.max_source_len

    meta_base = {
        "run_id": run_id,
        "config": to_dict(cfg),
        "seed": cfg.seed,
        "data_fingerprint": data_fingerprint(
            cfg.train_data, cfg.dev_data, max_rows=cfg.max_train_rows
        ),
        "versions": checkpoint.library_versions(),
        "decoding": decoding,
        "data": {"train": train.counts(), "dev": dev.counts()},
    }
    history_path, steps_path = out / "history.jsonl", out / "steps.jsonl"
    state = checkpoint.load_last(accelerator, out / "last") or {"step": 0, "epoch": 0, "pos": 0}
    history = read_upto(history_path, state["step"])
    steps_log = read_upto(steps_path, state["step"])  # both loss terms at every step
    step, epoch, pos = state["step"], state["epoch"], state["pos"]
    if main and step:
        print(f"[{run_id}] resuming from step {step} (epoch {epoch}, batch {pos})")

    acc_key = "eval_rougeL" if task.type == "summarization" else "eval_accuracy"
    since_eval: list[float] = []  # loss optimised, per step since the last evaluation
    sums_since_eval = TokenSums()  # per-span token sums of those steps
    tokens_since_eval, t0 = 0, time.perf_counter()
    stopped_early = False
    bar = tqdm(total=total_steps, initial=step, desc=run_id, disable=not main, dynamic_ncols=True)
    model.train()
    while step < total_steps and not stopped_early:
        batches = local_batches(train_enc, cfg, epoch, rank, world, groups, student.lengths)
        chunks = [batches[i : i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
        start = pos
        for pos in range(start, len(chunks)):  # noqa: B007 (pos is saved in last/)
            micro = [student.collate([train_enc[i] for i in b]) for b in chunks[pos]]
            lr = scheduler.get_last_lr()[0]  # the rate this step uses
            loss, sums, tokens = train_step(
                model,
                optimizer,
                scheduler,
                micro,
                weights,
                accelerator,
                cfg.max_grad_norm,
                n_suffix,
                logits_fn=student.logits,
            )
            step += 1
            since_eval.append(loss)
            sums_since_eval.add(sums)
            tokens_since_eval += tokens
            lab, rat, _ = sums.means()  # None: this step had no such token
            steps_log.append(  # this process's steps (the history reduces over all)
                {"step": step, "loss": loss, "loss_label": lab, "loss_rationale": rat, "lr": lr}
            )
            tps = tokens_since_eval * world / max(1e-9, time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:.0f}")
            if step not in evaluate_at:
                continue
            # ---- evaluate, log, checkpoint ----
            elapsed = time.perf_counter() - t0
            tokens_all = int(  # real target tokens of all processes
                accelerator.reduce(
                    torch.tensor(tokens_since_eval, device=accelerator.device), "sum"
                )
            )
            entry = {
                "step": step,
                "epoch": round(step / steps_per_epoch, 4),
                **evaluate(student, task, dev.records, dev_enc, weights, cfg, accelerator),
                **window_losses(accelerator, since_eval, sums_since_eval),
                "lr": lr,
                "tokens_per_s": tokens_all / max(1e-9, elapsed),
            }
            history.append(entry)
            if main:
                atomic_write_text(history_path, json_lines(history))
                atomic_write_text(steps_path, json_lines(steps_log))
                meta = {**meta_base, "step": step, "epoch": entry["epoch"], "metrics": entry}
                if checkpoint.select_best(history, "eval_loss", False) is entry:
                    checkpoint.save_model_dir(student, task, meta, out / "best-loss")
                if checkpoint.select_best(history, acc_key, True) is entry:
                    checkpoint.save_model_dir(student, task, meta, out / "best-accuracy")
                bar.write(
                    f"[{run_id}] step {step}: "
                    + ", ".join(
                        f"{k}={v:.4g}"
                        for k, v in entry.items()
                        if k.startswith("eval") and v is not None
                    )
                )
            checkpoint.save_last(
                accelerator, {"step": step, "epoch": epoch, "pos": pos + 1}, out / "last"
            )
            since_eval, tokens_since_eval, t0 = [], 0, time.perf_counter()
            sums_since_eval = TokenSums()
            if checkpoint.should_stop(history, cfg.patience):
                stopped_early = True
            if stopped_early or step >= total_steps:
                break
        else:
            epoch, pos = epoch + 1, 0
    bar.close()

    result = result_entry(cfg, run_id, baseline, history, acc_key, stopped_early, step, train, dev)
    if main:
        write_json(out / "result.json", result)
        atomic_write_text(out / "DONE", f"finished at step {step}\n")
        shutil.rmtree(out / "last", ignore_errors=True)  # resume state only; the run is done
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    return result
