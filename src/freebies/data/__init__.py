"""Datasets: images and labels from disk, in memory (or streamed for very large folders)."""

from freebies.data.datasets import FolderImages, ImageData, load_dataset

__all__ = ["FolderImages", "ImageData", "load_dataset"]
