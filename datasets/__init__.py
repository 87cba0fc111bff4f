"""cascadekit.datasets: image corpora to Zarr latent datasets, and reading them back for training.

* :func:`build_latent_dataset` (``cascadekit encode``): resumable, torchrun-distributed, bad-input-safe.
* :class:`LatentDataset`: shuffled batched training reads (block shuffle, rank and worker splits).
* :func:`inspect_store` (``cascadekit inspect``), :func:`add_text_embeddings` (``cascadekit embed-text``).

The store layout is documented in ``docs/dataset_format.md``.
"""
from cascadekit.datasets.builder import Encoder, Summary, build_latent_dataset, store_summary
from cascadekit.datasets.inspect import format_report, inspect_store
from cascadekit.datasets.reader import LatentDataset
from cascadekit.datasets.store import FORMAT_NAME, FORMAT_VERSION, open_store
from cascadekit.datasets.text_embeddings import add_text_embeddings

__all__ = [
    "Encoder",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LatentDataset",
    "Summary",
    "add_text_embeddings",
    "build_latent_dataset",
    "format_report",
    "inspect_store",
    "open_store",
    "store_summary",
]
