"""hdml_tf.export: the TF Serving SavedModel, its layout, warmup data and metadata.

The model under test is a narrow ``small_cnn`` backbone (BatchNorm inside a nested
Keras model) inside the real Embedder and HDML classes, with random moving statistics in
every BatchNorm layer, backbone and head, and Caffe normalisation so that the in-graph
BGR flip and mean subtraction are exercised. Parity is checked in a fresh Python process
that only calls ``tf.saved_model.load``, against the model in memory (not a copy
reloaded from the model.keras the exporter reads, which would share a lost statistic),
on inputs preprocessed the way evaluation preprocesses them.
"""

import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from hdml_tf import cli, export
from hdml_tf.backbones import build_backbone
from hdml_tf.data import preprocess
from hdml_tf import HDML, Embedder
from tests.conftest import randomise_batchnorm

# One xdist worker runs the whole module, so its module-scoped fixtures are built once
# (--dist loadgroup in pyproject.toml).
pytestmark = pytest.mark.xdist_group("test_export")

RESIZE, CROP, DIM, NUM_CLASSES = 40, 32, 8, 5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPROCESS_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                      KERAS_BACKEND="tensorflow", MPLBACKEND="Agg")


# ------------------------------------------------------------------------ helpers


def tiny_embedder(seed=0):
    """Embedder over a 2-conv functional backbone, built, with random BN statistics.

    Layers take the global dtype policy, so building it under ``mixed_float16`` gives
    what training under mixed precision gives.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(6, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(12, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    backbone = keras.Model(inputs, keras.layers.Dense(16)(x), name="tiny_backbone")
    backbone.preprocessing = "caffe"
    embedder = Embedder(backbone, embedding_dim=DIM)
    embedder.build((None, CROP, CROP, 3))
    rng = np.random.default_rng(seed)
    bn = embedder.head.bn
    bn.moving_mean.assign(rng.normal(0.0, 5.0, bn.moving_mean.shape).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 20.0, bn.moving_variance.shape)
                              .astype(np.float32))
    return embedder


def bn_embedder(seed=0):
    """Embedder over a narrow small_cnn, built, with random statistics in every
    BatchNorm layer (backbone and head); "caffe" normalisation.

    Layers take the global dtype policy, as in ``tiny_embedder``.
    """
    keras.utils.set_random_seed(seed)
    backbone = build_backbone("small_cnn", widths=(4, 8, 8))
    embedder = Embedder(backbone, embedding_dim=DIM, preprocessing="caffe")
    embedder.build((None, CROP, CROP, 3))
    statistics = randomise_batchnorm(embedder, seed=seed)
    assert any("small_cnn/" in v.path for v in statistics)  # the nested backbone's
    return embedder


def tiny_hdml(embedder):
    model = HDML(embedder, num_classes=NUM_CLASSES)
    model.build((None, CROP, CROP, 3))
    return model


CLASS_NAMES = {"train": ["a", "b", "c", "d", "e"], "test": ["f", "g"]}


def write_workdir(path, model, metrics=True, wrapped=True):
    """A training workdir as ``hdml-tf train`` writes it.

    ``config.json`` is ``{"config": <experiment config>, "num_classes", "class_names"}``
    (``wrapped``) or a bare experiment config; ``metrics.json`` optional.
    """
    os.makedirs(path, exist_ok=True)
    model.save(os.path.join(path, "model.keras"))
    config = {"name": "tiny_test",
              "data": {"name": "cub200", "resize": RESIZE, "crop": CROP,
                       "val_fraction": 0.25},
              "model": {"backbone": "tiny", "embedding_dim": DIM}}
    if wrapped:
        config = {"config": config, "num_classes": NUM_CLASSES, "class_names": CLASS_NAMES}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    if metrics:
        with open(os.path.join(path, "metrics.json"), "w") as f:
            json.dump({"recall@1": 0.5, "nmi": 0.4}, f)
    return path


def encoded_images():
    """Seven encoded images: JPEG/PNG/GIF/BMP, colour, grayscale, RGBA, CMYK, sizes."""
    rng = np.random.default_rng(7)
    specs = [("JPEG", "RGB", (50, 60)), ("PNG", "L", (40, 40)), ("PNG", "RGBA", (45, 70)),
             ("GIF", "RGB", (41, 41)), ("BMP", "RGB", (64, 48)), ("JPEG", "CMYK", (80, 45)),
             ("JPEG", "L", (33, 90))]
    out = []
    for fmt, mode, (h, w) in specs:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buffer, fmt)
        out.append(buffer.getvalue())
    return out


def keras_reference_bytes(embedder, contents, preprocessing="caffe"):
    """What evaluation computes: decode, eval_transform, normalize, Keras embedder."""
    images = tf.stack([preprocess.eval_transform(preprocess.decode_image(c), RESIZE, CROP)
                       for c in contents])
    return embedder(preprocess.normalize(images, preprocessing), training=False).numpy()


def run_python(code, *args, timeout=240):
    """Run ``code`` in a fresh interpreter; return its CompletedProcess (checked)."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                            capture_output=True, text=True, cwd=REPO, env=SUBPROCESS_ENV,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def version_dirs(base):
    """Everything in a model base directory but the exporters' lock file."""
    return sorted(n for n in os.listdir(base) if n != ".lock") if os.path.isdir(base) else []


