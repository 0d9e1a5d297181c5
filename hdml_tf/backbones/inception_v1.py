"""BVLC GoogLeNet (Inception v1) as a Keras 3 ``keras.Model`` subclass.

This is the backbone F of HDML: images in, the 1024-d pool5 feature y out. It is
the *Caffe* network that the paper and the authors' code used, not TF-slim's
``inception_v1`` nor torchvision's ``googlenet`` (those add batch norm and use 3x3
convolutions in the "5x5" branch, so Caffe weights do not fit them). What makes it
Caffe's network, and what this module reproduces exactly:

* convolutions pad symmetrically (conv1 7x7/2 pad 3, 3x3 pad 1, 5x5 pad 2);
* max pooling rounds the output size *up* (``ceil``) and pads bottom/right;
* local response normalisation across channels with local_size 5, alpha 1e-4,
  beta 0.75 (Caffe divides alpha by local_size, TensorFlow does not);
* the inception branches are concatenated in the order 1x1, 3x3, 5x5, pool_proj.

Keras 3 forbids ``/`` in layer names, so each Caffe layer ``a/b`` is the Keras layer
``a_b`` (``conv1/7x7_s2`` <-> ``conv1_7x7_s2``, ``inception_3a/5x5_reduce`` <->
``inception_3a_5x5_reduce``); :func:`caffe_to_keras_name` and
:func:`keras_to_caffe_name` are the one-to-one mapping over the names in this file.

Input contract: float images of shape ``(batch, H, W, 3)``, channels last, already
preprocessed the Caffe way (BGR, 0-255, mean (104, 117, 123) subtracted), any
``H, W >= 64`` (224 and 227 are the standard sizes). Output: ``(batch, 1024)``
float32 features, or ``(batch, num_classes)`` with ``include_top=True``.

Reference: Szegedy et al., "Going deeper with convolutions", CVPR 2015; BVLC Caffe
``models/bvlc_googlenet/deploy.prototxt``; Caffe ``PoolingLayer`` and ``LRNLayer``.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "InceptionV1",
    "InceptionModule",
    "CaffeConv2D",
    "CaffeMaxPooling2D",
    "LocalResponseNormalization",
    "caffe_pool_output_size",
    "caffe_to_keras_name",
    "keras_to_caffe_name",
    "CAFFE_LAYER_NAMES",
    "CAFFE_CLASSIFIER_NAME",
    "INCEPTION_MODULES",
]

# (name, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj): GoogLeNet's layer table,
# identical to deploy.prototxt's num_output values.
INCEPTION_MODULES = (
    ("inception_3a", 64, 96, 128, 16, 32, 32),
    ("inception_3b", 128, 128, 192, 32, 96, 64),
    ("inception_4a", 192, 96, 208, 16, 48, 64),
    ("inception_4b", 160, 112, 224, 24, 64, 64),
    ("inception_4c", 128, 128, 256, 24, 64, 64),
    ("inception_4d", 112, 144, 288, 32, 64, 64),
    ("inception_4e", 256, 160, 320, 32, 128, 128),
    ("inception_5a", 256, 160, 320, 32, 128, 128),
    ("inception_5b", 384, 192, 384, 48, 128, 128),
)
# Max pooling 3x3/2 follows these modules (Caffe's pool3/3x3_s2 and pool4/3x3_s2).
_POOL_AFTER = {"inception_3b": "pool3/3x3_s2", "inception_4e": "pool4/3x3_s2"}
# Branch suffixes in Caffe's concat order; the order fixes the channel layout that
# the next module's pretrained kernels expect.
_BRANCH_CONVS = ("1x1", "3x3_reduce", "3x3", "5x5_reduce", "5x5", "pool_proj")

CAFFE_CLASSIFIER_NAME = "loss3/classifier"
_STEM_CONVS = ("conv1/7x7_s2", "conv2/3x3_reduce", "conv2/3x3")

#: Every Caffe layer that holds weights (57 convolutions, then the classifier), in
#: network order. Each has a kernel under its name and a bias under ``<name>_bias``.
CAFFE_LAYER_NAMES = tuple(
    list(_STEM_CONVS)
    + [f"{m[0]}/{b}" for m in INCEPTION_MODULES for b in _BRANCH_CONVS]
    + [CAFFE_CLASSIFIER_NAME]
)

# Weight-free Caffe layers that also become named Keras layers.
_CAFFE_OTHER_NAMES = tuple(
    ["pool1/3x3_s2", "pool1/norm1", "conv2/norm2", "pool2/3x3_s2"]
    + [f"{m[0]}/pool" for m in INCEPTION_MODULES]
    + list(_POOL_AFTER.values())
    + ["pool5/7x7_s1", "pool5/drop_7x7_s1"]
)
_CAFFE_TO_KERAS = {
    n: n.replace("/", "_") for n in CAFFE_LAYER_NAMES + _CAFFE_OTHER_NAMES
}
_KERAS_TO_CAFFE = {v: k for k, v in _CAFFE_TO_KERAS.items()}
# The rule "/" -> "_" is not invertible in general (Caffe names contain "_"), so the
# inverse is a table; this guards the table against a future name collision.
assert len(_KERAS_TO_CAFFE) == len(_CAFFE_TO_KERAS)


def caffe_to_keras_name(caffe_name: str) -> str:
    """Keras layer name of a BVLC GoogLeNet Caffe layer ('conv1/7x7_s2' -> 'conv1_7x7_s2').

    Raises:
        KeyError: `caffe_name` is not a layer of this network.
    """
    return _look_up(_CAFFE_TO_KERAS, caffe_name, "a BVLC GoogLeNet layer of this model")


def keras_to_caffe_name(keras_name: str) -> str:
    """Inverse of :func:`caffe_to_keras_name` ('conv1_7x7_s2' -> 'conv1/7x7_s2').

    Raises:
        KeyError: `keras_name` is not a layer of this network.
    """
    return _look_up(_KERAS_TO_CAFFE, keras_name, "a Keras layer name of InceptionV1")


def _look_up(table, name, what):
    try:
        return table[name]
    except KeyError:
        raise KeyError(f"{name!r} is not {what}") from None


def caffe_pool_output_size(size: int, pool_size: int, strides: int, pad: int) -> int:
    """Output length of Caffe's pooling along one axis (ceil rounding).

    Caffe computes ``ceil((size + 2 * pad - pool_size) / strides) + 1`` and, when
    ``pad > 0``, drops the last window if it would start inside the bottom/right
    padding (Caffe ``PoolingLayer::Reshape``).
    """
    out = -((pool_size - size - 2 * pad) // strides) + 1  # integer ceil, exact
    if pad > 0 and (out - 1) * strides >= size + pad:
        out -= 1
    return out


@keras.saving.register_keras_serializable(package="hdml_tf")
class CaffeConv2D(keras.layers.Conv2D):
    """Conv2D with Caffe's explicit, symmetric zero padding (`pad` on every side).

    TensorFlow's ``"same"`` puts the extra row/column at the bottom/right when the
    stride is 2, which shifts conv1's receptive fields by one pixel relative to the
    Caffe weights. The layer therefore pads explicitly; when the stride is 1 and
    ``pad == (kernel - 1) / 2`` "same" is exactly symmetric, so it is used instead to
    save a copy of the activations. Weights are a plain Conv2D's (kernel HWIO, bias).

    Args:
        filters: number of output channels (Caffe ``num_output``).
        kernel_size: square kernel size (int).
        strides: square stride (int).
        pad: zero padding on each side (Caffe ``pad``).
        **kwargs: passed to ``keras.layers.Conv2D`` (``activation``, ``name``, ...);
            ``padding`` and ``data_format`` are fixed by this layer.
    """

    def __init__(self, filters, kernel_size, strides=1, pad=0, **kwargs):
        kernel_size = int(kernel_size)
        strides = int(strides)
        self.pad = int(pad)
        self._explicit_pad = not (strides == 1 and 2 * self.pad == kernel_size - 1)
        kwargs.pop("padding", None)
        kwargs.pop("data_format", None)
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding="valid" if self._explicit_pad else "same",
            data_format="channels_last",
            **kwargs,
        )

    def call(self, inputs):
        if self._explicit_pad and self.pad > 0:
            p = self.pad
            inputs = keras.ops.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]])
        return super().call(inputs)

    def compute_output_shape(self, input_shape):
        if not self._explicit_pad:
            return super().compute_output_shape(input_shape)
        n, h, w, _ = input_shape
        k, s, p = self.kernel_size[0], self.strides[0], self.pad
        size = lambda d: None if d is None else (d + 2 * p - k) // s + 1  # noqa: E731
        return (n, size(h), size(w), self.filters)

    def get_config(self):
        config = super().get_config()
        config.pop("padding", None)
        config.pop("data_format", None)
        config["kernel_size"] = self.kernel_size[0]
        config["strides"] = self.strides[0]
        config["pad"] = self.pad
        return config


@keras.saving.register_keras_serializable(package="hdml_tf")
class CaffeMaxPooling2D(keras.layers.Layer):
    """Max pooling with Caffe's ceil rounding and -inf padding.

    Output size per spatial axis is :func:`caffe_pool_output_size`. The input is
    padded with ``pad`` rows/columns of -inf at the top/left and as many as the ceil
    rounding needs at the bottom/right, so padding never wins a max (Caffe clips the
    window to the image instead, which gives the same result). Works for static and
    dynamic (``None``) spatial sizes, inside ``tf.function`` too.

    Input contract: ``(batch, H, W, C)`` float tensor, ``H, W >= 1``.

    Args:
        pool_size: square window size (int).
        strides: square stride (int), at most `pool_size`.
        pad: Caffe ``pad`` (int) on each side.
    """

    def __init__(self, pool_size=3, strides=2, pad=0, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)
        self.strides = int(strides)
        self.pad = int(pad)
        if self.strides > self.pool_size:
            # Then windows would skip pixels and the bottom padding could be negative;
            # Caffe GoogLeNet never does this.
            raise ValueError(
                f"strides ({strides}) must not exceed pool_size ({pool_size})"
            )
        if self.pad >= self.pool_size:
            raise ValueError(f"pad ({pad}) must be smaller than pool_size ({pool_size})")

    def _bottom_pad(self, size):
        """Padding after the data along one axis, for an int or a scalar tensor."""
        k, s, p = self.pool_size, self.strides, self.pad
        if isinstance(size, int):
            out = caffe_pool_output_size(size, k, s, p)
            return (out - 1) * s + k - size - p
        # Same arithmetic as caffe_pool_output_size, on a dynamic dimension.
        out = -tf.math.floordiv(k - size - 2 * p, s) + 1
        if p > 0:
            out -= tf.cast((out - 1) * s >= size + p, out.dtype)
        return (out - 1) * s + k - size - p

    def call(self, inputs):
        static = inputs.shape
        dynamic = tf.shape(inputs)
        h = static[1] if static[1] is not None else dynamic[1]
        w = static[2] if static[2] is not None else dynamic[2]
        paddings = [
            [0, 0],
            [self.pad, self._bottom_pad(h)],
            [self.pad, self._bottom_pad(w)],
            [0, 0],
        ]
        neg_inf = tf.constant(-np.inf, dtype=inputs.dtype)
        x = tf.pad(inputs, paddings, constant_values=neg_inf)
        return tf.nn.max_pool2d(x, self.pool_size, self.strides, "VALID")

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        k, s, p = self.pool_size, self.strides, self.pad
        size = lambda d: None if d is None else caffe_pool_output_size(d, k, s, p)  # noqa: E731
        return (n, size(h), size(w), c)

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size, strides=self.strides, pad=self.pad)
        return config


@keras.saving.register_keras_serializable(package="hdml_tf")
class LocalResponseNormalization(keras.layers.Layer):
    """Caffe's across-channel LRN: ``b_c = a_c / (k + alpha/n * sum a_j^2)^beta``.

    The sum runs over the ``n = local_size`` channels centred on c (channels outside
    the tensor count as zero). Parameters are in Caffe's terms; TensorFlow's
    ``tf.nn.local_response_normalization`` takes ``depth_radius = (n - 1) / 2`` and
    ``alpha / n``, which is what is passed to it.

    float16/bfloat16 inputs are normalised in float32 and cast back: the squared
    conv1 activations of 0-255 images overflow float16 (max 65504). float64 inputs,
    which the TensorFlow kernel does not accept, use an equivalent explicit sum.

    Input contract: ``(batch, H, W, C)`` float tensor, channels last.

    Args:
        local_size: odd window size n across channels (Caffe ``local_size``).
        alpha: Caffe ``alpha`` (not divided by n).
        beta: Caffe ``beta``.
        k: Caffe ``k`` (the bias).
    """

    def __init__(self, local_size=5, alpha=1e-4, beta=0.75, k=1.0, **kwargs):
        super().__init__(**kwargs)
        if local_size < 1 or local_size % 2 == 0:
            raise ValueError(f"local_size must be a positive odd int, got {local_size}")
        self.local_size = int(local_size)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.k = float(k)

    def call(self, inputs):
        radius = (self.local_size - 1) // 2
        scaled_alpha = self.alpha / self.local_size  # Caffe's alpha / n
        if inputs.dtype == tf.float64:
            squared = tf.square(inputs)
            padded = tf.pad(squared, [[0, 0], [0, 0], [0, 0], [radius, radius]])
            channels = inputs.shape[-1]
            window_sum = tf.add_n(
                [padded[..., i : i + channels] for i in range(self.local_size)]
            )
            return inputs / tf.pow(self.k + scaled_alpha * window_sum, self.beta)
        x = tf.cast(inputs, tf.float32)
        y = tf.nn.local_response_normalization(
            x, depth_radius=radius, bias=self.k, alpha=scaled_alpha, beta=self.beta
        )
        return tf.cast(y, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            local_size=self.local_size, alpha=self.alpha, beta=self.beta, k=self.k
        )
        return config


@keras.saving.register_keras_serializable(package="hdml_tf")
class InceptionModule(keras.layers.Layer):
    """One GoogLeNet inception module: four ReLU branches concatenated on channels.

    Branches, in Caffe's concat order: 1x1; 1x1 reduce -> 3x3 (pad 1);
    1x1 reduce -> 5x5 (pad 2); 3x3/1 max pool (pad 1) -> 1x1 pool_proj.
    Sub-layers are named ``<module name>_<branch>`` (``inception_3a_5x5_reduce``).

    Args:
        filters: six ints (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj).
        name: module name, e.g. ``"inception_3a"``.
    """

    def __init__(self, filters, name, **kwargs):
        super().__init__(name=name, **kwargs)
        self.filters = tuple(int(f) for f in filters)
        if len(self.filters) != 6:
            raise ValueError(f"filters must have 6 entries, got {filters}")
        f1, f3r, f3, f5r, f5, fp = self.filters
        # Sub-layers follow the module's dtype policy (Keras 3 does not propagate it).
        common = dict(activation="relu", dtype=self.dtype_policy)
        self.conv_1x1 = CaffeConv2D(f1, 1, name=f"{name}_1x1", **common)
        self.conv_3x3_reduce = CaffeConv2D(f3r, 1, name=f"{name}_3x3_reduce", **common)
        self.conv_3x3 = CaffeConv2D(f3, 3, pad=1, name=f"{name}_3x3", **common)
        self.conv_5x5_reduce = CaffeConv2D(f5r, 1, name=f"{name}_5x5_reduce", **common)
        self.conv_5x5 = CaffeConv2D(f5, 5, pad=2, name=f"{name}_5x5", **common)
        self.pool = CaffeMaxPooling2D(3, 1, pad=1, name=f"{name}_pool", dtype=self.dtype_policy)
        self.conv_pool_proj = CaffeConv2D(fp, 1, name=f"{name}_pool_proj", **common)

    @property
    def output_channels(self):
        f1, _, f3, _, f5, fp = self.filters
        return f1 + f3 + f5 + fp

    def caffe_layers(self):
        """Dict Caffe layer name -> conv layer, in Caffe's order."""
        convs = (self.conv_1x1, self.conv_3x3_reduce, self.conv_3x3,
                 self.conv_5x5_reduce, self.conv_5x5, self.conv_pool_proj)
        return {f"{self.name}/{b}": c for b, c in zip(_BRANCH_CONVS, convs)}

    def build(self, input_shape):
        c_in = input_shape[-1]
        f1, f3r, f3, f5r, f5, fp = self.filters
        shape = lambda c: (None, None, None, c)  # noqa: E731  (weights ignore H, W)
        self.conv_1x1.build(shape(c_in))
        self.conv_3x3_reduce.build(shape(c_in))
        self.conv_3x3.build(shape(f3r))
        self.conv_5x5_reduce.build(shape(c_in))
        self.conv_5x5.build(shape(f5r))
        self.pool.build(shape(c_in))
        self.conv_pool_proj.build(shape(c_in))
        self.built = True

    def call(self, inputs):
        branch_1 = self.conv_1x1(inputs)
        branch_3 = self.conv_3x3(self.conv_3x3_reduce(inputs))
        branch_5 = self.conv_5x5(self.conv_5x5_reduce(inputs))
        branch_p = self.conv_pool_proj(self.pool(inputs))
        return keras.ops.concatenate([branch_1, branch_3, branch_5, branch_p], axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_channels,)

    def get_config(self):
        config = super().get_config()
        config["filters"] = list(self.filters)
        return config


