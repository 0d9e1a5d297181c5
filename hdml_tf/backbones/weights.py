"""Import and export of converted-Caffe GoogLeNet weights for :class:`InceptionV1`.

The layout is that of the file the HDML authors' code loads (``tf_ckpt_from_caffe.mat``,
read with ``scipy.io.loadmat``): one array per Caffe layer name,

* ``<name>``: the kernel, OIHW ``(out, in, kh, kw)`` for convolutions and
  ``(out, in)`` for the classifier (Caffe's blob order);
* ``<name>_bias``: the bias, ``(out,)``; ``loadmat`` returns it as ``(1, out)`` or
  ``(out, 1)``, both accepted.

The same keys in a ``.npz`` archive, or in a pickled dict saved with ``np.save`` as
``.npy``, are read the same way, and so is BVLC's own ``.caffemodel`` (read without
Caffe by :mod:`hdml_tf.backbones.caffemodel`). A kernel goes to Keras HWIO by
transposing axes ``(2, 3, 1, 0)``; the classifier's ``(out, in)`` is transposed to
``(in, out)``.

A ``.npy`` dict is unpickled by a restricted unpickler that admits only what such a
dict holds (dicts, lists, tuples, strings, numbers, numpy arrays, dtypes and scalars):
a pickle naming any other callable (``os.system``, ``builtins.open``, ...) is refused
before it can run, with an error naming the file and the refused name.

Loading validates the whole file against the model first (missing keys, unexpected
keys, wrong shapes: one error naming all of them and the file) and only then assigns,
so a model is never half-loaded.

Reference: BVLC Caffe ``models/bvlc_googlenet``; the HDML authors' code
(lib/GoogleNet_Model.py) for the .mat layout.
"""

from __future__ import annotations

import io
import os
import pickle

import numpy as np

from hdml_tf.backbones.caffemodel import CaffeWeightsError, caffemodel_arrays

__all__ = [
    "CaffeWeightsError",
    "load_caffe_weights",
    "save_caffe_weights",
    "convert_caffe_weights",
    "convert_with_report",
    "read_caffe_weights_file",
    "skipped_layers_lines",
    "SUPPORTED_EXTENSIONS",
    "UnsafePickleError",
]

SUPPORTED_EXTENSIONS = (".caffemodel", ".mat", ".npz", ".npy")
_BIAS_SUFFIX = "_bias"
# Real converted files also carry the auxiliary heads (loss1/*, loss2/*), which
# InceptionV1 does not build, so they are always ignored; the final classifier's keys
# (loss3/classifier*) are ignored when skip_classifier.
_AUX_PREFIXES = ("loss1/", "loss2/")
_CLASSIFIER_PREFIX = "loss3/"


class UnsafePickleError(CaffeWeightsError):
    """A pickled ``.npy`` names something a weights dict never holds (names both)."""


# (module, name) pairs a pickled dict of numpy arrays refers to: the array and scalar
# reconstructors of numpy 1.x (numpy.core) and 2.x (numpy._core), the array and dtype
# classes, and the str -> bytes helper protocol-2 pickles use for array data.
_SAFE_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
})


class _WeightsUnpickler(pickle.Unpickler):
    """Admits only :data:`_SAFE_PICKLE_GLOBALS`: plain containers, strings and numbers
    need no global at all, so any other global is code the file would run."""

    def __init__(self, file, path):
        super().__init__(file, encoding="latin1")  # Python 2 pickles hold byte strings
        self._path = path

    def find_class(self, module, name):
        if (module, name) not in _SAFE_PICKLE_GLOBALS:
            raise UnsafePickleError(
                f"{self._path!r}: refused to unpickle {module}.{name}: a weights .npy "
                "holds only dicts, lists, strings and numpy arrays, and this file "
                "would call something else when loaded. Nothing was loaded; do not "
                "open it with np.load(allow_pickle=True).")
        return super().find_class(module, name)


