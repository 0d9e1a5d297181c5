"""BVLC GoogLeNet .caffemodel: read without Caffe, fetch with the published digest, check.

The files are synthetic but real: :func:`write_caffemodel` below encodes a
``caffe.NetParameter`` in the protobuf wire format by hand (field numbers from Caffe's
caffe.proto), with the real layer names and shapes of bvlc_googlenet, its auxiliary
heads and weight-free layers between them, in the current ``layer`` form (field 100,
BlobShape) or the legacy V1 ``layers`` form (field 2, enum types, 4-D num/channels/
height/width shapes), with packed or unpacked floats. The encoder is checked once
against the protobuf runtime itself (a schema built in code), so reader and writer do
not merely agree with each other.
"""

import hashlib
import os
import re

import numpy as np
import pytest

from hdml_tf import cli
from hdml_tf.backbones import (
    CAFFE_LAYER_NAMES,
    CaffeModelError,
    CaffeWeightsError,
    InceptionV1,
    download,
    fetch_and_convert,
    load_caffe_weights,
    read_caffemodel,
    save_caffe_weights,
)
from hdml_tf.backbones import imagenet as check_lib
from hdml_tf.backbones.caffemodel import caffemodel_arrays

# ------------------------------------------------------------------ the test encoder


def _varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field, wire):
    return _varint(field << 3 | wire)


def _len(field, payload):
    return _key(field, 2) + _varint(len(payload)) + payload


def _floats(field, values, packed):
    values = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
    if packed:
        return _len(field, values.tobytes())
    # Unpacked: one (key, 4 bytes) record per value.
    records = np.empty((values.size, 5), np.uint8)
    records[:, 0] = field << 3 | 5
    records[:, 1:] = values.view(np.uint8).reshape(-1, 4)
    return records.tobytes()


def encode_blob(array, *, legacy=False, packed=True):
    """A BlobProto: BlobShape (field 7, packed dims) or legacy num/channels/height/width."""
    array = np.asarray(array, np.float32)
    if legacy:  # Caffe pads legacy shapes with leading 1s to 4-D
        dims = (1,) * (4 - array.ndim) + array.shape
        head = b"".join(_key(f, 0) + _varint(d) for f, d in zip((1, 2, 3, 4), dims))
    else:
        head = _len(7, _len(1, b"".join(_varint(d) for d in array.shape)))
    return head + _floats(5, array, packed)


V1_TYPES = {"Convolution": 4, "InnerProduct": 14, "ReLU": 18, "Pooling": 17, "LRN": 15,
            "Concat": 3, "Dropout": 6, "Softmax": 20}


def encode_layer(name, type_, blobs=(), *, v1=False, packed=True):
    """A LayerParameter (name 1, type 2, blobs 7) or V1LayerParameter (4, 5 enum, 6)."""
    if v1:
        body = _len(4, name.encode()) + _key(5, 0) + _varint(V1_TYPES[type_])
        body += b"".join(_len(6, encode_blob(b, legacy=True, packed=packed)) for b in blobs)
        body += _len(2, b"bottom") + _len(3, name.encode())  # bottom/top, to be skipped
        return _len(2, body)
    body = _len(1, name.encode()) + _len(2, type_.encode()) + _len(3, b"bottom")
    body += b"".join(_len(7, encode_blob(b, packed=packed)) for b in blobs)
    return _len(100, body)


AUX_SHAPES = {
    # BVLC auxiliary heads: loss1 on inception_4a (512 ch), loss2 on inception_4d (528).
    "loss1/conv": (128, 512, 1, 1), "loss1/fc": (1024, 2048), "loss1/classifier": (1000, 1024),
    "loss2/conv": (128, 528, 1, 1), "loss2/fc": (1024, 2048), "loss2/classifier": (1000, 1024),
}


def googlenet_arrays(seed=0, aux=True):
    """Random weights in the authors' .mat key layout, for every bvlc_googlenet layer."""
    rng = np.random.default_rng(seed)
    model = InceptionV1(include_top=True)
    shapes = {}
    for name, layer in model.caffe_layers().items():
        shape = tuple(layer.kernel.shape)
        shapes[name] = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
    if aux:
        shapes.update(AUX_SHAPES)
    arrays = {}
    for name, shape in shapes.items():
        arrays[name] = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        arrays[name + "_bias"] = (rng.standard_normal(shape[0]) * 0.05).astype(np.float32)
    return arrays