# ----------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model():
    return tiny_hdml(bn_embedder())


@pytest.fixture(scope="module")
def workdir(model, tmp_path_factory):
    return write_workdir(str(tmp_path_factory.mktemp("work") / "run"), model)


@pytest.fixture(scope="module")
def exported(workdir, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("saved_models") / "tiny")
    return export.export_checkpoint(workdir, base)


@pytest.fixture(scope="module")
def keras_embedder(model):
    """The parity reference: the embedder in memory, whose model.keras was exported."""
    return model.embedder


# ------------------------------------------------------------------------- layout


def test_layout_metadata_and_versions(exported, workdir):
    base = os.path.dirname(exported)
    assert os.path.basename(exported) == "1"
    assert version_dirs(base) == ["1"]  # no temporary directory left behind
    for name in ("saved_model.pb", "variables",
                 os.path.join("assets.extra", export.METADATA_FILENAME)):
        assert os.path.exists(os.path.join(exported, name)), name
    # The warmup file is there exactly when tensorflow-serving-api is installed
    # (test_warmup_requests_parse_and_replay fails, with the fix, when it is not).
    try:
        importlib.import_module("tensorflow_serving.apis.prediction_log_pb2")
        has_api = True
    except ImportError:
        has_api = False
    warmup = os.path.join(exported, "assets.extra", export.WARMUP_FILENAME)
    assert os.path.exists(warmup) == has_api
    with open(os.path.join(exported, "assets.extra", export.METADATA_FILENAME)) as f:
        meta = json.load(f)
    assert meta["format"] == export.METADATA_FORMAT and meta["model_name"] == "tiny"
    assert meta["preprocessing"] == {"resize": [RESIZE, RESIZE], "crop": [CROP, CROP],
                                     "crop_rounding": "floor", "normalize": "caffe",
                                     "interpolation": "bilinear"}
    assert meta["embedding_dim"] == DIM and meta["serving_dtype"] == "float32"
    assert meta["warmup_requests"] == has_api
    assert meta["config"]["data"]["name"] == "cub200"
    assert meta["class_split"] == {"dataset": "cub200", "val_fraction": 0.25,
                                   "num_classes": NUM_CLASSES, "class_names": CLASS_NAMES}
    assert meta["metrics"] == {"recall@1": 0.5, "nmi": 0.4}
    assert meta["versions"]["tensorflow"] == tf.__version__ and meta["versions"]["hdml_tf"]
    assert meta["source"] == os.path.join(os.path.abspath(workdir), "model.keras")
    sig = meta["signatures"]
    assert set(sig) == {"serving_default", "serve_bytes"}
    assert sig["serving_default"]["inputs"]["images"]["shape"] == [-1, CROP, CROP, 3]
    assert sig["serve_bytes"]["inputs"]["image_bytes"]["dtype"] == "string"
    limits = meta["limits"]
    assert (limits["max_pixels"], limits["max_batch"]) == (50_000_000, 128)
    assert (export.DEFAULT_MAX_PIXELS, export.DEFAULT_MAX_BATCH) == (50_000_000, 128)


def test_next_version_and_never_overwrite(workdir, exported, tmp_path):
    # Version 1 is a copy of the module's export (which was itself version 1 of an
    # empty base directory: test_layout_metadata_and_versions).
    base = str(tmp_path / "m")
    first = os.path.join(base, "1")
    shutil.copytree(exported, first)
    stamp = os.path.getmtime(os.path.join(first, "saved_model.pb"))
    second = export.export_checkpoint(workdir, base, warmup="skip", verify=False)
    assert [os.path.basename(first), os.path.basename(second)] == ["1", "2"]
    with pytest.raises(export.ExportError, match="already exists"):
        export.export_checkpoint(workdir, base, version=1, warmup="skip", verify=False)
    assert os.path.getmtime(os.path.join(first, "saved_model.pb")) == stamp
    assert version_dirs(base) == ["1", "2"]
    os.makedirs(os.path.join(base, "7"))  # gaps are fine: next is max + 1
    assert export.next_version(base) == 8


