"""A guard that makes a first-order gradient estimate fail loudly when differentiated again."""

import tensorflow as tf


def first_order_only(theta: tf.Tensor, what: str, instead: str = "") -> tf.Tensor:
    """Zeros of θ's shape whose own gradient raises `NotImplementedError`.

    Added to a gradient estimate that depends on θ in ways autodiff cannot see (a
    solver in the middle), it leaves the estimate unchanged and turns a second
    derivative, which would otherwise come out as a silent None or a partial, wrong
    value, into a clear error.

    Args:
      theta: the input the estimate is a gradient with respect to.
      what: the estimator, for the message.
      instead: what does have second derivatives, for the message.
    """

    @tf.custom_gradient
    def guard(theta):
        def grad(upstream):
            del upstream
            raise NotImplementedError(
                f"The second derivative of {what} is not implemented: its gradient is an estimate "
                f"with no derivative of its own.{(' ' + instead) if instead else ''}"
            )

        return tf.zeros_like(theta), grad

    return guard(theta)
