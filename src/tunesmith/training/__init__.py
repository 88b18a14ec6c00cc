"""Training: one run orchestrated on transformers' Trainer, with packed batches and progress."""
