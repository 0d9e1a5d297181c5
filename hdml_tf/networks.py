"""The networks of HDML: the embedder (backbone F and head H) and the generator G.

``Embedder`` maps images to embeddings z = H(F(x)) (L2-normalised for retrieval and
export); ``EmbeddingHead`` is H (BatchNorm then Dense, no activation); ``Generator`` is
G, from embeddings back to backbone features (Dense -> ReLU -> BatchNorm -> Dense).
The trainer that combines them, ``hdml_tf.models.HDML``, is in models.py.

Reference: Zheng et al., "Hardness-Aware Deep Metric Learning", CVPR 2019, Sec. 3.
"""

import keras
import numpy as np
import tensorflow as tf

import hdml_tf.backbones  # noqa: F401  (registers the serialisable backbones for loading)


@keras.saving.register_keras_serializable(package="hdml_tf")
class EmbeddingHead(keras.layers.Layer):
    """H: BatchNorm over the backbone features, then Dense(embedding_dim), no activation.

    Args:
      embedding_dim: d (spec: 128 Cars196, 256 CUB, 512 SOP).
      synchronized_bn: synchronise BatchNorm statistics across replicas.
    """

    def __init__(self, embedding_dim, synchronized_bn=False, **kwargs):
        super().__init__(**kwargs)
        self.embedding_dim = int(embedding_dim)
        self.synchronized_bn = bool(synchronized_bn)
        # Sub-layers follow this layer's dtype policy, so a mixed-precision model
        # reloads as one.
        policy = self.dtype_policy
        self.bn = keras.layers.BatchNormalization(synchronized=synchronized_bn, name="bn",
                                                  dtype=policy)
        self.fc = keras.layers.Dense(self.embedding_dim, name="fc", dtype=policy)

    def build(self, input_shape):
        if not self.bn.built:
            self.bn.build(input_shape)
        if not self.fc.built:
            self.fc.build(input_shape)

    def call(self, features, training=None):
        return self.fc(self.bn(features, training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.embedding_dim,)

    def set_moving_statistics(self, mean, variance):
        """Set the BatchNorm's moving mean and variance (what inference normalises
        with), e.g. to the moments of the real training features
        (`Embedder.feature_moments`)."""
        self.bn.moving_mean.assign(tf.cast(mean, self.bn.moving_mean.dtype))
        self.bn.moving_variance.assign(tf.cast(variance, self.bn.moving_variance.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(embedding_dim=self.embedding_dim, synchronized_bn=self.synchronized_bn)
        return config


@keras.saving.register_keras_serializable(package="hdml_tf")
class Generator(keras.layers.Layer):
    """G: Dense(hidden) -> ReLU -> BatchNorm -> Dense(feature_dim), from R^d to R^1024.

    Args:
      feature_dim: output size, the backbone's feature size (1024 for GoogLeNet).
      hidden_units: 512 in the paper.
    """

    def __init__(self, feature_dim=1024, hidden_units=512, synchronized_bn=False, **kwargs):
        super().__init__(**kwargs)
        self.feature_dim = int(feature_dim)
        self.hidden_units = int(hidden_units)
        self.synchronized_bn = bool(synchronized_bn)
        policy = self.dtype_policy
        self.fc1 = keras.layers.Dense(self.hidden_units, activation="relu", name="fc1",
                                      dtype=policy)
        self.bn = keras.layers.BatchNormalization(synchronized=synchronized_bn, name="bn",
                                                  dtype=policy)
        self.fc2 = keras.layers.Dense(self.feature_dim, name="fc2", dtype=policy)

    def build(self, input_shape):
        hidden_shape = tuple(input_shape[:-1]) + (self.hidden_units,)
        for layer, shape in ((self.fc1, input_shape), (self.bn, hidden_shape),
                             (self.fc2, hidden_shape)):
            if not layer.built:
                layer.build(shape)

    def call(self, z, training=None):
        return self.fc2(self.bn(self.fc1(z), training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.feature_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(feature_dim=self.feature_dim, hidden_units=self.hidden_units,
                      synchronized_bn=self.synchronized_bn)
        return config


def _feature_dim(backbone):
    dim = getattr(backbone, "feature_dim", None)
    if dim is None:
        dim = backbone.output_shape[-1]
    return int(dim)


@keras.saving.register_keras_serializable(package="hdml_tf")
class Embedder(keras.Model):
    """F then H: images -> embeddings, L2-normalised unless ``normalize=False``.

    This is the model that is evaluated and exported. Training uses the raw z
    (``embed_raw``); evaluation and serving use the normalised output of ``call``.
    Under a mixed dtype policy only the backbone computes in half precision; the head
    computes in float32 (its variables are float32 under every policy, so weights move
    between policies unchanged).

    Args:
      backbone: a keras.Model from preprocessed images (batch, H, W, 3) to pooled
        features (batch, feature_dim), e.g. ``hdml_tf.backbones.build_backbone(...)``.
      embedding_dim: d.
      normalize: L2-normalise the output of ``call``.
      synchronized_bn: synchronise the head's BatchNorm across replicas.
      preprocessing: the input normalisation the backbone expects (a
        ``hdml_tf.data.preprocess.normalize`` mode); defaults to
        ``backbone.preprocessing``.
    """

    def __init__(self, backbone, embedding_dim=128, normalize=True, synchronized_bn=False,
                 preprocessing=None, **kwargs):
        kwargs.setdefault("name", "embedder")
        super().__init__(**kwargs)
        self.backbone = backbone
        self.embedding_dim = int(embedding_dim)
        self.normalize = bool(normalize)
        self.feature_dim = _feature_dim(backbone)
        # Kept in the config: a keras.applications backbone loses its Python
        # attributes when saved and loaded.
        self.preprocessing = preprocessing or getattr(backbone, "preprocessing", "none")
        # H computes in float32 whatever F computes in: its output is the embedding the
        # losses, the synthesis and retrieval compare (Keras' mixed-precision advice for
        # output layers). bfloat16 embeddings cost NMI/F1 (benchmarks/precision.py).
        self.head = EmbeddingHead(self.embedding_dim, synchronized_bn=synchronized_bn,
                                  name="head", dtype="float32")

    def build(self, input_shape):
        if not self.backbone.built:
            self.backbone.build(input_shape)
        if not self.head.built:
            self.head.build((None, self.feature_dim))
        self.built = True

    def features(self, images, training=False):
        """y = F(x) as float32 (mixed-precision backbones compute in float16)."""
        return tf.cast(self.backbone(images, training=training), tf.float32)

    def feature_moments(self, images):
        """Per-channel mean and (population) variance of y = F(x) over ``images``, the
        backbone in inference mode: the statistics the head's BatchNorm should
        normalise real images with.

        Args:
          images: an iterable of image batches, or of ``(images, labels)`` batches
            (an evaluation ``tf.data.Dataset``).

        Returns:
          ``(mean, variance, count)``: float64 arrays (feature_dim,) and the number of
          images.
        """
        total = squares = None
        count = 0
        for batch in images:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            y = self.features(x, training=False).numpy().astype(np.float64)
            total = y.sum(0) if total is None else total + y.sum(0)
            squares = (y * y).sum(0) if squares is None else squares + (y * y).sum(0)
            count += y.shape[0]
        if not count:
            raise ValueError("feature_moments: no images")
        mean = total / count
        return mean, np.maximum(squares / count - mean * mean, 0.0), count

    def embed_raw(self, images, training=False):
        """z = H(F(x)), not normalised: what the metric losses see."""
        return tf.cast(self.head(self.features(images, training), training=training),
                       tf.float32)

    def call(self, images, training=False):
        z = self.embed_raw(images, training=training)
        return tf.math.l2_normalize(z, axis=-1) if self.normalize else z

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=keras.saving.serialize_keras_object(self.backbone),
            embedding_dim=self.embedding_dim,
            normalize=self.normalize,
            synchronized_bn=self.head.synchronized_bn,
            preprocessing=self.preprocessing,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