def _load_pickled_npy(path):
    """``np.load(path, allow_pickle=True)`` with :class:`_WeightsUnpickler`."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"{path!r}: unsupported .npy format version {version}")
        if not dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        payload = f.read()
    try:
        return _WeightsUnpickler(io.BytesIO(payload), path).load()
    except UnsafePickleError:
        raise
    except Exception as error:  # a corrupt pickle: say which file, not where in pickle
        raise ValueError(f"{path!r} is not a readable pickled .npy: {error}") from None


def _extension(path):
    name = os.fspath(path).lower()
    for ext in SUPPORTED_EXTENSIONS:
        if name.endswith(ext):
            return ext
    raise ValueError(
        f"Unsupported Caffe weights file {os.fspath(path)!r}: the extension must be "
        f"one of {', '.join(SUPPORTED_EXTENSIONS)}"
    )


def read_caffe_weights_file(path):
    """Reads a converted-Caffe weights file into a dict ``key -> np.ndarray``.

    Args:
        path: a ``.caffemodel``, ``.mat``, ``.npz`` or ``.npy`` (pickled dict) file.

    Returns:
        Dict of arrays; MATLAB header keys (``__header__``, ``__version__``,
        ``__globals__``) are dropped.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: unsupported extension, or a .npy that does not hold a dict.
        UnsafePickleError: a .npy pickle refers to anything but numpy arrays and
            plain containers (nothing of it is run).
        hdml_tf.backbones.caffemodel.CaffeModelError: a malformed ``.caffemodel``.
    """
    path = os.fspath(path)
    ext = _extension(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Caffe weights file not found: {path!r}")
    if ext == ".caffemodel":
        raw = caffemodel_arrays(path)
    elif ext == ".mat":
        import scipy.io

        raw = scipy.io.loadmat(path)
    elif ext == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            raw = {k: archive[k] for k in archive.files}
    else:
        # The .npy variant is a pickled dict (np.save of a dict).
        obj = _load_pickled_npy(path)
        if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
            obj = obj.item()
        if not isinstance(obj, dict):
            raise ValueError(
                f"{path!r} must hold a dict of arrays saved with np.save, "
                f"got {type(obj).__name__}"
            )
        raw = obj
    return {
        str(k): np.asarray(v) for k, v in raw.items() if not str(k).startswith("__")
    }


def _caffe_layers(model):
    if not hasattr(model, "caffe_layers"):
        raise TypeError(
            "load/save_caffe_weights needs an hdml_tf.backbones.InceptionV1 "
            f"(a model with caffe_layers()), got {type(model).__name__}"
        )
    if not model.built:
        raise ValueError("the model must be built before loading weights")
    return model.caffe_layers()


def _caffe_kernel_shape(keras_shape):
    """Caffe blob shape of a Keras kernel shape (HWIO -> OIHW, (in, out) -> (out, in))."""
    if len(keras_shape) == 4:
        h, w, i, o = keras_shape
        return (o, i, h, w)
    i, o = keras_shape
    return (o, i)


def _to_keras_kernel(array):
    return np.transpose(array, (2, 3, 1, 0)) if array.ndim == 4 else array.T


def _bias_fits(array, n):
    return array.shape in ((n,), (1, n), (n, 1))


def _is_ignored(key, skip_classifier):
    if key.startswith(_AUX_PREFIXES):
        return True
    return skip_classifier and key.startswith(_CLASSIFIER_PREFIX)


def load_caffe_weights(model, path, skip_classifier=None):
    """Loads converted-Caffe GoogLeNet weights into an :class:`InceptionV1`.

    Every problem is collected before anything is assigned: if the file lacks a key
    the model needs, has a key the model cannot take, or has an array of the wrong
    shape, one :class:`CaffeWeightsError` names all of them and the file, and the
    model's weights are unchanged.

    Args:
        model: a built ``InceptionV1`` (anything with ``caffe_layers()``).
        path: ``.mat`` / ``.npz`` / ``.npy`` file in the layout of the module
            docstring.
        skip_classifier: ignore ``loss3/classifier*`` keys (and leave a model's own
            classifier as it is). Defaults to True when the model has no top.
            The auxiliary heads' keys (``loss1/*``, ``loss2/*``) are always ignored.

    Returns:
        Dict with ``"loaded"`` (Caffe layer names assigned) and ``"ignored"`` (file
        keys skipped), both sorted lists.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: unsupported extension.
        CaffeWeightsError: the file does not fit the model.
    """
    layers = _caffe_layers(model)
    if skip_classifier is None:
        skip_classifier = not getattr(model, "include_top", False)
    arrays = read_caffe_weights_file(path)

    targets = {
        name: layer
        for name, layer in layers.items()
        if not (skip_classifier and name.startswith(_CLASSIFIER_PREFIX))
    }
    expected, missing, wrong = _check_arrays(targets, arrays)
    ignored = sorted(k for k in arrays if k not in expected and _is_ignored(k, skip_classifier))
    unexpected = sorted(k for k in arrays if k not in expected and k not in ignored)
    if missing or unexpected or wrong:
        raise _misfit_error(path, model, missing, unexpected, wrong)

    # Convert everything first, so that a failure here also leaves the model untouched.
    updates = []
    for name, layer in targets.items():
        kernel = _to_keras_kernel(arrays[name]).astype(layer.kernel.dtype)
        bias = arrays[name + _BIAS_SUFFIX].reshape(-1).astype(layer.bias.dtype)
        updates += [(layer.kernel, kernel), (layer.bias, bias)]
    for variable, value in updates:
        variable.assign(value)
    return {"loaded": sorted(targets), "ignored": ignored}


def _check_arrays(targets, arrays):
    """The file keys the ``targets`` layers need, and which of them are missing or do
    not fit (a message each): ``(expected set, missing list, wrong list)``."""
    expected = set()
    missing, wrong = [], []
    for name, layer in targets.items():
        for key, variable, is_bias in (
            (name, layer.kernel, False),
            (name + _BIAS_SUFFIX, layer.bias, True),
        ):
            expected.add(key)
            if key not in arrays:
                missing.append(key)
                continue
            array = arrays[key]
            if not np.issubdtype(array.dtype, np.number):
                wrong.append(f"{key}: dtype {array.dtype} is not numeric")
                continue
            if is_bias:
                n = int(variable.shape[0])
                if not _bias_fits(array, n):
                    wrong.append(f"{key}: shape {array.shape}, expected ({n},)")
            else:
                want = _caffe_kernel_shape(tuple(variable.shape))
                if array.shape != want:
                    wrong.append(f"{key}: shape {array.shape}, expected {want}")
    return expected, missing, wrong


def _misfit_error(path, model, missing, unexpected, wrong):
    """One :class:`CaffeWeightsError` naming the file and every problem."""
    lines = [f"Caffe weights file {os.fspath(path)!r} does not fit model {model.name!r}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {', '.join(sorted(missing))}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if wrong:
        lines.append(f"  wrong shapes ({len(wrong)}): " + "; ".join(wrong))
    lines.append("No weights were assigned.")
    return CaffeWeightsError("\n".join(lines))


def save_caffe_weights(model, path, include_classifier=True):
    """Writes an :class:`InceptionV1`'s weights in the converted-Caffe layout.

    The inverse of :func:`load_caffe_weights`: OIHW kernels (``(out, in)`` for the
    classifier) under the Caffe layer names, 1-D biases under ``<name>_bias``.

    Args:
        model: a built ``InceptionV1``.
        path: output file; the extension (``.mat``, ``.npz``, ``.npy``) picks the
            format (``.npy`` is a pickled dict, as ``np.save`` writes it).
        include_classifier: write ``loss3/classifier`` when the model has one.

    Returns:
        The path written (str).
    """
    layers = _caffe_layers(model)
    path = os.fspath(path)
    ext = _extension(path)
    arrays = {}
    for name, layer in layers.items():
        if name.startswith(_CLASSIFIER_PREFIX) and not include_classifier:
            continue
        kernel = np.asarray(layer.kernel.numpy())
        arrays[name] = np.ascontiguousarray(
            np.transpose(kernel, (3, 2, 0, 1)) if kernel.ndim == 4 else kernel.T
        )
        arrays[name + _BIAS_SUFFIX] = np.asarray(layer.bias.numpy())
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if ext == ".mat":
        import scipy.io

        scipy.io.savemat(path, arrays)
    elif ext == ".npz":
        np.savez(path, **arrays)
    else:
        np.save(path, arrays, allow_pickle=True)
    return path


def convert_caffe_weights(src, dst, input_shape=(227, 227, 3), include_top=False):
    """Converts a Caffe weights file into a Keras ``.weights.h5`` for ``InceptionV1``.

    Builds ``InceptionV1(include_top=include_top, input_shape=input_shape)``, loads
    `src` with :func:`load_caffe_weights` and saves the weights to `dst`, which
    ``InceptionV1(...).load_weights(dst)`` or
    ``build_backbone("inception_v1", weights=dst)`` read back.

    Args:
        src: ``.caffemodel`` / ``.mat`` / ``.npz`` / ``.npy`` Caffe weights.
        dst: output path ending in ``.weights.h5``.
        input_shape: shape the model is built at (weights do not depend on it).
        include_top: also convert the 1000-way classifier.

    Returns:
        The model with the loaded weights.
    """
    return convert_with_report(src, dst, input_shape, include_top)[0]


def convert_with_report(src, dst, input_shape=(227, 227, 3), include_top=False):
    """:func:`convert_caffe_weights`, also returning :func:`load_caffe_weights`' report
    (``{"loaded": [...], "ignored": [...]}``) so callers can say what was skipped."""
    from hdml_tf.backbones.inception_v1 import InceptionV1

    dst = os.fspath(dst)
    if not dst.endswith(".weights.h5"):
        raise ValueError(f"output path must end in '.weights.h5', got {dst!r}")
    model = InceptionV1(include_top=include_top, input_shape=input_shape)
    report = load_caffe_weights(model, src, skip_classifier=not include_top)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    model.save_weights(dst)
    return model, report


def skipped_layers_lines(ignored_keys):
    """Human lines for the Caffe layers a conversion skipped (the ``"ignored"`` keys of
    :func:`load_caffe_weights`' report), by kind."""
    layers = sorted({k[:-len(_BIAS_SUFFIX)] if k.endswith(_BIAS_SUFFIX) else k
                     for k in ignored_keys})
    aux = [n for n in layers if n.startswith(_AUX_PREFIXES)]
    top = [n for n in layers if n.startswith(_CLASSIFIER_PREFIX)]
    lines = []
    if aux:
        lines.append("skipped the auxiliary classifiers (training-time heads InceptionV1 "
                     f"does not build): {', '.join(aux)}")
    if top:
        lines.append(f"skipped the ImageNet classifier {', '.join(top)} (include_top="
                     "False; the file itself keeps it for `hdml-tf weights check`)")
    return lines
