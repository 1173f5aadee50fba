"""Keras layers: thin wrappers that bind the ops to hyper-parameters, seeds and dtypes."""
