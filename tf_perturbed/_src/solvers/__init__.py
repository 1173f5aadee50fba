"""Batched solvers written in TensorFlow ops, and their registry."""
