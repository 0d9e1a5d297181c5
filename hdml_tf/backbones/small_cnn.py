"""A small convolutional backbone for low-resolution data and CPU runs.

GoogLeNet needs >= 64-pixel inputs and ~1.5 GFLOPs per 224-pixel image: right for the
paper's benchmarks, too slow for a ten-minute Fashion-MNIST demo on two CPU cores. This
network (three conv blocks, global average pooling, 256-d features, ~0.3 M parameters)
plays the backbone's role there. Registered as ``"small_cnn"`` in
:mod:`hdml_tf.backbones.registry`; inputs in [-1, 1] (``normalize`` mode ``"tf"``).
"""

import keras


@keras.saving.register_keras_serializable(package="hdml_tf")
class SmallCNN(keras.Model):
    """Three [conv-BN-ReLU x2, max-pool] blocks then global average pooling.

    Args:
      widths: channels of the three blocks.
      feature_dim: width of the pooled output (a final Dense projection when it
        differs from the last block's width).
    """

    def __init__(self, widths=(32, 64, 128), feature_dim=256, **kwargs):
        kwargs.setdefault("name", "small_cnn")
        super().__init__(**kwargs)
        self.widths = tuple(int(w) for w in widths)
        self.feature_dim = int(feature_dim)
        self.preprocessing = "tf"
        policy = self.dtype_policy  # sub-layers follow it, also after reloading
        # Every layer is named, so that a saved .weights.h5 (which records the names)
        # is the same bytes whatever else the process built before.
        self.blocks = []
        for i, width in enumerate(self.widths):
            self.blocks += [
                keras.layers.Conv2D(width, 3, padding="same", use_bias=False,
                                    name=f"block{i + 1}_conv1", dtype=policy),
                keras.layers.BatchNormalization(name=f"block{i + 1}_bn1", dtype=policy),
                keras.layers.ReLU(name=f"block{i + 1}_relu1", dtype=policy),
                keras.layers.Conv2D(width, 3, padding="same", use_bias=False,
                                    name=f"block{i + 1}_conv2", dtype=policy),
                keras.layers.BatchNormalization(name=f"block{i + 1}_bn2", dtype=policy),
                keras.layers.ReLU(name=f"block{i + 1}_relu2", dtype=policy),
            ]
            if i < len(self.widths) - 1:
                self.blocks.append(keras.layers.MaxPooling2D(2, name=f"block{i + 1}_pool",
                                                             dtype=policy))
        self.pool = keras.layers.GlobalAveragePooling2D(name="avg_pool", dtype=policy)
        self.project = keras.layers.Dense(self.feature_dim, name="features", dtype=policy)

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.blocks + [self.pool, self.project]:
            if not layer.built:
                layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    def call(self, images, training=False):
        x = images
        for layer in self.blocks:
            x = layer(x, training=training) if isinstance(
                layer, keras.layers.BatchNormalization) else layer(x)
        return self.project(self.pool(x))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.feature_dim)

    def get_config(self):
        config = super().get_config()
        config.update(widths=list(self.widths), feature_dim=self.feature_dim)
        return config
