"""Evaluation and inference: generation metrics base vs tuned, chat."""
