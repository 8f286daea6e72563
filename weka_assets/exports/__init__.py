"""Exports of decoded datasets to the formats benchmark tools read (see `formats`)."""

from weka_assets.exports.formats import (
    EXPORT_VERSION,
    FORMATS,
    ExportError,
    ExportSummary,
    dataset_tokenizer,
    export_dataset,
    meta_path,
)

__all__ = [
    "EXPORT_VERSION",
    "FORMATS",
    "ExportError",
    "ExportSummary",
    "dataset_tokenizer",
    "export_dataset",
    "meta_path",
]
