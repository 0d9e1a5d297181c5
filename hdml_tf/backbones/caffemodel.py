"""Read a Caffe ``.caffemodel`` (a serialized ``caffe.NetParameter``) without Caffe.

A ``.caffemodel`` is one protocol-buffer message. This module decodes the protobuf wire
format directly (varints, length-delimited fields, 32/64-bit words) for the few fields
that hold weights, and skips everything else:

* ``NetParameter.layer`` (field 100, ``LayerParameter``: name 1, type 2 as a string,
  blobs 7) and the legacy ``NetParameter.layers`` (field 2, ``V1LayerParameter``: name
  4, type 5 as an enum, blobs 6; a nested V0 ``layer`` 1 with name 1, type 2, blobs 50
  is read too);
* ``BlobProto``: ``shape`` 7 (``BlobShape.dim`` 1, packed or not), the legacy
  ``num/channels/height/width`` 1-4, ``data`` 5 (float) and ``double_data`` 8, each
  packed or not.

:func:`read_caffemodel` returns the layers with their blobs as numpy arrays in Caffe's
own shapes; :func:`caffemodel_arrays` turns them into the key layout of the HDML
authors' converted ``.mat`` (``<layer>`` for the weights, ``<layer>_bias``), which
:func:`hdml_tf.backbones.load_caffe_weights` validates and loads (OIHW -> HWIO,
``(out, in)`` -> ``(in, out)``).

Reference: BVLC Caffe ``src/caffe/proto/caffe.proto`` (field numbers), ``Blob::FromProto``
(legacy 4-D shapes are padded with leading 1s; ``double_data`` wins when present);
protobuf encoding documentation (wire types 0, 1, 2, 5).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

__all__ = ["CaffeLayer", "CaffeModelError", "CaffeWeightsError", "read_caffemodel",
           "caffemodel_arrays", "V1_LAYER_TYPES"]

# V1LayerParameter.LayerType values (caffe.proto) -> the type strings of current
# prototxts (Caffe's UpgradeV1LayerType).
V1_LAYER_TYPES = {
    0: "", 1: "Accuracy", 2: "BNLL", 3: "Concat", 4: "Convolution", 5: "Data",
    6: "Dropout", 7: "EuclideanLoss", 8: "Flatten", 9: "HDF5Data", 10: "HDF5Output",
    11: "Im2col", 12: "ImageData", 13: "InfogainLoss", 14: "InnerProduct", 15: "LRN",
    16: "MultinomialLogisticLoss", 17: "Pooling", 18: "ReLU", 19: "Sigmoid",
    20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split", 23: "TanH", 24: "WindowData",
    25: "Eltwise", 26: "Power", 27: "SigmoidCrossEntropyLoss", 28: "HingeLoss",
    29: "MemoryData", 30: "ArgMax", 31: "Threshold", 32: "DummyData", 33: "Slice",
    34: "MVN", 35: "AbsVal", 36: "Silence", 37: "ContrastiveLoss", 38: "Exp",
    39: "Deconvolution",
}
_CONV_TYPES = ("Convolution", "Deconvolution")
_DENSE_TYPES = ("InnerProduct",)

# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class CaffeWeightsError(ValueError):
    """A weights file does not fit the model (lists every problem and the file)."""


class CaffeModelError(CaffeWeightsError):
    """The file is not a readable ``caffe.NetParameter`` (names the file and where)."""


@dataclasses.dataclass(frozen=True)
class CaffeLayer:
    """One layer of a ``.caffemodel``.

    Attributes:
        name: the Caffe layer name (``"conv1/7x7_s2"``).
        type: the layer type as in a current prototxt (``"Convolution"``); a V1 enum
            without a name here is ``"V1:<number>"``.
        blobs: the parameter blobs in Caffe's order (weights, then bias), float arrays
            in Caffe's shapes (legacy shapes are 4-D ``(num, channels, height, width)``).
        legacy_shapes: per blob, whether its shape came from the deprecated 4-D fields.
    """

    name: str
    type: str
    blobs: tuple
    legacy_shapes: tuple


class _Truncated(Exception):
    pass


def _varint(buf, pos, end):
    result = shift = 0
    while True:
        if pos >= end:
            raise _Truncated(pos)
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Truncated(pos)


def _next_field(buf, pos, end):
    """Decodes the field whose key is at ``pos``.

    Returns ``(field, wire_type, value, value_start, next_pos)``: ``value`` is the
    integer for a varint, else the end offset of the value's bytes
    ``buf[value_start:value]``.
    """
    key, pos = _varint(buf, pos, end)
    field, wire = key >> 3, key & 7
    if wire == _VARINT:
        value, stop = _varint(buf, pos, end)
        return field, wire, value, pos, stop
    if wire == _LEN:
        length, pos = _varint(buf, pos, end)
        stop = pos + length
    elif wire == _I64:
        stop = pos + 8
    elif wire == _I32:
        stop = pos + 4
    else:  # groups (3, 4) and 6, 7 do not occur in caffe.proto
        raise _Truncated(pos)
    if stop > end:
        raise _Truncated(pos)
    return field, wire, stop, pos, stop


def _fields(buf, start, end):
    """Yields ``(field, wire_type, value, value_start)`` over a message's bytes."""
    pos = start
    while pos < end:
        field, wire, value, vstart, pos = _next_field(buf, pos, end)
        yield field, wire, value, vstart


