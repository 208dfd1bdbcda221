"""Make the tf2onnx-exported test model ``tests/data/keras_digits_tf2onnx.onnx`` (run in a separate venv).

TensorFlow and tf2onnx are far too heavy for cimguard's CI, so the small file they write is committed
and this script regenerates it::

    python -m venv /tmp/venv-tf && /tmp/venv-tf/bin/pip install tensorflow-cpu tf2onnx scikit-learn
    /tmp/venv-tf/bin/python models/make_tf2onnx_fixture.py --output tests/data/keras_digits_tf2onnx.onnx

A Keras CNN (NHWC, as TensorFlow lays images out) trained for a few epochs on scikit-learn's digits
training split (``i % 5 != 0``, cimguard's split), with a running ``Max`` over the class scores
started at ``-inf`` (the constant tf2onnx writes for a max initialiser; legitimate, not a crossbar
weight), exported by ``tf2onnx.convert.from_keras`` at opset 15.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    if os.path.exists(args.output):
        raise SystemExit(f"{args.output} exists; give a new path")

    import tensorflow as tf
    import tf2onnx
    from sklearn.datasets import load_digits

    tf.keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]  # [N, 8, 8, 1]
    y = digits.target.astype(np.int64)
    train = np.arange(len(x)) % 5 != 0

    inputs = tf.keras.Input((8, 8, 1), name="image")
    h = tf.keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    h = tf.keras.layers.Flatten(name="flatten")(h)
    scores = tf.keras.layers.Dense(10, name="dense")(h)
    # max(scores, -inf): what a running maximum starts from; it changes nothing.
    outputs = tf.keras.layers.Lambda(lambda s: tf.maximum(s, tf.fill(tf.shape(s), -np.inf)), name="scores")(scores)
    model = tf.keras.Model(inputs, outputs)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x[train], y[train], epochs=args.epochs, batch_size=64, verbose=0, shuffle=False)
    held_out = model.evaluate(x[~train], y[~train], verbose=0)[1]
    spec = (tf.TensorSpec((None, 8, 8, 1), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=15)
    with open(args.output, "xb") as handle:
        handle.write(proto.SerializeToString())
    print(f"wrote {args.output}: held-out accuracy {held_out:.4f} in TensorFlow")


if __name__ == "__main__":
    main()
