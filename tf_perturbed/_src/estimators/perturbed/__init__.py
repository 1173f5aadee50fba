"""The perturbed optimizer: configuration, sampling, the chunked engine, the Jacobian, the maximum."""
