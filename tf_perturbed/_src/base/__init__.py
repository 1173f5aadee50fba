"""Foundations every other module builds on: validation, seeds, noise, accurate sums, TF internals."""