# LRN settings of the two GoogLeNets HDML users meet, in Caffe's terms (local_size n,
# alpha, beta, k). "caffe": BVLC deploy.prototxt (n=5, alpha=1e-4), what the ImageNet
# weights were trained with. "authors": the HDML authors' TF1 graph
# (lib/GoogleNet_Model.py) calls tf.nn.local_response_normalization(depth_radius=5,
# alpha=1e-4, beta=0.75) with its default bias 1, i.e. n = 2*5+1 = 11 and a per-channel
# alpha of 1e-4 (Caffe alpha = 1e-4 * 11): a wider, stronger normalisation that makes
# the pooled features several times smaller on the Caffe weights. The paper's numbers
# were produced with it, so the paper presets use it.
LRN_SETTINGS = {
    "caffe": dict(local_size=5, alpha=1e-4, beta=0.75, k=1.0),
    "authors": dict(local_size=11, alpha=1e-4 * 11, beta=0.75, k=1.0),
}


def _checked_input_shape(input_shape):
    """``input_shape`` as a tuple (or None); InceptionV1 takes (H, W, 3), H, W >= 64."""
    if input_shape is None:
        return None
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (H, W, 3), got {input_shape}")
    for d in input_shape[:2]:
        if d is not None and d < 64:
            raise ValueError(f"InceptionV1 needs inputs of at least 64x64, got {input_shape}")
    return input_shape