def write_caffemodel(path, arrays, *, v1=False, packed=True, skip=()):
    """Writes `arrays` (authors' key layout) as a bvlc_googlenet-like NetParameter.

    Weight-free layers (data input, ReLU, LRN, pooling, softmax) stand between the
    weighted ones, as in the real file; layers named in `skip` are left out.
    """
    parts = [_len(1, b"GoogleNet"), _len(3, b"data")]
    parts += [_key(4, 0) + _varint(d) for d in (10, 3, 224, 224)]  # legacy input_dim
    for name in [k for k in arrays if not k.endswith("_bias")]:
        if name in skip:
            continue
        kernel = arrays[name]
        type_ = "Convolution" if kernel.ndim == 4 else "InnerProduct"
        blobs = [kernel] + ([arrays[name + "_bias"]] if name + "_bias" in arrays else [])
        parts.append(encode_layer(name, type_, blobs, v1=v1, packed=packed))
        relu = name.replace("/", "/relu_", 1) if "/" in name else name + "/relu"
        parts.append(encode_layer(relu, "ReLU", v1=v1))
        if name == "conv1/7x7_s2":
            parts.append(encode_layer("pool1/3x3_s2", "Pooling", v1=v1))
            parts.append(encode_layer("pool1/norm1", "LRN", v1=v1))
    parts.append(encode_layer("prob", "Softmax", v1=v1))
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"".join(parts))
    return os.fspath(path)


