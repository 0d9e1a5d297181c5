"""hdml_tf: Hardness-Aware Deep Metric Learning (Zheng et al., CVPR 2019) in Keras 3.

Submodules are imported lazily so that light tools (``hdml-tf embed``/``search``, which
need only a SavedModel) do not pay for, or depend on, the training code.
"""

import importlib
import os

# HDML's train_step uses tf.GradientTape; pin the TensorFlow backend before Keras loads.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

_LAZY = {
    "HDML": "hdml_tf.models",
    "Embedder": "hdml_tf.models",
    "Generator": "hdml_tf.models",
    "EmbeddingHead": "hdml_tf.models",
    "losses": "hdml_tf.losses",
    "ops": "hdml_tf.ops",
    "synthesis": "hdml_tf.synthesis",
    "backbones": "hdml_tf.backbones",
    "data": "hdml_tf.data",
    "evaluation": "hdml_tf.evaluation",
}


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if _LAZY[name].endswith(name) else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hdml_tf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
