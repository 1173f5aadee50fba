"""Saved weights carry the seed generators' states: training resumed from a backup is the uninterrupted run.

Keras saves a layer's weights, not its `SeedGenerator`s' states, nor anything of a
loss; the package's layers and losses add their generator's state to their saved
variables. So `save_weights`/`load_weights`, `.keras` files and
`keras.callbacks.BackupAndRestore` restore the noise stream with the weights, and a
fit interrupted after epoch k and resumed from its backup equals, bit for bit, a fit
that was never interrupted (the same weights, noise and data order). Without the
states, the resumed epochs would draw the noise of epoch 0 again: a different run.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_perturbed as tp

EPOCHS, BATCH, SIZE, D = 4, 8, 32, 5


def _model():
    """A model with a seeded layer of each kind on the way to two heads, and a seeded loss."""
    keras.utils.set_random_seed(0)
    scores_in, features_in = keras.Input((D,), name="scores"), keras.Input((D,), name="features")
    scores = keras.layers.Dense(D, name="dense")(scores_in)
    noisy = tp.LearnedNoiseScale(initial_sigma=0.3, seed=1, name="noise")([scores, features_in])
    ranks = tp.PerturbedRanks(num_samples=4, seed=2, name="ranks")(noisy)
    model = keras.Model({"scores": scores_in, "features": features_in}, {"ranks": ranks, "argmax": scores})
    model.compile(
        keras.optimizers.Adam(0.05),
        {"ranks": "mse", "argmax": tp.FenchelYoungLoss("argmax", num_samples=3, seed=3)},
    )
    return model


def _data():
    rng = np.random.default_rng(0)
    x = {"scores": rng.normal(size=(SIZE, D)).astype("float32"), "features": rng.normal(size=(SIZE, D)).astype("float32")}
    truth = tf.constant(x["scores"] @ rng.normal(size=(D, D)).astype("float32"))
    return x, {"ranks": tp.solvers.ranks(truth).numpy(), "argmax": tp.solvers.argmax(truth).numpy()}


def _states(model):
    """Every seed generator's state: the layers' and the loss's."""
    states = [v.numpy() for v in model.variables if "seed_generator" in v.path]
    return np.stack(states + [model.loss["argmax"].seed_generator.state.numpy()])


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def test_fit_resumed_from_backup_and_restore_is_the_uninterrupted_fit(tmp_path):
    x, y = _data()
    fit = dict(epochs=EPOCHS, batch_size=BATCH, verbose=0, shuffle=False)
    straight = _model()
    history = straight.fit(x, y, **fit).history
    assert _states(straight)[:, 1].tolist() == [EPOCHS * SIZE // BATCH] * 3  # each drew once per step

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    first = _model()
    with pytest.raises(RuntimeError, match="interrupted"):
        first.fit(x, y, callbacks=[backup, _Interrupt(2)], **fit)
    resumed = _model()  # a new process would build the same model
    rest = resumed.fit(x, y, callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))], **fit).history

    assert set(rest) == set(history) and "noise_sigma" in rest
    assert len(rest["loss"]) == EPOCHS - 2  # epochs 2 and 3 only: none lost, none repeated
    for key in history:
        np.testing.assert_array_equal(rest[key], history[key][2:], err_msg=key)
    for got, want in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_states(resumed), _states(straight))


def test_saved_weights_and_keras_files_restore_the_generators_and_read_files_without_them(tmp_path, monkeypatch):
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)
    states = _states(model)
    assert np.all(states[:, 1] == SIZE // BATCH)
    model.save_weights(tmp_path / "new.weights.h5")
    model.save(tmp_path / "new.keras")
    restored = _model()
    restored.load_weights(tmp_path / "new.weights.h5")
    np.testing.assert_array_equal(_states(restored), states)
    np.testing.assert_array_equal(_states(keras.saving.load_model(tmp_path / "new.keras")), states)
    # A file written without the states (as tf_perturbed 0.1 wrote them) still loads: the
    # weights are restored, the generators keep the state of a newly built model.
    with monkeypatch.context() as patch:
        for layer in (tp.LearnedNoiseScale, tp.PerturbedRanks):
            patch.setattr(layer, "save_own_variables", keras.layers.Layer.save_own_variables)
        patch.setattr(tp.FenchelYoungLoss, "save_own_variables", lambda self, store: None)
        model.save_weights(tmp_path / "old.weights.h5")
        model.save(tmp_path / "old.keras")
    fresh = _states(_model())
    assert np.all(fresh[:, 1] == 0)
    old = _model()
    old.load_weights(tmp_path / "old.weights.h5")
    np.testing.assert_array_equal(_states(old), fresh)
    for got, want in zip(old.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_states(keras.saving.load_model(tmp_path / "old.keras")), fresh)
