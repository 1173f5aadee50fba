"""Closed-form solvers: argmax, top-k, ranks and sort permutations.

Each maps scores `theta` of shape `[..., d]` to a vertex of a polytope that
maximises `<y, theta>`, batched over the leading axes, with the output in
theta's float dtype (float32 for integer input) and ties broken towards the
lowest index. ±inf scores are ordered like any other; a problem with a NaN
score gets a solution of NaN (eagerly, in graphs and under XLA alike). All are
XLA-compilable.
"""

import tensorflow as tf

from tf_perturbed._src.base import tf_compat, validate


def _nan_rows(theta: tf.Tensor, y: tf.Tensor, extra_ndims: int = 0) -> tf.Tensor:
    """y with the solution of every problem whose scores hold a NaN set to NaN.

    A NaN score has no place in an order, and argmax, top-k and sorts each treat
    it differently (XLA and the TF kernels differ too), so the solvers mark such
    problems as NaN instead of returning a vertex that silently depends on it.

    Args:
      theta: scores `[..., d]` (integer scores hold no NaN and are returned as is).
      y: solutions `[..., d, (extra axes)]` of a float dtype.
      extra_ndims: trailing axes of y beyond theta's last (1 for permutation matrices).
    """
    if not theta.dtype.is_floating:
        return y
    bad = tf.reduce_any(tf.math.is_nan(theta), axis=-1)  # [...]
    bad = tf.reshape(bad, tf.concat([tf.shape(bad), tf.ones([1 + extra_ndims], tf.int32)], 0))  # [..., 1(, 1)]
    return tf.where(bad, tf.constant(float("nan"), y.dtype), y)


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
    theta, dtype = validate.scores(theta, "theta", min_rank=1)
    index = tf.argmax(theta, axis=-1)  # [...]
    return _nan_rows(theta, tf.one_hot(index, tf.shape(theta)[-1], dtype=dtype))


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
        array([0., 1., 0., 1.], dtype=float32)
    """
    theta, dtype = validate.scores(theta, "theta", min_rank=1)
    d = theta.shape[-1]
    k = validate.integer(k, "k")
    if d is not None and k > d:
        raise ValueError(f"Expected `k` ≤ d = {d} (the size of theta's last axis), received: k={k}")
    _, indices = tf.math.top_k(theta, k=k, sorted=False)  # [..., k]
    hot = tf.one_hot(indices, tf.shape(theta)[-1], dtype=dtype)  # [..., k, d]
    return _nan_rows(theta, tf.reduce_sum(hot, axis=-2))  # [..., d]


def _ranks_by_counting(theta: tf.Tensor) -> tf.Tensor:
    """Ascending ranks as int32 by comparing every pair: O(d²), fast under XLA for d ≤ 32."""
    d = tf.shape(theta)[-1]
    left = theta[..., :, None]  # [..., d, 1]  element i
    right = theta[..., None, :]  # [..., 1, d]  element j
    index = tf.range(d)
    earlier = index[None, :] < index[:, None]  # [d, d]  j < i
    below = tf.logical_or(right < left, tf.logical_and(right == left, earlier))
    return tf.reduce_sum(tf.cast(below, tf.int32), axis=-1)  # [..., d]


def _inverse_permutation(order: tf.Tensor) -> tf.Tensor:
    """`rank` with `rank[..., order[..., k]] = k`, for int32 permutations `order` `[..., d]`: O(d)."""
    shape = tf.shape(order)
    d = shape[-1]
    rows = tf.reshape(order, [-1, d])  # [N, d]
    n = tf.shape(rows)[0]
    offsets = tf.range(n)[:, None] * d  # [N, 1]
    flat = tf.reshape(rows + offsets, [-1])  # [N·d]  positions in the flattened batch
    if tf_compat.in_xla_context():
        # XLA has no InvertPermutation kernel; a scatter of 0…d−1 is a single pass.
        values = tf.reshape(tf.broadcast_to(tf.range(d), [n, d]), [-1])  # [N·d]
        inverse = tf.scatter_nd(flat[:, None], values, tf.reshape(n * d, [1]))  # [N·d]
        return tf.reshape(inverse, shape)  # [..., d]
    inverse = tf.reshape(tf.math.invert_permutation(flat), [n, d]) - offsets  # [N, d]
    return tf.reshape(inverse, shape)  # [..., d]


def _positive_zeros(theta: tf.Tensor) -> tf.Tensor:
    """θ with −0.0 replaced by +0.0, so that methods comparing bits tie them as `==` does."""
    return tf.where(tf.equal(theta, 0.0), tf.zeros_like(theta), theta)


def _ranks_by_sorting(theta: tf.Tensor) -> tf.Tensor:
    """Ascending ranks as int32 by one stable argsort and its inverse: O(d log d)."""
    # −0.0 → +0.0: XLA's float sort orders them by their bits, the comparisons elsewhere tie them.
    theta = _positive_zeros(theta)
    order = tf.argsort(theta, axis=-1, stable=True)  # [..., d]
    return _inverse_permutation(order)  # [..., d]


_LOW_32_BITS = 0xFFFFFFFF


def _ranks_by_packed_sort_xla(theta: tf.Tensor) -> tf.Tensor:
    """Ascending ranks of float32 `theta` with one integer sort (XLA only).

    Each score becomes the int64 key `bits(θ_i)·2³² + i`, where `bits` maps float32 to
    int32 keeping the order: the keys are distinct, ordered as (θ_i, i), so sorting them
    breaks ties towards the lowest index with no stable sort. XLA sorts one int64
    operand with a plain `<` about 10× faster on CPU than the float (key, index)
    pair that `tf.argsort` lowers to, whose comparator orders floats by their bits.
    """
    d = tf.shape(theta)[-1]
    theta = _positive_zeros(theta)  # −0.0 and +0.0 tie: give them one key
    bits = tf.bitcast(theta, tf.int32)  # [..., d]
    # Negative floats: flipping the 31 low bits reverses their order and keeps them below the positives.
    monotone = tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, tf.constant(0x7FFFFFFF, tf.int32)), bits)
    keys = tf.cast(monotone, tf.int64) * (2**32) + tf.range(d, dtype=tf.int64)  # [..., d]
    keys = tf_compat.xla_sort(keys)  # [..., d]  ascending along the last axis
    order = tf.cast(tf.bitwise.bitwise_and(keys, tf.constant(_LOW_32_BITS, tf.int64)), tf.int32)  # [..., d]
    return _inverse_permutation(order)  # [..., d]


_packed_sort_jit = tf.function(_ranks_by_packed_sort_xla, jit_compile=True, autograph=False)


def _ranks_by_packed_sort(theta: tf.Tensor) -> tf.Tensor:
    """`_ranks_by_packed_sort_xla`, compiled on its own outside an XLA context."""
    if theta.dtype != tf.float32:
        raise TypeError(
            f"Expected float32 scores for method='packed', received: theta.dtype={theta.dtype.name}"
        )
    if tf_compat.in_xla_context():
        return _ranks_by_packed_sort_xla(theta)
    return _packed_sort_jit(theta)


# Under XLA on CPU, pairwise counting compiles to a vectorised loop up to d = 32 and is
# then the fastest method; from d ≈ 40 on it is 5–20× slower than the packed sort
# (benchmarks/README.md, "Ranking methods").
_COUNT_MAX_D = 32

RANK_METHODS = ("auto", "sort", "count", "packed")


def integer_ranks(theta: tf.Tensor, method: str = "auto") -> tf.Tensor:
    """Ascending ranks of `theta` as int32 (see `ranks`).

    Args:
      theta: scores `[..., d]`, float.
      method: `"sort"` (stable argsort, then its inverse permutation), `"count"`
        (pairwise comparisons, O(d²)), `"packed"` (one int64 sort of
        order-preserving keys, compiled with XLA; float32 only) or `"auto"`: under
        XLA, count for d ≤ 32, packed for larger float32, otherwise sort; outside
        XLA, sort (TensorFlow's CPU top-k kernel).

    Raises:
      ValueError: for an unknown `method`.
      TypeError: for `method="packed"` and non-float32 scores.
    """
    if method == "auto":
        if not tf_compat.in_xla_context():
            method = "sort"
        elif theta.shape[-1] is not None and theta.shape[-1] <= _COUNT_MAX_D:
            method = "count"
        elif theta.dtype == tf.float32:
            method = "packed"
        else:
            method = "sort"
    if method == "count":
        return _ranks_by_counting(theta)
    if method == "sort":
        return _ranks_by_sorting(theta)
    if method == "packed":
        return _ranks_by_packed_sort(theta)
    raise ValueError(f"Expected `method` in {RANK_METHODS}, received: method={method!r}")


def ranks(theta: tf.Tensor) -> tf.Tensor:
    """Ascending ranks, the maximiser over the permutahedron of (0, …, d−1).

    Formula:
        y*(θ)_i = #{j : θ_j < θ_i} + #{j < i : θ_j = θ_i}
        (the permutation of (0, …, d−1) maximising ⟨y, θ⟩: the largest score gets d−1)

    Args:
        theta: scores, `[..., d]`.

    Returns:
        Ranks `[..., d]` in theta's float dtype, a permutation of 0, …, d−1 per row.
        Computed by pairwise comparison under XLA for d ≤ 32, by one integer sort
        under XLA for larger float32 inputs, and otherwise by a stable argsort and
        its inverse permutation (see `integer_ranks`).

    Example:
        >>> ranks(tf.constant([0.3, -1.0, 2.0])).numpy()
        array([1., 0., 2.], dtype=float32)
    """
    theta, dtype = validate.scores(theta, "theta", min_rank=1)
    return _nan_rows(theta, tf.cast(integer_ranks(theta), dtype))


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
    theta, dtype = validate.scores(theta, "theta", min_rank=1)
    rank = integer_ranks(theta)  # [..., d]
    hot = tf.one_hot(rank, tf.shape(theta)[-1], dtype=dtype)  # [..., d(j), d(i)]
    return _nan_rows(theta, tf.linalg.matrix_transpose(hot), extra_ndims=1)  # [..., d(i), d(j)]
