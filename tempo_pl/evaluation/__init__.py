"""Evaluation: k samples per question and the per-question records and their summaries."""
