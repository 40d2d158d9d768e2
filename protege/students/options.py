"""`train.student`: which kind of student, and how it is loaded for training (no heavy imports:
the train config reads it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StudentOptions:
    """Which kind of student, and how it is loaded for training (`train.student`)."""

    kind: str = "auto"
    """`auto` (from the model's config), `seq2seq`, `causal`, `classifier` or `classical`."""
    lora: bool = False
    """Causal students: train LoRA adapters (peft) instead of every weight; merged on save."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more compute."""
