"""Closed-form solvers: argmax, top-k, ranks and sort permutations.

Each maps scores `theta` of shape `[..., d]` to a vertex of a polytope that
maximises `<y, theta>`, batched over the leading axes, with the output in
theta's float dtype (float32 for integer input) and ties broken towards the
lowest index. All are XLA-compilable.
"""

import tensorflow as tf

from tf_perturbed._src.solvers import _checks


def argmax(theta: tf.Tensor) -> tf.Tensor:
    """One-hot vector of the largest score.

    Formula:
        y*(θ) = e_i,  i = min argmax_j θ_j  (the vertex of the simplex maximising ⟨y, θ⟩)

    Args:
        theta: scores, `[..., d]` with d ≥ 1.

    Returns:
        One-hot `[..., d]` in theta's float dtype.

    Raises:
        ValueError: if theta is a scalar or its last axis is empty.

    Example:
        >>> argmax(tf.constant([0.1, 2.0, -1.0])).numpy()
        array([0., 1., 0.], dtype=float32)
    """
    theta, dtype = _checks.scores(theta, "theta", min_rank=1)
    index = tf.argmax(theta, axis=-1)  # [...]
    return tf.one_hot(index, tf.shape(theta)[-1], dtype=dtype)


def top_k(theta: tf.Tensor, k: int) -> tf.Tensor:
    """k-hot vector of the k largest scores.

    Formula:
        y*(θ) = Σ_{i ∈ top-k(θ)} e_i  (the vertex of {y ∈ [0, 1]^d, Σ y = k} maximising ⟨y, θ⟩)

    Args:
        theta: scores, `[..., d]` with d ≥ k.
        k: number of selected entries, 1 ≤ k ≤ d.

    Returns:
        k-hot `[..., d]` in theta's float dtype.

    Raises:
        ValueError: if k is not an integer in [1, d].

    Example:
        >>> top_k(tf.constant([0.1, 2.0, -1.0, 0.5]), k=2).numpy()
        array([0. , 1., 0., 1.], dtype=float32)
    """
    theta, dtype = _checks.scores(theta, "theta", min_rank=1)
    d = theta.shape[-1]
    k = _checks.positive_int(k, "k")
    if d is not None and k > d:
        raise ValueError(f"Expected `k` ≤ d = {d} (the size of theta's last axis), received: k={k}")
    _, indices = tf.math.top_k(theta, k=k, sorted=False)  # [..., k]
    hot = tf.one_hot(indices, tf.shape(theta)[-1], dtype=dtype)  # [..., k, d]
    return tf.reduce_sum(hot, axis=-2)  # [..., d]


def _ranks_by_counting(theta: tf.Tensor) -> tf.Tensor:
    """Ascending ranks as int32 by comparing every pair: O(d²), fast under XLA."""
    d = tf.shape(theta)[-1]
    left = theta[..., :, None]  # [..., d, 1]  element i
    right = theta[..., None, :]  # [..., 1, d]  element j
    index = tf.range(d)
    earlier = index[None, :] < index[:, None]  # [d, d]  j < i
    below = tf.logical_or(right < left, tf.logical_and(right == left, earlier))
    return tf.reduce_sum(tf.cast(below, tf.int32), axis=-1)  # [..., d]


def _ranks_by_sorting(theta: tf.Tensor) -> tf.Tensor:
    """Ascending ranks as int32 by a double stable argsort: O(d log d)."""
    order = tf.argsort(theta, axis=-1, stable=True)  # [..., d]
    return tf.argsort(order, axis=-1, stable=True)  # [..., d]


def _in_xla_context() -> bool:
    graph = tf.compat.v1.get_default_graph()
    # pylint: disable=protected-access
    from tensorflow.python.ops import control_flow_util  # noqa: PLC0415

    return control_flow_util.GraphOrParentsInXlaContext(graph)


def integer_ranks(theta: tf.Tensor, method: str = "auto") -> tf.Tensor:
    """Ascending ranks of `theta` as int32 (see `ranks`); `method` in auto/sort/count."""
    if method == "auto":
        # tf.argsort lowers to a slow comparator sort under XLA on CPU; pairwise
        # counting is a handful of fused elementwise ops there (benchmarks/README.md).
        d = theta.shape[-1]
        small = d is not None and d <= 256
        method = "count" if (small and _in_xla_context()) else "sort"
    if method == "count":
        return _ranks_by_counting(theta)
    if method == "sort":
        return _ranks_by_sorting(theta)
    raise ValueError(f"Expected `method` in ('auto', 'sort', 'count'), received: method={method!r}")


def ranks(theta: tf.Tensor) -> tf.Tensor:
    """Ascending ranks, the maximiser over the permutahedron of (0, …, d−1).

    Formula:
        y*(θ)_i = #{j : θ_j < θ_i} + #{j < i : θ_j = θ_i}
        (the permutation of (0, …, d−1) maximising ⟨y, θ⟩: the largest score gets d−1)

    Args:
        theta: scores, `[..., d]`.

    Returns:
        Ranks `[..., d]` in theta's float dtype, a permutation of 0, …, d−1 per row.
        Under XLA the ranks are computed by pairwise comparison for d ≤ 256 (faster
        than XLA's sort on CPU); otherwise by a stable double argsort.

    Example:
        >>> ranks(tf.constant([0.3, -1.0, 2.0])).numpy()
        array([1., 0., 2.], dtype=float32)
    """
    theta, dtype = _checks.scores(theta, "theta", min_rank=1)
    return tf.cast(integer_ranks(theta), dtype)


def sort_permutation(theta: tf.Tensor) -> tf.Tensor:
    """Permutation matrix that sorts `theta` in ascending order.

    Formula:
        P_ij = 1 if rank(θ)_j = i, so (P θ)_i is the i-th smallest score; P maximises
        ⟨P, w θᵀ⟩ over permutation matrices for w = (0, 1, …, d−1).

    Args:
        theta: scores, `[..., d]`.

    Returns:
        Permutation matrices `[..., d, d]` in theta's float dtype.

    Example:
        >>> sort_permutation(tf.constant([0.3, -1.0, 2.0])).numpy()
        array([[0., 1., 0.],
                      [1., 0., 0.],
                      [0., 0., 1.]], dtype=float32)
    """
    theta, dtype = _checks.scores(theta, "theta", min_rank=1)
    rank = integer_ranks(theta)  # [..., d]
    hot = tf.one_hot(rank, tf.shape(theta)[-1], dtype=dtype)  # [..., d(j), d(i)]
    return tf.linalg.matrix_transpose(hot)  # [..., d(i), d(j)]
