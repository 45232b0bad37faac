"""Datasets: loading images and labels from disk into memory."""

from freebies.data.datasets import ImageData, load_dataset

__all__ = ["ImageData", "load_dataset"]
