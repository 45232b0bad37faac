"""freebies: the "bag of freebies" for image classifiers (detection is planned).

Training tricks that raise accuracy and cost nothing at inference time.
"""

__version__ = "0.1.0"
