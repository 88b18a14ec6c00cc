"""Formatting: chat templates, masks from one render, packed batches."""
