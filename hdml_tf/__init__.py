"""hdml_tf: Hardness-Aware Deep Metric Learning (Zheng et al., CVPR 2019) in Keras 3.

Submodules are imported lazily so that light tools (``hdml-tf embed``/``search``, which
need only a SavedModel) do not pay for, or depend on, the training code.

Saved models still load the ordinary Keras way after only ``import hdml_tf``:
``keras.models.load_model`` finds a custom class by its registered name
(``"hdml_tf>HDML"``), which exists only once the defining module has run its
``register_keras_serializable`` decorator, and Keras imports a recorded module itself
only for its own packages. So, as soon as Keras is imported, every name in
``_SERIALIZABLE`` is registered to a stand-in whose ``from_config`` imports the real
module (which then registers the real class over the stand-in) and builds the object
with it. Neither Keras nor any submodule is imported here until someone asks.
"""

import importlib
import os

from hdml_tf import import_hooks as _import_hooks

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

# Every class registered as "hdml_tf>Name" -> the module that defines it
# (tests/test_registration.py checks this against the decorators).
_SERIALIZABLE = {
    **dict.fromkeys(["HDML", "Embedder", "EmbeddingHead", "Generator"], "hdml_tf.models"),
    **dict.fromkeys(["InceptionV1", "InceptionModule", "CaffeConv2D", "CaffeMaxPooling2D",
                     "LocalResponseNormalization"], "hdml_tf.backbones.inception_v1"),
    "SmallCNN": "hdml_tf.backbones.small_cnn",
    **dict.fromkeys(["NPairLoss", "TripletLoss"], "hdml_tf.losses"),
    **dict.fromkeys(["NpairsLoss", "TripletSemiHardLoss", "TripletHardLoss",
                     "LiftedStructLoss", "ContrastiveLoss"], "hdml_tf.tfa_losses"),
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


# ------------------------------------------------------- Keras registration


def _register_stand_ins():
    import keras

    def stand_in(class_name, module_name):
        def from_config(cls, config):
            # The real class is the one the module registered under this name (a
            # renamed class keeps its saved name; a load in progress may still see
            # this stand-in in its custom-object scope, so not get_registered_object).
            module = importlib.import_module(module_name)
            registered = f"hdml_tf>{class_name}"
            real = next(v for v in vars(module).values() if isinstance(v, type)
                        and keras.saving.get_registered_name(v) == registered)
            return real.from_config(config)

        def get_config(self):  # never instantiated; the decorator requires it
            raise NotImplementedError

        return type(class_name, (), {"from_config": classmethod(from_config),
                                     "get_config": get_config,
                                     "__module__": module_name})

    for class_name, module_name in _SERIALIZABLE.items():
        if keras.saving.get_registered_object(f"hdml_tf>{class_name}") is None:
            keras.saving.register_keras_serializable("hdml_tf")(
                stand_in(class_name, module_name))


def _after_keras(load):
    load()
    _register_stand_ins()


if not _import_hooks.around_import("keras", _after_keras):
    _register_stand_ins()