# -------------------------------------------------------- fresh-process parity


_FRESH_PROCESS = """
    import os, sys
    import numpy as np
    import tensorflow as tf

    path, inputs, out = sys.argv[1:4]
    images = np.load(os.path.join(inputs, "images.npy"))
    contents = [open(os.path.join(inputs, f"{i}.bin"), "rb").read() for i in range(7)]
    loaded = tf.saved_model.load(path)
    images_fn = loaded.signatures["serving_default"]
    bytes_fn = loaded.signatures["serve_bytes"]
    result = {}
    for n in (1, 7):
        result[f"images_{n}"] = images_fn(images=tf.constant(images[:n]))["embedding"]
        result[f"bytes_{n}"] = bytes_fn(image_bytes=tf.constant(contents[:n]))["embedding"]
    # A bad batch fails with a message naming the input, then serving goes on.
    try:
        bytes_fn(image_bytes=tf.constant([contents[0], b"", b"not an image", contents[1]]))
        message = ""
    except tf.errors.InvalidArgumentError as err:
        message = err.message
    result["after_error"] = bytes_fn(image_bytes=tf.constant(contents[:2]))["embedding"]
    # An empty request gets an empty answer.
    result["empty_images"] = images_fn(images=tf.constant(images[:0]))["embedding"]
    result["empty_bytes"] = bytes_fn(image_bytes=tf.constant([], tf.string))["embedding"]
    result = {k: v.numpy() for k, v in result.items()}
    result["dtypes"] = np.array([str(v.dtype) for v in result.values()])
    np.savez(out, message=np.array(message), **result)
    # Only TensorFlow was needed: no hdml_tf module was imported.
    assert not [m for m in sys.modules if m == "hdml_tf" or m.startswith("hdml_tf.")]
"""


def test_fresh_process_parity_both_signatures(exported, keras_embedder, tmp_path):
    """Both signatures, batch 1 and 7, equal the Keras embedder to 1e-5."""
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, (7, CROP, CROP, 3)).astype(np.float32)
    contents = encoded_images()
    inputs, out = tmp_path / "inputs", str(tmp_path / "out.npz")
    inputs.mkdir()
    np.save(inputs / "images.npy", images)
    for i, data in enumerate(contents):  # files, not a numpy bytes array: that strips NULs
        (inputs / f"{i}.bin").write_bytes(data)
    run_python(_FRESH_PROCESS, exported, str(inputs), out)
    got = np.load(out)
    want_images = keras_embedder(preprocess.normalize(images, "caffe"),
                                 training=False).numpy()
    want_bytes = keras_reference_bytes(keras_embedder, contents)
    for n in (1, 7):
        assert got[f"images_{n}"].shape == (n, DIM)
        np.testing.assert_allclose(got[f"images_{n}"], want_images[:n], atol=1e-5, rtol=0)
        np.testing.assert_allclose(got[f"bytes_{n}"], want_bytes[:n], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got["bytes_7"], axis=1), 1.0, atol=1e-5)
    assert set(got["dtypes"].tolist()) == {"float32"}
    message = str(got["message"])
    assert "image_bytes" in message and "[1 2]" in message, message
    assert "empty string at [1]" in message and "image at [2]" in message, message
    np.testing.assert_allclose(got["after_error"], want_bytes[:2], atol=1e-5, rtol=0)
    assert got["empty_images"].shape == got["empty_bytes"].shape == (0, DIM)


