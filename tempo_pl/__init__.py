"""tempo-pl: TEMPO test-time training for large reasoning models, on PyTorch Lightning."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # the heavy classes import torch/transformers; keep `import tempo_pl` cheap for the CLI and tools
    if name == "TempoModule":
        from tempo_pl.module import TempoModule

        return TempoModule
    if name == "TempoDataModule":
        from tempo_pl.data.datamodule import TempoDataModule

        return TempoDataModule
    raise AttributeError(f"module 'tempo_pl' has no attribute {name!r}")


__all__ = ["TempoModule", "TempoDataModule", "__version__"]
