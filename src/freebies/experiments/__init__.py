"""Experiments that run many trainings: the ablation grid (`freebies ablate`)."""
