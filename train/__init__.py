"""Offline jobs: load QA data, label it with the model's own answers, train and evaluate scorers."""
