"""Private implementation of tf_perturbed; import from `tf_perturbed` instead."""