def _string(buf, start, stop):
    return bytes(buf[start:stop]).decode("utf-8", errors="replace")


def _unpacked_run(buf, key_pos, end, key, width, dtype):
    """Decodes a run of unpacked fixed-width values sharing the one-byte ``key``.

    Records are ``key byte + width bytes``; reading them as rows of a 2-D array is what
    keeps an unpacked 7-million-float blob fast. Returns ``(values, next_pos)``.
    """
    stride = width + 1
    raw = np.frombuffer(buf, np.uint8, count=end - key_pos, offset=key_pos)
    rows = len(raw) // stride
    keys = raw[: rows * stride : stride]
    mismatch = np.flatnonzero(keys != key)
    n = int(mismatch[0]) if len(mismatch) else rows
    values = raw[: n * stride].reshape(n, stride)[:, 1:].copy().view(dtype).reshape(-1)
    return values, key_pos + n * stride


def _blob(buf, start, end):
    shape = None
    legacy = [0, 0, 0, 0]
    has_legacy = False
    floats, doubles = [], []
    pos = start
    while pos < end:
        key_pos = pos
        field, wire, value, vstart, pos = _next_field(buf, pos, end)
        if (field, wire) in ((5, _I32), (8, _I64)):  # unpacked data: decode the run
            width, dtype = (4, "<f4") if wire == _I32 else (8, "<f8")
            values, pos = _unpacked_run(buf, key_pos, end, buf[key_pos], width, dtype)
            (floats if field == 5 else doubles).append(values)
        elif field in (5, 8) and wire == _LEN:  # packed data
            width, dtype = (4, "<f4") if field == 5 else (8, "<f8")
            if (value - vstart) % width:
                raise _Truncated(vstart)
            (floats if field == 5 else doubles).append(
                np.frombuffer(buf, dtype, count=(value - vstart) // width, offset=vstart))
        elif field == 7 and wire == _LEN:
            shape = []
            for f, w, v, s in _fields(buf, vstart, value):
                if f == 1 and w == _VARINT:
                    shape.append(v)
                elif f == 1 and w == _LEN:  # packed dims
                    p = s
                    while p < v:
                        d, p = _varint(buf, p, v)
                        shape.append(d)
        elif field in (1, 2, 3, 4) and wire == _VARINT:
            legacy[field - 1] = value
            has_legacy = True
    if doubles:  # Blob::FromProto reads double_data when there is any
        data = np.concatenate(doubles) if len(doubles) > 1 else doubles[0]
    elif floats:
        data = np.concatenate(floats) if len(floats) > 1 else floats[0]
    else:
        data = np.zeros((0,), np.float32)
    if shape is not None:
        return data, tuple(int(d) for d in shape), False
    if has_legacy:
        return data, tuple(int(d) for d in legacy), True
    return data, (len(data),), False


def _layer(buf, start, end, name_field, type_field, blobs_field, v0_field=None):
    name, type_, blobs, v0 = None, None, [], None
    for field, wire, value, vstart in _fields(buf, start, end):
        if field == name_field and wire == _LEN:
            name = _string(buf, vstart, value)
        elif field == type_field and wire == _LEN:
            type_ = _string(buf, vstart, value)
        elif field == type_field and wire == _VARINT:
            type_ = V1_LAYER_TYPES.get(value, f"V1:{value}")
        elif field == blobs_field and wire == _LEN:
            blobs.append((vstart, value))
        elif v0_field is not None and field == v0_field and wire == _LEN:
            v0 = (vstart, value)
    if v0 is not None:  # a V0 layer wrapped in a V1 one: the V0 fields hold the data
        v0_name, v0_type, v0_blobs = _layer(buf, *v0, 1, 2, 50)
        name = name or v0_name
        type_ = type_ or v0_type
        blobs = blobs or v0_blobs
    return name, type_, blobs


def read_caffemodel(path):
    """Reads every layer of a ``.caffemodel``, with its blobs as float arrays.

    Args:
        path: a binary ``caffe.NetParameter`` file (``.caffemodel``).

    Returns:
        List of :class:`CaffeLayer` in file order (``layer`` entries, then the legacy
        ``layers`` ones); layers without blobs are included.

    Raises:
        FileNotFoundError: `path` does not exist.
        CaffeModelError: the bytes are not a NetParameter (truncated or corrupt), a
            blob's data does not fill its shape, or a layer has no name.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Caffe model file not found: {path!r}")
    with open(path, "rb") as f:
        buf = f.read()
    current = None
    layers = []
    try:
        entries = []
        for field, wire, value, vstart in _fields(buf, 0, len(buf)):
            if wire != _LEN:
                continue
            if field == 100:
                entries.append((vstart, value, (1, 2, 7, None)))
            elif field == 2:
                entries.append((vstart, value, (4, 5, 6, 1)))
        for index, (start, stop, spec) in enumerate(entries):
            current = f"layer #{index}"
            name, type_, spans = _layer(buf, start, stop, *spec)
            if not name:
                raise CaffeModelError(f"{path!r}: {current} has no name")
            current = f"layer {name!r}"
            blobs, legacy = [], []
            for i, (bstart, bstop) in enumerate(spans):
                data, shape, is_legacy = _blob(buf, bstart, bstop)
                if int(np.prod(shape, dtype=np.int64)) != data.size:
                    raise CaffeModelError(
                        f"{path!r}: layer {name!r} blob {i}: shape {shape} needs "
                        f"{int(np.prod(shape, dtype=np.int64))} values, the file holds "
                        f"{data.size}")
                blobs.append(data.reshape(shape))
                legacy.append(is_legacy)
            layers.append(CaffeLayer(name, type_ or "", tuple(blobs), tuple(legacy)))
    except _Truncated as error:
        where = f" in {current}" if current else ""
        raise CaffeModelError(
            f"{path!r} is not a valid .caffemodel (caffe.NetParameter): malformed or "
            f"truncated at byte {error.args[0]}{where}") from None
    if not entries and buf:
        raise CaffeModelError(
            f"{path!r} is not a .caffemodel: it holds no 'layer' or 'layers' entries")
    return layers


def _strip_leading_ones(array, ndim):
    """Caffe's legacy shapes pad with leading 1s ((1, 1, out, in) for a Dense kernel)."""
    shape = array.shape
    while len(shape) > ndim and shape[0] == 1:
        shape = shape[1:]
    return array.reshape(shape)


def caffemodel_arrays(path_or_layers):
    """The weights of a ``.caffemodel`` in the HDML authors' ``.mat`` key layout.

    Blob 0 of each layer goes under its name (OIHW for convolutions, ``(out, in)`` for
    InnerProduct), blob 1 under ``<name>_bias`` (1-D), any further blob under
    ``<name>_blob<i>`` (then reported as unexpected by the loader). Legacy 4-D shapes
    lose their leading 1s down to those ranks. All layers with blobs are returned,
    the auxiliary classifiers ``loss1/*`` and ``loss2/*`` included:
    :func:`~hdml_tf.backbones.load_caffe_weights` skips those by name and lists them.

    Args:
        path_or_layers: a ``.caffemodel`` path, or the result of :func:`read_caffemodel`.

    Returns:
        Dict ``key -> np.ndarray``.

    Raises:
        CaffeModelError: two layers with blobs share a name.
    """
    if isinstance(path_or_layers, (str, os.PathLike)):
        source = repr(os.fspath(path_or_layers))
        layers = read_caffemodel(path_or_layers)
    else:
        source, layers = "the model", path_or_layers
    arrays = {}
    for layer in layers:
        if not layer.blobs:
            continue
        if layer.name in arrays:
            raise CaffeModelError(f"{source}: two layers named {layer.name!r} hold weights")
        for i, (blob, legacy) in enumerate(zip(layer.blobs, layer.legacy_shapes)):
            if legacy:
                if i == 0 and layer.type in _CONV_TYPES:
                    blob = _strip_leading_ones(blob, 4)
                elif i == 0 and layer.type in _DENSE_TYPES:
                    blob = _strip_leading_ones(blob, 2)
                elif i == 1:
                    blob = _strip_leading_ones(blob, 1)
            key = layer.name if i == 0 else (
                f"{layer.name}_bias" if i == 1 else f"{layer.name}_blob{i}")
            arrays[key] = blob
    return arrays
