"""Model and dataset cards, and publishing memcomp checkpoints to the Hugging Face Hub."""

from .cards import STAGES, CompressionRates, DatasetContents, compression_rates, dataset_card, model_card
from .evaluation import load_evaluation
from .export import export_dataset, export_model, list_files

__all__ = [
    "STAGES",
    "CompressionRates",
    "DatasetContents",
    "compression_rates",
    "dataset_card",
    "export_dataset",
    "export_model",
    "list_files",
    "load_evaluation",
    "model_card",
]
