"""hdml_tf: Hardness-Aware Deep Metric Learning (Zheng et al., CVPR 2019) in Keras 3.

``import hdml_tf`` imports the modules that define the package's serialisable Keras
classes (the model, the backbones, the losses, the learning-rate schedule), so their ``register_keras_serializable``
decorators have run and ``keras.models.load_model`` finds them by their registered
names (``"hdml_tf>HDML"``, ...), as keras_hub does. The rest (``data``, ``evaluation``,
``training``, ``export``, ...) is imported where it is used::

    from hdml_tf import HDML, Embedder, data
"""

import os

# HDML's train_step uses tf.GradientTape: the TensorFlow backend, before Keras loads.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

from hdml_tf import backbones, losses, schedules, tfa_losses  # noqa: E402
from hdml_tf.models import HDML  # noqa: E402
from hdml_tf.networks import Embedder, EmbeddingHead, Generator  # noqa: E402

__all__ = ["HDML", "Embedder", "EmbeddingHead", "Generator", "backbones", "losses",
           "schedules", "tfa_losses"]
