"""Tests of the trainer, checkpoints, evaluation, report and rollout engine."""
