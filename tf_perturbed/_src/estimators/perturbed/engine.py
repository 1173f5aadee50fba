"""The engine: solve the perturbed problems in one call per chunk and sum per-sample terms.

Every Monte-Carlo quantity of the package is a mean over the M samples of a term
computed from one sample's problem and solution (a solution, ⟨y, θ'⟩, a weighted
noise). `sample_sums` runs the solver once on all C·B problems of a chunk, hands
the chunk to a function that returns the per-sample terms `[C, …]`, and sums them
over the samples with `summation.tree_sum` (within a chunk) and
`summation.accumulate` (across chunks), so the sums keep float32's precision at
any M.
"""

from typing import Callable, Optional, Tuple

import tensorflow as tf

from tf_perturbed._src.base import summation
from tf_perturbed._src.estimators.perturbed import sampling
from tf_perturbed._src.estimators.perturbed.config import PerturbationConfig

Kept = Tuple[sampling.Perturbed, tf.Tensor]
# terms(z_c, perturbed_c, y_c) -> per-sample terms `[c, …]`; make_terms(first chunk) -> terms
Terms = Callable[[tf.Tensor, sampling.Perturbed, tf.Tensor], Tuple[tf.Tensor, ...]]
MakeTerms = Callable[[tf.Tensor, sampling.Perturbed, tf.Tensor], Terms]


def inner(a: tf.Tensor, b: tf.Tensor, ndims: int) -> tf.Tensor:
    """⟨a, b⟩ over the last `ndims` axes (a * b when ndims = 0)."""
    return tf.reduce_sum(a * b, axis=list(range(-ndims, 0)))


def expand(v: tf.Tensor, ndims: int) -> tf.Tensor:
    """v with `ndims` trailing axes of size 1 (to broadcast over a problem or a solution)."""
    return tf.reshape(v, tf.concat([tf.shape(v), tf.ones([ndims], tf.int32)], 0))


def solve(config: PerturbationConfig, problems: tf.Tensor, theta: Optional[tf.Tensor] = None):
    """Solves the C·B perturbed problems (and the B unperturbed ones) in one solver call.

    Args:
      problems: `[C, *batch, *event]`, already in the solver's domain.
      theta: `[*batch, *event]` or None (then no unperturbed solution is returned);
        clipped to the solver's domain here.

    Returns:
      `(y [C, *batch, *out], y_hard [*batch, *out] or None)`, in the problems' dtype;
      the solutions are checked against the solver's declared axes.
    """
    solver = config.solver
    event_ndims = solver.event_ndims
    batch_ndims = problems.shape.rank - 1 - event_ndims
    shape = tf.shape(problems)
    batch_shape, event_shape = shape[1 : 1 + batch_ndims], shape[1 + batch_ndims :]
    flat = tf.reshape(problems, tf.concat([[-1], event_shape], 0))  # [C·B, *event]
    flat.set_shape([None] + problems.shape[1 + batch_ndims :].as_list())
    rows = tf.shape(flat)[0]
    if theta is not None:
        hard = tf.reshape(sampling.clip_to_domain(theta, config), tf.concat([[-1], event_shape], 0))  # [B, *event]
        flat = tf.concat([flat, hard], 0)  # [C·B + B, *event]
    y = tf.cast(solver(flat), problems.dtype)  # [C·B (+ B), *out]
    out_shape = tf.shape(y)[1:]
    y_pert = tf.reshape(y[:rows], tf.concat([shape[:1], batch_shape, out_shape], 0))  # [C, *batch, *out]
    if theta is None:
        return y_pert, None
    y_hard = tf.reshape(y[rows:], tf.concat([batch_shape, out_shape], 0))  # [*batch, *out]
    return y_pert, y_hard


def hard_solution(theta: tf.Tensor, config: PerturbationConfig) -> tf.Tensor:
    """y*(θ) `[*batch, *out]` in θ's dtype (θ clipped to the solver's domain)."""
    return tf.cast(config.solver(sampling.clip_to_domain(theta, config)), theta.dtype)


def _masked(terms, mask):
    """Per-sample terms with the padded samples of a chunk (mask 0) set to 0."""
    if mask is None:
        return terms
    return tuple(t * expand(mask, t.shape.rank - 1) for t in terms)  # each [c, …]


def sample_sums(
    theta: tf.Tensor,
    z: tf.Tensor,
    config: PerturbationConfig,
    make_terms: MakeTerms,
    *,
    hard: bool = False,
    kept: Optional[Kept] = None,
):
    """Σ_m of per-sample terms over the M samples, one chunk of samples solved at a time.

    Args:
      theta: `[*batch, *event]` in the compute dtype.
      z: the noise `[M, *batch, *event]`.
      make_terms: `make_terms(z_0, perturbed_0, y_0)`, given the first chunk (all
        samples without chunking), returns `terms(z_c, perturbed_c, y_c)`, which
        maps a chunk to a tuple of terms `[c, …]` (the first chunk can fix a shift,
        such as the leave-one-out baseline's).
      hard: also return y*(θ) (solved in the same call as the samples when unchunked).
      kept: `(perturbed, y)` of all M samples from an earlier pass, not solved again.

    Returns:
      `(sums, kept, y_hard)`: the tuple of sums; `(perturbed, y)` of all M samples
      when they were solved at once, for a backward pass to reuse (None with
      chunks: the backward pass solves them again); y*(θ) or None.
    """
    count, size = sampling.chunks(config)
    y_hard = None
    if count == 1:
        if kept is None:
            perturbed = sampling.perturb(theta, z, config)
            y, y_hard = solve(config, perturbed.problems, theta if hard else None)
            kept = (perturbed, y)
        perturbed, y = kept
        terms = make_terms(z, perturbed, y)(z, perturbed, y)
        return tuple(summation.tree_sum(t) for t in terms), kept, y_hard
    if hard:
        y_hard = hard_solution(theta, config)

    def solved_chunk(index):
        z_c, mask = sampling.chunk(z, index, size, config)
        perturbed = sampling.perturb(theta, z_c, config)
        y, _ = solve(config, perturbed.problems)
        return z_c, mask, perturbed, y

    z_0, mask_0, perturbed_0, y_0 = solved_chunk(tf.constant(0))
    terms = make_terms(z_0, perturbed_0, y_0)

    def chunk_sums(index, solved=None):
        z_c, mask, perturbed, y = solved_chunk(index) if solved is None else solved
        return tuple(summation.tree_sum(t) for t in _masked(terms(z_c, perturbed, y), mask))

    first = chunk_sums(None, (z_0, mask_0, perturbed_0, y_0))
    return summation.accumulate(chunk_sums, count, first), None, y_hard