@keras.saving.register_keras_serializable(package="hdml_tf")
class InceptionV1(keras.Model):
    """BVLC GoogLeNet up to pool5 (1024-d), optionally with the 1000-way classifier.

    Input contract: float images ``(batch, H, W, 3)``, channels last, preprocessed
    the Caffe way (see :attr:`preprocessing`), ``H, W >= 64``. Output: float32
    features ``(batch, 1024)`` (global average of inception_5b, which is Caffe's
    7x7 pool5 at 224/227 input), or with ``include_top`` the classifier output
    ``(batch, num_classes)`` after dropout 0.4 (training only) and
    ``classifier_activation``.

    Without the classifier the model has 5,973,552 parameters; with the 1000-way
    classifier 6,998,552. The auxiliary heads (loss1, loss2) are not built.

    The model is built at construction (weights do not depend on H, W), so
    ``count_params()`` and :func:`hdml_tf.backbones.load_caffe_weights` work
    immediately. Sub-layers follow this model's dtype policy (``dtype=`` or the
    global policy at construction); the output is cast to float32.

    Args:
        include_top: add Caffe's ``loss3/classifier`` (Dense) on the features.
        num_classes: classifier width when `include_top`.
        input_shape: optional ``(H, W, 3)``; only used to build and check the shape.
        classifier_activation: activation of the classifier output (``None`` for
            logits); computed in float32.
        dropout_rate: dropout before the classifier (Caffe ``pool5/drop_7x7_s1``).
        lrn: ``"caffe"`` (default: BVLC's LRN, the semantics of the ImageNet weights)
            or ``"authors"`` (the HDML authors' TF1 LRN, see :data:`LRN_SETTINGS`).
        name: model name.
        **kwargs: passed to ``keras.Model`` (``dtype``, ``trainable``).

    Reference: Szegedy et al. 2015; BVLC Caffe deploy.prototxt.
    """

    feature_dim = 1024
    preprocessing = "caffe"

    def __init__(
        self,
        include_top=False,
        num_classes=1000,
        input_shape=None,
        classifier_activation="softmax",
        dropout_rate=0.4,
        lrn="caffe",
        name="inception_v1",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if lrn not in LRN_SETTINGS:
            raise ValueError(f"lrn={lrn!r}: expected one of {sorted(LRN_SETTINGS)}")
        self.lrn = lrn
        self.include_top = bool(include_top)
        self.num_classes = int(num_classes)
        self.classifier_activation = classifier_activation
        self.dropout_rate = float(dropout_rate)
        input_shape = _checked_input_shape(input_shape)
        self._input_shape_arg = input_shape
        self._create_layers(lrn)
        build_hw = input_shape[:2] if input_shape is not None else (None, None)
        self.build((None, *build_hw, 3))

    def _create_layers(self, lrn):
        """The Caffe layers, named as in BVLC's deploy.prototxt (``/`` -> ``_``)."""
        policy = self.dtype_policy
        conv = lambda f, k, s=1, p=0, n=None: CaffeConv2D(  # noqa: E731
            f, k, strides=s, pad=p, activation="relu", name=caffe_to_keras_name(n), dtype=policy
        )
        pool = lambda n: CaffeMaxPooling2D(  # noqa: E731
            3, 2, name=caffe_to_keras_name(n), dtype=policy
        )
        norm = lambda n: LocalResponseNormalization(  # noqa: E731
            **LRN_SETTINGS[lrn], name=caffe_to_keras_name(n), dtype=policy
        )
        self.conv1 = conv(64, 7, 2, 3, "conv1/7x7_s2")
        self.pool1 = pool("pool1/3x3_s2")
        self.norm1 = norm("pool1/norm1")
        self.conv2_reduce = conv(64, 1, n="conv2/3x3_reduce")
        self.conv2 = conv(192, 3, 1, 1, "conv2/3x3")
        self.norm2 = norm("conv2/norm2")
        self.pool2 = pool("pool2/3x3_s2")
        self.inception_blocks = []
        self.block_pools = {}
        for module_name, *filters in INCEPTION_MODULES:
            block = InceptionModule(filters, name=module_name, dtype=policy)
            self.inception_blocks.append(block)
            if module_name in _POOL_AFTER:
                self.block_pools[module_name] = pool(_POOL_AFTER[module_name])
        self.pool5 = keras.layers.GlobalAveragePooling2D(
            name=caffe_to_keras_name("pool5/7x7_s1"), dtype=policy
        )
        if self.include_top:
            self.dropout = keras.layers.Dropout(
                self.dropout_rate, name=caffe_to_keras_name("pool5/drop_7x7_s1"), dtype=policy
            )
            self.classifier = keras.layers.Dense(
                self.num_classes, name=caffe_to_keras_name(CAFFE_CLASSIFIER_NAME), dtype=policy
            )
            # Softmax in float32 even under mixed precision (the Keras mixed-precision guide).
            self.classifier_act = keras.layers.Activation(
                self.classifier_activation or "linear", name="predictions", dtype="float32"
            )

    def build(self, input_shape):
        shape = lambda c: (None, None, None, c)  # noqa: E731  (weights ignore H, W)
        self.conv1.build(shape(input_shape[-1]))
        self.conv2_reduce.build(shape(64))
        self.conv2.build(shape(64))
        for layer, c in ((self.pool1, 64), (self.norm1, 64), (self.norm2, 192), (self.pool2, 192)):
            layer.build(shape(c))
        channels = 192
        for block in self.inception_blocks:
            block.build(shape(channels))
            channels = block.output_channels
            if block.name in self.block_pools:
                self.block_pools[block.name].build(shape(channels))
        self.pool5.build(shape(channels))
        if self.include_top:
            self.dropout.build((None, channels))
            self.classifier.build((None, channels))
            self.classifier_act.build((None, self.num_classes))
        self.built = True

    def call(self, inputs, training=None):
        x = self.conv1(inputs)
        x = self.norm1(self.pool1(x))  # Caffe order: pool1 then norm1
        x = self.conv2(self.conv2_reduce(x))
        x = self.pool2(self.norm2(x))  # ... but norm2 then pool2
        for block in self.inception_blocks:
            x = block(x)
            if block.name in self.block_pools:
                x = self.block_pools[block.name](x)
        x = self.pool5(x)
        if not self.include_top:
            return keras.ops.cast(x, "float32")
        x = self.dropout(x, training=training)
        return self.classifier_act(self.classifier(x))

    def caffe_layers(self):
        """Dict Caffe layer name -> Keras layer (conv or classifier), network order."""
        layers = {
            "conv1/7x7_s2": self.conv1,
            "conv2/3x3_reduce": self.conv2_reduce,
            "conv2/3x3": self.conv2,
        }
        for block in self.inception_blocks:
            layers.update(block.caffe_layers())
        if self.include_top:
            layers[CAFFE_CLASSIFIER_NAME] = self.classifier
        return layers

    def get_caffe_layer(self, name):
        """The layer for a Caffe name ('conv1/7x7_s2') or its Keras name ('conv1_7x7_s2')."""
        caffe_name = name if name in _CAFFE_TO_KERAS else keras_to_caffe_name(name)
        layers = self.caffe_layers()
        if caffe_name not in layers:
            raise KeyError(f"{name!r} is not a weighted layer of this model")
        return layers[caffe_name]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes if self.include_top else self.feature_dim)

    def compute_output_spec(self, inputs, training=None):
        # The default spec would claim the compute dtype (float16 under mixed
        # precision), but call() returns float32.
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            include_top=self.include_top,
            num_classes=self.num_classes,
            input_shape=self._input_shape_arg,
            classifier_activation=self.classifier_activation,
            dropout_rate=self.dropout_rate,
            lrn=self.lrn,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("input_shape") is not None:
            config["input_shape"] = tuple(config["input_shape"])
        return cls(**config)

