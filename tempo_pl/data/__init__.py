"""Prompt data for the EM loop: dataset sources, prompt templates, resumable streams and the data module."""

from tempo_pl.data.datamodule import TempoDataModule
from tempo_pl.data.sources import DataError, DatasetSpec, Record, load_records, read_tables, register_source
from tempo_pl.data.streams import EMStreams, PromptRow, PromptStream, rows_to_batch
from tempo_pl.data.synthetic import load_synthetic
from tempo_pl.data.templates import DEFAULT_TEMPLATE, TEMPLATES, apply_template, resolve_template

# built-in sources: `synthetic:<split>?key=value` is the offline reasoning task
register_source("synthetic", load_synthetic, overwrite=True)

__all__ = [
    "DEFAULT_TEMPLATE",
    "DataError",
    "DatasetSpec",
    "EMStreams",
    "PromptRow",
    "PromptStream",
    "Record",
    "TEMPLATES",
    "TempoDataModule",
    "apply_template",
    "load_records",
    "read_tables",
    "register_source",
    "resolve_template",
    "rows_to_batch",
]
