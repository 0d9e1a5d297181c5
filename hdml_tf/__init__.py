"""hdml_tf: Hardness-Aware Deep Metric Learning (Zheng et al., CVPR 2019) in Keras 3.

``import hdml_tf`` imports the modules that define the package's serialisable Keras
classes (the model, the backbones, the losses, the learning-rate schedule), so their ``register_keras_serializable``
decorators have run and ``keras.models.load_model`` finds them by their registered
names (``"hdml_tf>HDML"``, ...), as keras_hub does. The rest (``data``, ``evaluation``,
``training``, ``export``, ...) is imported where it is used::

    from hdml_tf import HDML, Embedder, data

It imports TensorFlow first, through `hdml_tf.tf_startup`, which keeps TensorFlow's
start-up lines off stderr (``HDML_TF_VERBOSE=1`` leaves them).
"""

import os

# HDML's train_step uses tf.GradientTape: the TensorFlow backend, before Keras loads.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

from hdml_tf import tf_startup  # noqa: E402

# TensorFlow's start-up lines kept off stderr (unless HDML_TF_VERBOSE=1), before the
# modules below import it.
tf_startup.import_tensorflow_quietly()

from hdml_tf import backbones, losses, schedules, tfa_losses  # noqa: E402
from hdml_tf.models import HDML  # noqa: E402
from hdml_tf.networks import Embedder, EmbeddingHead, Generator  # noqa: E402

__all__ = ["HDML", "Embedder", "EmbeddingHead", "Generator", "backbones", "losses",
           "schedules", "tfa_losses"]
