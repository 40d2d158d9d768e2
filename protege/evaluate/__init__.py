"""Evaluation: metrics, intervals and paired tests for students and the teacher.

`evaluate_model` scores one student model directory; `evaluate_run` scores every checkpoint
of a training run (and the teacher's zero-shot row) and writes `RUN_DIR/eval/summary.json`.
"""

from protege.evaluate.model_eval import evaluate_model, evaluate_teacher
from protege.evaluate.predict import Decoding
from protege.evaluate.run_eval import evaluate_run

__all__ = ["Decoding", "evaluate_model", "evaluate_run", "evaluate_teacher"]
