"""Object detection: readers, detector, box-aware tricks."""