def _sha1(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def _listing(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


@pytest.fixture(scope="module")
def arrays():
    return googlenet_arrays()


@pytest.fixture(scope="module")
def published(tmp_path_factory, arrays):
    """The synthetic bvlc_googlenet.caffemodel (legacy V1 layers, like the 2014 release)."""
    folder = tmp_path_factory.mktemp("remote")
    return write_caffemodel(folder / "bvlc_googlenet.caffemodel", arrays, v1=True)


def _expected_keras(arrays, name):
    kernel = arrays[name]
    return np.transpose(kernel, (2, 3, 1, 0)) if kernel.ndim == 4 else kernel.T


def assert_model_holds(model, arrays):
    for name, layer in model.caffe_layers().items():
        np.testing.assert_array_equal(layer.kernel.numpy(), _expected_keras(arrays, name),
                                      err_msg=name)
        np.testing.assert_array_equal(layer.bias.numpy(), arrays[name + "_bias"], err_msg=name)


# ------------------------------------------------------------------------ the reader


def test_encoder_is_the_protobuf_wire_format(tmp_path):
    """The hand encoder's bytes parse with the protobuf runtime under caffe.proto's
    field numbers, so the reader is tested against the real format."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="caffe_subset.proto", package="caffe")

    def message(name, *fields):
        m = file.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BlobShape", ("dim", 1, F.TYPE_INT64, rep, None))
    message("BlobProto", ("shape", 7, F.TYPE_MESSAGE, opt, ".caffe.BlobShape"),
            ("data", 5, F.TYPE_FLOAT, rep, None), ("num", 1, F.TYPE_INT64, opt, None),
            ("channels", 2, F.TYPE_INT64, opt, None), ("height", 3, F.TYPE_INT64, opt, None),
            ("width", 4, F.TYPE_INT64, opt, None))
    message("LayerParameter", ("name", 1, F.TYPE_STRING, opt, None),
            ("type", 2, F.TYPE_STRING, opt, None),
            ("blobs", 7, F.TYPE_MESSAGE, rep, ".caffe.BlobProto"))
    message("V1LayerParameter", ("name", 4, F.TYPE_STRING, opt, None),
            ("type", 5, F.TYPE_INT32, opt, None),
            ("blobs", 6, F.TYPE_MESSAGE, rep, ".caffe.BlobProto"))
    message("NetParameter", ("name", 1, F.TYPE_STRING, opt, None),
            ("layer", 100, F.TYPE_MESSAGE, rep, ".caffe.LayerParameter"),
            ("layers", 2, F.TYPE_MESSAGE, rep, ".caffe.V1LayerParameter"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    Net = message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe.NetParameter"))

    small = {"conv1/7x7_s2": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
             "conv1/7x7_s2_bias": np.array([0.5, -1.5], np.float32),
             "loss3/classifier": np.arange(6, dtype=np.float32).reshape(3, 2) / 7,
             "loss3/classifier_bias": np.array([1, 2, 3], np.float32)}
    for v1 in (False, True):
        for packed in (False, True):
            path = write_caffemodel(tmp_path / f"s{v1}{packed}.caffemodel", small, v1=v1,
                                    packed=packed)
            net = Net.FromString(open(path, "rb").read())
            layers = net.layers if v1 else net.layer
            conv = [layer for layer in layers if layer.name == "conv1/7x7_s2"][0]
            np.testing.assert_array_equal(np.array(conv.blobs[0].data, np.float32),
                                          small["conv1/7x7_s2"].reshape(-1))
            if v1:
                assert conv.type == 4
                assert [conv.blobs[1].num, conv.blobs[1].channels, conv.blobs[1].height,
                        conv.blobs[1].width] == [1, 1, 1, 2]
            else:
                assert conv.type == "Convolution" and list(conv.blobs[0].shape.dim) == [2, 3, 2, 2]
            # ... and the reader agrees with protobuf on the same bytes.
            assert {k: v.tolist() for k, v in caffemodel_arrays(path).items()} == {
                k: v.tolist() for k, v in small.items()}


@pytest.mark.parametrize("v1", [False, True], ids=["layer", "legacy_layers"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_reader_returns_every_blob_in_caffe_shapes(tmp_path, arrays, v1, packed):
    path = write_caffemodel(tmp_path / "g.caffemodel", arrays, v1=v1, packed=packed)
    layers = read_caffemodel(path)
    by_name = {layer.name: layer for layer in layers}
    assert by_name["conv1/7x7_s2"].type == "Convolution"
    assert by_name["loss3/classifier"].type == "InnerProduct"
    assert by_name["pool1/norm1"].blobs == () and by_name["prob"].type == "Softmax"
    legacy_bias = by_name["conv1/7x7_s2"].blobs[1].shape
    assert legacy_bias == ((1, 1, 1, 64) if v1 else (64,))  # Caffe's own shapes
    got = caffemodel_arrays(layers)
    assert got.keys() == arrays.keys()
    for key, value in arrays.items():
        assert got[key].shape == value.shape, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_load_into_include_top_model_skips_aux_heads_by_name(tmp_path, published, arrays):
    model = InceptionV1(include_top=True)
    report = load_caffe_weights(model, published)
    assert_model_holds(model, arrays)
    assert report["loaded"] == sorted(CAFFE_LAYER_NAMES)
    assert report["ignored"] == sorted(k for k in arrays if k.startswith(("loss1/", "loss2/")))


def test_caffemodel_and_authors_mat_give_identical_networks(tmp_path, published, arrays):
    import scipy.io

    mat = tmp_path / "tf_ckpt_from_caffe.mat"
    scipy.io.savemat(mat, arrays)  # the authors' layout: OIHW, '<name>_bias'
    from_caffe, from_mat = InceptionV1(include_top=True), InceptionV1(include_top=True)
    load_caffe_weights(from_caffe, published)
    load_caffe_weights(from_mat, mat)
    for a, b in zip(from_caffe.weights, from_mat.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    x = np.random.default_rng(1).uniform(-100, 100, (1, 96, 96, 3)).astype(np.float32)
    np.testing.assert_array_equal(from_caffe(x).numpy(), from_mat(x).numpy())


@pytest.mark.parametrize("mutate, expected", [
    (dict(skip=("inception_4b/5x5",)),
     r"missing keys \(2\): inception_4b/5x5, inception_4b/5x5_bias"),
    (dict(reshape="inception_3a/3x3"),
     r"inception_3a/3x3: shape \(128, 96, 3, 2\), expected \(128, 96, 3, 3\)"),
], ids=["missing", "misshaped"])
def test_missing_or_misshaped_layer_is_named_and_nothing_is_loaded(tmp_path, arrays, mutate,
                                                                  expected):
    bad = dict(arrays)
    if "reshape" in mutate:
        name = mutate["reshape"]
        bad[name] = bad[name][..., :2]
    path = write_caffemodel(tmp_path / "bad.caffemodel", bad, skip=mutate.get("skip", ()))
    model = InceptionV1(include_top=True)
    before = [v.numpy().copy() for v in model.weights]
    with pytest.raises(CaffeWeightsError, match=expected) as info:
        load_caffe_weights(model, path)
    assert "bad.caffemodel" in str(info.value) and "No weights were assigned" in str(info.value)
    for v, b in zip(model.weights, before):
        np.testing.assert_array_equal(v.numpy(), b)


def test_corrupt_files_are_named(tmp_path, arrays):
    small = {k: arrays[k] for k in ("conv1/7x7_s2", "conv1/7x7_s2_bias")}
    good = open(write_caffemodel(tmp_path / "g.caffemodel", small), "rb").read()
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(good[:-1000])
    with pytest.raises(CaffeModelError, match=r"truncated\.caffemodel.*truncated at byte"):
        read_caffemodel(truncated)
    short = tmp_path / "short.caffemodel"  # data shorter than its BlobShape says
    short.write_bytes(encode_layer("conv1/7x7_s2", "Convolution", [np.zeros((2, 3))])
                      .replace(_len(1, _varint(2) + _varint(3)), _len(1, _varint(2) + _varint(4))))
    with pytest.raises(CaffeModelError, match=r"'conv1/7x7_s2' blob 0: shape \(2, 4\) needs 8"):
        read_caffemodel(short)
    html = tmp_path / "page.caffemodel"
    html.write_bytes(b"<html><body>404 Not Found</body></html>")
    with pytest.raises(CaffeModelError, match="page.caffemodel"):
        read_caffemodel(html)


# -------------------------------------------------------------------------- fetching


def test_fetch_verify_convert_load_then_reuse_without_network(tmp_path, published, arrays,
                                                              monkeypatch, capsys):
    url, digest = "file://" + published, _sha1(published)
    cache = tmp_path / "cache"
    fetched = fetch_and_convert("bvlc_googlenet", url=url, sha1=digest, cache_dir=cache)
    assert fetched.downloaded and fetched.converted
    assert fetched.source == str(cache / "bvlc_googlenet.caffemodel")
    assert fetched.weights == str(cache / "bvlc_googlenet.weights.h5")
    assert _listing(cache) == ["bvlc_googlenet.caffemodel", "bvlc_googlenet.weights.h5"]
    printed = capsys.readouterr().out
    assert f"SHA-1 {digest} verified" in printed and fetched.weights in printed
    assert "skipped the auxiliary classifiers" in printed and "loss1/fc" in printed

    backbone = InceptionV1()
    backbone.load_weights(fetched.weights)
    for name, layer in backbone.caffe_layers().items():
        np.testing.assert_array_equal(layer.kernel.numpy(), _expected_keras(arrays, name))
        np.testing.assert_array_equal(layer.bias.numpy(), arrays[name + "_bias"])

    mtimes = [os.stat(p).st_mtime_ns for p in (fetched.source, fetched.weights)]

    def no_network(*args, **kwargs):
        raise AssertionError("urlopen called although the cache is complete")

    monkeypatch.setattr(download.urllib.request, "urlopen", no_network)
    again = fetch_and_convert("bvlc_googlenet", url=url, sha1=digest, cache_dir=cache)
    assert not again.downloaded and not again.converted
    assert [os.stat(p).st_mtime_ns for p in (again.source, again.weights)] == mtimes
    assert "already in the cache" in capsys.readouterr().out


def test_a_flipped_byte_fails_the_digest_and_leaves_nothing(tmp_path, published):
    data = bytearray(open(published, "rb").read())
    digest = hashlib.sha1(data).hexdigest()
    data[len(data) // 2] ^= 0x01
    tampered = tmp_path / "remote" / "bvlc_googlenet.caffemodel"
    tampered.parent.mkdir()
    tampered.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(download.ChecksumError, match=f"SHA-1 mismatch .*expected {digest}"):
        fetch_and_convert("bvlc_googlenet", url=tampered.as_uri(), sha1=digest, cache_dir=cache)
    assert _listing(cache) == []


def test_a_mirror_url_alone_keeps_the_published_sha1(tmp_path, published):
    """--url without a digest still checks BVLC's SHA-1, which the stand-in fails."""
    with pytest.raises(download.ChecksumError) as info:
        fetch_and_convert("bvlc_googlenet", url="file://" + published, cache_dir=tmp_path / "c")
    assert info.value.expected == download.KNOWN_WEIGHTS["bvlc_googlenet"].sha1
    assert info.value.algorithm == "sha1"
    assert _listing(tmp_path / "c") == []


def test_cli_fetch_import_and_errors(tmp_path, published, arrays, capsys):
    url, digest = "file://" + published, _sha1(published)
    cache = tmp_path / "cache"
    assert cli.main(["weights", "fetch", "bvlc_googlenet", "--url", url, "--sha1", digest,
                     "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert f"weights: {cache / 'bvlc_googlenet.weights.h5'}" in out
    assert f"hdml-tf weights check {cache / 'bvlc_googlenet.caffemodel'}" in out

    top = tmp_path / "top.weights.h5"
    assert cli.main(["weights", "import", published, "-o", str(top), "--include-top"]) == 0
    out = capsys.readouterr().out
    assert "skipped the auxiliary classifiers" in out and f"wrote {top}" in out
    model = InceptionV1(include_top=True)
    model.load_weights(top)
    assert_model_holds(model, arrays)

    broken = tmp_path / "broken.caffemodel"
    broken.write_bytes(open(published, "rb").read()[:5000])
    assert cli.main(["weights", "import", str(broken), "-o", str(tmp_path / "x.weights.h5")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.caffemodel" in err and "Traceback" not in err
    assert not (tmp_path / "x.weights.h5").exists()

    assert cli.main(["weights", "fetch", "bvlc_googlenet", "--url", url, "--sha1", "0" * 40,
                     "--cache-dir", str(tmp_path / "c2")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SHA-1 mismatch" in err and "Traceback" not in err


# ----------------------------------------------------------------- the ImageNet check


def test_class_list_is_imagenet_1k_in_synset_order():
    classes = check_lib.imagenet_classes()
    assert len(classes) == 1000 and len({w for w, _ in classes}) == 1000
    assert classes[0] == ("n01440764", "tench, Tinca tinca")
    assert classes[999] == ("n15075141", "toilet tissue, toilet paper, bathroom tissue")
    assert [w for w, _ in classes] == sorted(w for w, _ in classes)  # synset_words order
    assert classes[985][1] == "daisy"


def test_preprocessing_contract_by_hand():
    """A 256x256 image is not resized; the 224 crop starts at (256 - 224) // 2 = 16.
    Pixel (16, 16) = RGB (200, 100, 50) -> BGR (50, 100, 200) - (104, 117, 123)
    = (-54, -17, 77), the output's pixel (0, 0)."""
    image = np.zeros((256, 256, 3), np.uint8)
    image[16, 16] = (200, 100, 50)
    image[15, 15] = (255, 255, 255)  # outside the crop
    out = check_lib.caffe_preprocess(image)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0, 0], [-54.0, -17.0, 77.0])
    np.testing.assert_array_equal(out[1, 1], [-104.0, -117.0, -123.0])
    assert check_lib.caffe_preprocess(image, crop=227)[0, 0].tolist() == [-104, -117, -123]
    # Other sizes are warped to 256x256 first: a constant image stays constant.
    flat = np.full((427, 640, 3), (10, 20, 30), np.uint8)
    np.testing.assert_allclose(check_lib.caffe_preprocess(flat)[100, 100],
                               [30 - 104, 20 - 117, 10 - 123], atol=1e-3)


def test_top5_check_runs_on_the_sample_images(published, capsys):
    results = check_lib.imagenet_check(published)
    assert list(results) == ["china.jpg", "flower.jpg"]
    for by_lrn in results.values():
        assert list(by_lrn) == ["caffe", "authors"]
        for top in by_lrn.values():
            assert len(top) == 5
            probs = [p for *_, p in top]
            assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    printed = capsys.readouterr().out
    assert "centre crop 224, BGR, minus mean (104.0, 117.0, 123.0)" in printed
    assert "LRN 'caffe' (the weights' own)" in printed and "LRN 'authors'" in printed
    assert len(re.findall(r"^\s+1\. +\d+\.\d %", printed, re.M)) == 2


def test_check_without_the_classifier_says_what_is_needed(tmp_path, capsys):
    backbone_only = save_caffe_weights(InceptionV1(), str(tmp_path / "no_top.npz"))
    assert cli.main(["weights", "check", backbone_only]) == 1
    err = capsys.readouterr().err
    assert "loss3/classifier" in err and "no_top.npz" in err and "Traceback" not in err
