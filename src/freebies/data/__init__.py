"""Datasets: images and labels (and boxes) from disk, in memory (or streamed for very large
folders). One reader per format (idx, cifar, folder; coco, voc, yolo), one shared io module."""

from freebies.data.datasets import load_dataset
from freebies.data.folder import FolderImages
from freebies.data.images import ImageData

__all__ = ["FolderImages", "ImageData", "load_dataset"]
