"""The gradient estimators: perturbed optimizers, Fenchel-Young, direct loss minimization, learned noise."""
