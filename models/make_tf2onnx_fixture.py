"""Make the tf2onnx-exported test models in ``tests/data/`` (run in a separate venv).

TensorFlow and tf2onnx are far too heavy for cimguard's CI, so the small files they write are committed
and this script regenerates them (it refuses to overwrite; give an empty folder to compare)::

    python -m venv /tmp/venv-tf && /tmp/venv-tf/bin/pip install tensorflow-cpu tf2onnx scikit-learn
    /tmp/venv-tf/bin/python models/make_tf2onnx_fixture.py --folder tests/data

1. ``keras_digits_tf2onnx.onnx``: a Keras CNN (NHWC, as TensorFlow lays images out) trained for a few
   epochs on scikit-learn's digits training split (``i % 5 != 0``, cimguard's split), with a running
   ``Max`` over the class scores started at ``-inf`` (a legitimate constant, not a crossbar weight).
2. ``keras_bytes_tf2onnx.onnx`` and its data ``bytes_tokens.npz``: a byte-token classifier (int32
   token ids, an embedding, a 1-D convolution, a max over the sequence and a dense head; the same
   ``-inf`` running max) trained on synthetic byte strings whose class is the most frequent of four
   byte ranges.

Both are exported by ``tf2onnx.convert.from_keras`` at opset 15.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", required=True)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    folder = os.path.abspath(args.folder)
    outputs = [os.path.join(folder, name) for name in
               ("keras_digits_tf2onnx.onnx", "keras_bytes_tf2onnx.onnx", "bytes_tokens.npz")]
    if any(os.path.exists(path) for path in outputs):
        raise SystemExit(f"{folder} already holds the files; give an empty folder")

    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    digits_cnn(tf, outputs[0], args.epochs)
    byte_classifier(tf, outputs[1], outputs[2], args.epochs)


def _running_max(tf, scores):
    # max(scores, -inf): what a running maximum starts from; it changes nothing.
    return tf.keras.layers.Lambda(lambda s: tf.maximum(s, tf.fill(tf.shape(s), -np.inf)), name="scores")(scores)


def _export(tf, model, spec, path: str, held_out: float) -> None:
    import tf2onnx

    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=15)
    with open(path, "xb") as handle:
        handle.write(proto.SerializeToString())
    print(f"wrote {path}: held-out accuracy {held_out:.4f} in TensorFlow")


def _compiled(tf, inputs, scores):
    model = tf.keras.Model(inputs, _running_max(tf, scores))
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def digits_cnn(tf, path: str, epochs: int) -> None:
    from sklearn.datasets import load_digits

    tf.keras.utils.set_random_seed(0)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]  # [N, 8, 8, 1]
    y = digits.target.astype(np.int64)
    train = np.arange(len(x)) % 5 != 0

    inputs = tf.keras.Input((8, 8, 1), name="image")
    h = tf.keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    h = tf.keras.layers.Flatten(name="flatten")(h)
    model = _compiled(tf, inputs, tf.keras.layers.Dense(10, name="dense")(h))
    model.fit(x[train], y[train], epochs=epochs, batch_size=64, verbose=0, shuffle=False)
    held_out = model.evaluate(x[~train], y[~train], verbose=0)[1]
    _export(tf, model, (tf.TensorSpec((None, 8, 8, 1), tf.float32, name="image"),), path, held_out)


def byte_tokens(length: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The synthetic byte strings (int32 tokens), their labels and the training mask (``i % 5 != 0``)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, (1500, length)).astype(np.int32)
    # Bias each string towards one of four byte ranges, and label it with the most frequent range.
    favoured = rng.integers(0, 4, len(tokens))
    swap = rng.random(tokens.shape) < 0.3
    tokens[swap] = (favoured[:, None] * 64 + rng.integers(0, 64, tokens.shape))[swap]
    labels = np.array([np.bincount(row // 64, minlength=4).argmax() for row in tokens], dtype=np.int64)
    return tokens, labels, np.arange(len(tokens)) % 5 != 0


def byte_classifier(tf, path: str, data_path: str, epochs: int, length: int = 16) -> None:
    tf.keras.utils.set_random_seed(0)
    tokens, labels, train = byte_tokens(length)

    inputs = tf.keras.Input((length,), dtype=tf.int32, name="tokens")
    h = tf.keras.layers.Embedding(256, 8, name="embed")(inputs)
    h = tf.keras.layers.Conv1D(16, 3, activation="relu", name="conv")(h)
    h = tf.keras.layers.GlobalMaxPooling1D(name="pool")(h)
    model = _compiled(tf, inputs, tf.keras.layers.Dense(4, name="dense")(h))
    model.fit(tokens[train], labels[train], epochs=epochs, batch_size=64, verbose=0, shuffle=False)
    held_out = model.evaluate(tokens[~train], labels[~train], verbose=0)[1]
    np.savez(data_path, x=tokens[~train], y=labels[~train], x_train=tokens[train], y_train=labels[train])
    _export(tf, model, (tf.TensorSpec((None, length), tf.int32, name="tokens"),), path, held_out)


if __name__ == "__main__":
    main()
