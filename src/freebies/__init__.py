"""freebies: the "bag of freebies" for image classifiers and object detectors.

Training tricks that raise accuracy and cost nothing at inference time.
"""

__version__ = "0.1.0"
