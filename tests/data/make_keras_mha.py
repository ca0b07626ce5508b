"""Regenerate the tf2onnx test models, random init, attention as tf2onnx writes it (einsum decomposed into
Reshape/Transpose/MatMul with runtime shape arithmetic):
- keras_mha_tf2onnx_op13.onnx: a Keras transformer block (MultiHeadAttention, 4 heads of 8; Dense FFN on
  sequences; LayerNormalization);
- keras_cross_attention_tf2onnx_op13.onnx: cross-attention between two inputs of other lengths (3 heads, key
  size 16, value size 8), then self-attention (2 heads of 12).

Not run by the tests (TensorFlow is not a dependency). In a separate environment:
    pip install tensorflow-cpu==2.15.1 tf2onnx==1.16.1 "onnx<1.17" "numpy<2"
    python tests/data/make_keras_mha.py
"""

from pathlib import Path

import tensorflow as tf
import tf2onnx

tf.random.set_seed(0)
d, heads, ffn, seq = 32, 4, 64, 6
inp = tf.keras.Input(shape=(seq, d), name="x")
h = tf.keras.layers.MultiHeadAttention(num_heads=heads, key_dim=d // heads)(inp, inp)
h = tf.keras.layers.LayerNormalization()(inp + h)
f = tf.keras.layers.Dense(ffn, activation="relu")(h)
f = tf.keras.layers.Dense(d)(f)
h = tf.keras.layers.LayerNormalization()(h + f)
model = tf.keras.Model(inp, tf.keras.layers.Dense(5)(h))
spec = (tf.TensorSpec((None, seq, d), tf.float32, name="x"),)
tf2onnx.convert.from_keras(model, input_signature=spec, opset=13,
                           output_path=str(Path(__file__).with_name("keras_mha_tf2onnx_op13.onnx")))

tf.random.set_seed(1)
d, seq = 24, 10
a = tf.keras.Input(shape=(seq, d), name="a")
b = tf.keras.Input(shape=(7, d), name="b")
h = tf.keras.layers.MultiHeadAttention(num_heads=3, key_dim=16, value_dim=8)(a, b)
h = tf.keras.layers.LayerNormalization()(a + h)
h = tf.keras.layers.LayerNormalization()(h + tf.keras.layers.MultiHeadAttention(num_heads=2, key_dim=12)(h, h))
model = tf.keras.Model([a, b], tf.keras.layers.Dense(4)(h))
spec = (tf.TensorSpec((None, seq, d), tf.float32, name="a"), tf.TensorSpec((None, 7, d), tf.float32, name="b"))
tf2onnx.convert.from_keras(model, input_signature=spec, opset=13,
                           output_path=str(Path(__file__).with_name("keras_cross_attention_tf2onnx_op13.onnx")))