def test_saved_model_cli_lists_signatures(exported):
    result = subprocess.run(["saved_model_cli", "show", "--all", "--dir", exported],
                            capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    for needle in ("signature_def['serving_default']", "signature_def['serve_bytes']",
                   "inputs['images']", "inputs['image_bytes']", "outputs['embedding']",
                   f"shape: (-1, {CROP}, {CROP}, 3)", f"shape: (-1, {DIM})", "DT_STRING"):
        assert needle in text, f"{needle!r} not in saved_model_cli output:\n{text}"


def test_warmup_requests_parse_and_replay(exported):
    """Two PredictionLog records, one per signature, that the SavedModel answers."""
    try:
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError:
        pytest.fail("tensorflow_serving is not importable: run "
                    "`pip install --no-deps tensorflow-serving-api` (a plain install pulls "
                    "a second TensorFlow)")
    path = os.path.join(exported, "assets.extra", export.WARMUP_FILENAME)
    logs = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    requests = {log.predict_log.request.model_spec.signature_name: log.predict_log.request
                for log in logs}
    assert len(logs) == 2 and set(requests) == {"serving_default", "serve_bytes"}
    assert all(r.model_spec.name == "tiny" for r in requests.values())
    loaded = tf.saved_model.load(exported)
    for name, request in requests.items():
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        assert list(inputs) == (["images"] if name == "serving_default" else ["image_bytes"])
        out = loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
        assert out["embedding"].shape == (1, DIM)


# ----------------------------------------------------------- failure atomicity


@pytest.mark.parametrize("target,error", [("publish.write_warmup", RuntimeError("disk full")),
                                          ("graph.verify_saved_model", KeyboardInterrupt())])
def test_failed_export_leaves_nothing(workdir, exported, tmp_path, monkeypatch, target,
                                     error):
    """A failure (or Ctrl-C) during the export leaves no version and no temp dir."""
    base = str(tmp_path / "m")
    shutil.copytree(exported, os.path.join(base, "1"))  # version 1: the module's export

    def fail(*args, **kwargs):
        raise error

    module, name = target.split(".")
    monkeypatch.setattr(getattr(export, module), name, fail)
    with pytest.raises(type(error)):
        export.export_checkpoint(workdir, base)
    assert version_dirs(base) == ["1"]


def test_killed_export_is_never_visible_as_a_version(workdir, tmp_path):
    """SIGKILL mid-export: no integer directory appears; the next export is version 1."""
    base = str(tmp_path / "m")
    code = """
        import os, signal, sys
        from hdml_tf import export
        from hdml_tf.export import graph
        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)  # after everything is written
        graph.verify_saved_model = die
        export.export_checkpoint(sys.argv[1], sys.argv[2], warmup="skip")
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), workdir, base],
                            capture_output=True, text=True, cwd=REPO, env=SUBPROCESS_ENV,
                            timeout=240)
    assert result.returncode == -9, result.stderr[-3000:]
    left = version_dirs(base)
    assert left and all(n.startswith(".tmp-export-") for n in left), left
    assert not any(n.isdigit() for n in left)
    path = export.export_checkpoint(workdir, base, warmup="skip", verify=False)
    assert os.path.basename(path) == "1"


# ------------------------------------------------- precision and distribution


def _has_half(saved_model_dir):
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    nodes = list(graph.node) + [n for fn in graph.library.function for n in fn.node_def]
    return any(attr.type == types_pb2.DT_HALF or types_pb2.DT_HALF in attr.list.type
               for node in nodes for attr in node.attr.values())


def test_mixed_precision_checkpoint_serves_float32(tmp_path):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = bn_embedder(seed=1)
        model = tiny_hdml(mixed)
    finally:
        keras.config.set_dtype_policy(previous)
    assert mixed.backbone.blocks[1].compute_dtype == "float16"  # a BatchNorm layer
    work = write_workdir(str(tmp_path / "run"), model, metrics=False, wrapped=False)
    path = export.export_checkpoint(work, str(tmp_path / "m"))
    assert not _has_half(path)
    with open(os.path.join(path, "assets.extra", export.METADATA_FILENAME)) as f:
        meta = json.load(f)
    assert "mixed_float16" in meta["source_dtype_policies"] and meta["metrics"] is None
    assert meta["config"]["data"]["crop"] == CROP  # a bare experiment config works too
    assert meta["class_split"] == {"dataset": "cub200", "val_fraction": 0.25}

    reference = bn_embedder(seed=2)  # float32, then the mixed model's weights
    reference.set_weights(mixed.get_weights())
    images = np.random.default_rng(0).uniform(0, 255, (3, CROP, CROP, 3)).astype(np.float32)
    want = reference(preprocess.normalize(images, "caffe"), training=False).numpy()
    loaded = tf.saved_model.load(path)
    got = loaded.signatures["serving_default"](images=tf.constant(images))["embedding"]
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)


def test_model_built_under_mirrored_strategy_exports(tmp_path, two_replicas):
    with two_replicas.scope():
        model = tiny_hdml(bn_embedder(seed=3))
        with pytest.raises(export.ExportError, match="outside a distribution strategy"):
            export.export_embedder(model, str(tmp_path / "in_scope"), resize=RESIZE,
                                   crop=CROP, warmup="skip")
    assert version_dirs(str(tmp_path / "in_scope")) == []
    path = export.export_embedder(model, str(tmp_path / "m"), resize=RESIZE, crop=CROP,
                                  warmup="skip")
    images = np.random.default_rng(1).uniform(0, 255, (2, CROP, CROP, 3)).astype(np.float32)
    want = model.embedder(preprocess.normalize(images, "caffe"), training=False).numpy()
    got = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(got["embedding"].numpy(), want, atol=1e-5, rtol=0)


# --------------------------------------------------------------- inputs and CLI


def test_embedder_keras_file_without_config_needs_sizes(tmp_path):
    path = str(tmp_path / "embedder.keras")
    tiny_embedder().save(path)
    with pytest.raises(export.ExportError, match="--resize and --crop"):
        export.export_checkpoint(path, str(tmp_path / "m"))
    out = export.export_checkpoint(path, str(tmp_path / "m"), resize=RESIZE, crop=CROP,
                                   warmup="skip")
    assert os.path.basename(out) == "1"


def test_export_run_with_the_model_in_memory(model, workdir, tmp_path, monkeypatch):
    """``export_run`` given the model and config a caller has (as training does): the
    workdir's model.keras is not loaded again, the three report lines go to ``log``,
    the metadata holds the given config (turned into a dict by its ``to_dict``) and
    the class split of config.json, and the export serves the model in memory."""
    def no_load(*args, **kwargs):
        raise AssertionError("model.keras was loaded although the model was given")

    class Config:  # the shape of hdml_tf.config's typed configs
        def to_dict(self):
            return {"name": "in_memory", "data": {"name": "cub200", "resize": RESIZE,
                                                  "crop": CROP, "val_fraction": 0.25}}

    monkeypatch.setattr(export.sources, "_load_model", no_load)
    lines = []
    path = export.export_run(workdir, str(tmp_path / "m"), log=lines.append, model=model,
                             config=Config(), warmup="skip", verify=False)
    assert lines == [f"exported {path}",
                     "  signatures: serving_default(images) and "
                     "serve_bytes(image_bytes) -> embedding",
                     "  limits: max_batch=128 images per request, "
                     "max_pixels=50000000 per image"]
    with open(os.path.join(path, "assets.extra", export.METADATA_FILENAME)) as f:
        meta = json.load(f)
    assert meta["config"]["name"] == "in_memory"
    assert meta["class_split"] == {"dataset": "cub200", "val_fraction": 0.25,
                                   "num_classes": NUM_CLASSES, "class_names": CLASS_NAMES}
    images = np.random.default_rng(4).uniform(0, 255, (2, CROP, CROP, 3)).astype(np.float32)
    want = model.embedder(preprocess.normalize(images, "caffe"), training=False).numpy()
    got = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(got["embedding"].numpy(), want, atol=1e-5, rtol=0)


def test_cli_errors_name_the_path(tmp_path, capsys):
    empty = tmp_path / "workdir"
    empty.mkdir()
    assert cli.main(["export", "--checkpoint", str(empty), "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert "no model.keras" in err and str(empty / "model.keras") in err
    missing = str(tmp_path / "nope")
    assert cli.main(["export", "--checkpoint", missing, "--out", str(tmp_path / "m")]) == 1
    assert missing in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "m")


def test_cli_export_and_warmup_modes(workdir, tmp_path, capsys, monkeypatch):
    base = str(tmp_path / "m")
    assert cli.main(["export", "--checkpoint", workdir, "--out", base, "--no-warmup",
                     "--no-verify"]) == 0
    assert os.path.join(base, "1") in capsys.readouterr().out
    assert not os.path.exists(os.path.join(base, "1", "assets.extra",
                                           export.WARMUP_FILENAME))
    # Without tensorflow-serving-api: "auto" warns and still exports, --warmup fails.
    for name in [m for m in sys.modules if m.startswith("tensorflow_serving")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorflow_serving", None)
    with pytest.warns(UserWarning, match="pip install --no-deps tensorflow-serving-api"):
        path = export.export_checkpoint(workdir, base, verify=False)
    assert os.path.basename(path) == "2"
    assert cli.main(["export", "--checkpoint", workdir, "--out", base, "--warmup"]) == 1
    assert "tensorflow-serving-api" in capsys.readouterr().err
    assert version_dirs(base) == ["1", "2"]
