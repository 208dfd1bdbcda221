"""Make ``tests/data/jax_bytes_tf2onnx.onnx``: a JAX byte-token classifier exported by tf2onnx.

JAX, TensorFlow and tf2onnx are far too heavy for cimguard's CI, so the small file is committed and this
script regenerates it (it refuses to overwrite)::

    python -m venv /tmp/venv-tf && /tmp/venv-tf/bin/pip install tensorflow-cpu tf2onnx "jax==0.6.2" "jaxlib==0.6.2"
    /tmp/venv-tf/bin/python models/make_jax_fixture.py --folder tests/data

The network is pure ``jax.numpy``/``jax.lax`` (int32 byte tokens, an embedding looked up by indexing, a 1-D
convolution by ``lax.conv_general_dilated``, ReLU, ``jnp.max`` over the sequence started at ``-inf`` and a
dense head), trained with Adam on the byte strings of ``make_tf2onnx_fixture.byte_tokens`` (the same data
as ``bytes_tokens.npz``), then converted by ``jax2tf`` (TensorFlow ops, not an XLA call module, which
tf2onnx cannot read) inside a ``tf.function`` and exported by ``tf2onnx.convert.from_function`` at opset 15.
Made with jax 0.6.2 (newer jax always writes an XlaCallModule), tensorflow-cpu 2.21.0 and tf2onnx 1.17.0.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from make_tf2onnx_fixture import byte_tokens  # the shared data generator (this script's folder is on sys.path)

LENGTH = 16


def init(key):
    import jax

    k_embed, k_conv, k_dense = jax.random.split(key, 3)
    return {
        "embed": jax.random.normal(k_embed, (256, 8)) * 0.5,
        "conv": jax.random.normal(k_conv, (3, 8, 16)) * (1 / np.sqrt(24)),  # width, in, out
        "conv_b": np.zeros(16, np.float32),
        "dense": jax.random.normal(k_dense, (16, 4)) * (1 / np.sqrt(16)),
        "dense_b": np.zeros(4, np.float32),
    }


def forward(params, tokens):
    import jax
    import jax.numpy as jnp

    h = params["embed"][tokens]  # [N, L, 8]
    h = jax.lax.conv_general_dilated(h, params["conv"], (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"))
    h = jax.nn.relu(h + params["conv_b"])
    # The max over the sequence starts at -inf, as a running maximum does (a legitimate constant).
    h = jnp.max(h, axis=1, initial=-jnp.inf)
    return h @ params["dense"] + params["dense_b"]


def train(tokens, labels, epochs: int, batch: int = 64, lr: float = 0.01):
    import jax
    import jax.numpy as jnp

    params = init(jax.random.PRNGKey(0))

    def loss(p, x, y):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(forward(p, x)), y[:, None], axis=1))

    @jax.jit
    def step(p, m, v, t, x, y):
        grads = jax.grad(loss)(p, x, y)
        m = jax.tree.map(lambda a, g: 0.9 * a + 0.1 * g, m, grads)
        v = jax.tree.map(lambda a, g: 0.999 * a + 0.001 * g * g, v, grads)
        scale = lr * jnp.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        p = jax.tree.map(lambda w, a, b: w - scale * a / (jnp.sqrt(b) + 1e-7), p, m, v)
        return p, m, v

    m = jax.tree.map(jnp.zeros_like, params)
    v = jax.tree.map(jnp.zeros_like, params)
    t = 0
    for _ in range(epochs):
        for start in range(0, len(tokens), batch):
            t += 1
            params, m, v = step(params, m, v, t, tokens[start:start + batch], labels[start:start + batch])
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", required=True)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    path = os.path.join(os.path.abspath(args.folder), "jax_bytes_tf2onnx.onnx")
    if os.path.exists(path):
        raise SystemExit(f"{path} exists; give an empty folder")

    import jax
    import tensorflow as tf
    import tf2onnx
    from jax.experimental import jax2tf

    tokens, labels, train_mask = byte_tokens(LENGTH)
    params = train(tokens[train_mask], labels[train_mask].astype(np.int32), args.epochs)
    held_out = float((np.asarray(forward(params, tokens[~train_mask])).argmax(1) == labels[~train_mask]).mean())

    # Non-native serialization writes ordinary TensorFlow ops (an XlaCallModule would be opaque to tf2onnx);
    # the batch dimension stays symbolic. with_gradient=False would add a PreventGradient op, which tf2onnx
    # leaves unconverted in the file; with_gradient=True converts cleanly.
    as_tf = jax2tf.convert(lambda x: forward(params, x), with_gradient=True, enable_xla=False,
                           native_serialization=False, polymorphic_shapes=[f"(b, {LENGTH})"])
    function = tf.function(as_tf, autograph=False,
                           input_signature=[tf.TensorSpec((None, LENGTH), tf.int32, name="tokens")])
    proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature, opset=15)
    with open(path, "xb") as handle:
        handle.write(proto.SerializeToString())
    print(f"wrote {path}: held-out accuracy {held_out:.4f} in JAX (jax {jax.__version__})")


if __name__ == "__main__":
    main()
