"""Serving limits: sizes read from image headers, refused before any decoding.

The exported ``serve_bytes`` reads each image's height and width from its header
(``hdml_tf.data.preprocess.encoded_image_size``, which the command-line tools also call,
eagerly) and refuses an image over
``max_pixels`` and a request over ``max_batch`` before decoding anything.

The huge inputs are made without their pixels: a 20,000 x 20,000 grayscale PNG is
zlib-compressed rows of zeros (about 400 KB; decoded to RGB it would need 1.2 GB), and
the 60,000 x 60,000 JPEG is a small real JPEG whose frame header (SOF0) says so.
"""

import io
import json
import math
import os
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from hdml_tf import export, serving_tools
from hdml_tf.data import preprocess
from tests.test_export import CROP, DIM, RESIZE, encoded_images, run_python, tiny_embedder

# One xdist worker runs the whole module, so its module-scoped fixtures are built once
# (--dist loadgroup in pyproject.toml).
pytestmark = pytest.mark.xdist_group("test_serving_limits")

MAX_BATCH = 4


# ------------------------------------------------------------------------ helpers


def zero_png(height, width):
    """A grayscale PNG of zeros, without ever holding or compressing all its rows.

    One block of rows is deflated once and ended with a full flush, which resets the
    compressor, so the same bytes are a valid encoding of every further block; the
    Adler-32 of n zero bytes is (n mod 65521) << 16 | 1.
    """
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    row = width + 1  # filter byte 0, then the pixels
    block_rows = math.gcd(height, 100)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate
    block = compressor.compress(b"\0" * (row * block_rows)) + compressor.flush(
        zlib.Z_FULL_FLUSH)
    stream = (b"\x78\xda" + block * (height // block_rows) + compressor.flush()
              + struct.pack(">I", ((row * height) % 65521) << 16 | 1))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", stream)
            + chunk(b"IEND", b""))


def encode(image, fmt, **kw):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def jpeg_declaring(height, width):
    """A real 16 x 16 baseline JPEG whose SOF0 header is patched to height x width."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (200, 30, 30)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def top_down_bmp(image):
    """A BMP whose rows are stored top-down (negative height in the header)."""
    data = bytearray(encode(image, "BMP"))
    height = struct.unpack("<i", data[22:26])[0]
    row = (image.width * 3 + 3) // 4 * 4
    offset = struct.unpack("<I", data[10:14])[0]
    rows = [data[offset + r * row:offset + (r + 1) * row] for r in range(height)]
    data[offset:] = b"".join(reversed(rows))
    data[22:26] = struct.pack("<i", -height)
    return bytes(data)


def _noise(width, height, mode="RGB", seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    return Image.fromarray(pixels).convert(mode)


def format_samples():
    """(name, bytes, (height, width)) for each header variant the parsers handle."""
    exif = Image.Exif()
    exif[0x010E] = "x" * 3000  # a large APP1 segment before the JPEG frame header
    samples = [
        ("jpeg baseline", encode(_noise(50, 30), "JPEG"), (30, 50)),
        ("jpeg progressive", encode(_noise(7, 301), "JPEG", progressive=True), (301, 7)),
        ("jpeg grayscale exif", encode(_noise(90, 33, "L"), "JPEG", exif=exif), (33, 90)),
        ("jpeg cmyk", encode(_noise(45, 80, "CMYK"), "JPEG"), (80, 45)),
        ("png rgba", encode(_noise(900, 17, "RGBA"), "PNG"), (17, 900)),
        ("png palette", encode(_noise(64, 3, "P"), "PNG"), (3, 64)),
        ("gif", encode(_noise(3, 40), "GIF"), (40, 3)),
        ("bmp bottom-up", encode(_noise(45, 123), "BMP"), (123, 45)),
        ("bmp top-down", top_down_bmp(_noise(45, 123)), (123, 45)),
        ("webp lossy VP8", encode(_noise(77, 33), "WEBP"), (33, 77)),
        ("webp lossless VP8L", encode(_noise(1000, 99), "WEBP", lossless=True), (99, 1000)),
        # Metadata (EXIF) makes Pillow write the extended (VP8X) layout.
        ("webp extended VP8X", encode(_noise(65, 64), "WEBP", exif=exif), (64, 65)),
    ]
    return samples


SAMPLES = format_samples()


@pytest.fixture(scope="module")
def huge():
    """The two oversized inputs of the issue, with the sizes they declare."""
    return {"png": (zero_png(20_000, 20_000), (20_000, 20_000)),
            "jpeg": (jpeg_declaring(60_000, 60_000), (60_000, 60_000))}


# --------------------------------------------------------------- header parsers


@pytest.mark.parametrize("name,data,size", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_declared_size_matches_pil_and_the_decoder(name, data, size):
    with Image.open(io.BytesIO(data)) as image:
        pil = (image.height, image.width)
    assert pil == size
    assert preprocess.encoded_image_size(data).numpy().tolist() == list(size)
    decoded = preprocess.decode_image(data)
    assert tuple(decoded.shape[:2]) == size
    if name.startswith("webp extended"):
        assert data[12:16] == b"VP8X"
    if name.startswith("jpeg"):
        assert tf.image.extract_jpeg_shape(data).numpy()[:2].tolist() == list(size)


def test_declared_size_batched_in_graph_equals_one_by_one(huge):
    contents = [d for _, d, _ in SAMPLES] + [huge["png"][0], huge["jpeg"][0]]
    want = [list(s) for _, _, s in SAMPLES] + [[20_000, 20_000], [60_000, 60_000]]
    graph = tf.function(preprocess.encoded_image_size)
    assert graph(tf.constant(contents)).numpy().tolist() == want
    # Any shape: the trailing axis is (height, width); an empty batch included.
    assert graph(tf.constant([contents[:2]])).numpy().shape == (1, 2, 2)
    assert graph(tf.constant([], tf.string)).numpy().shape == (0, 2)


def test_huge_headers_declare_their_size(huge, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL's own bomb guard
    for data, size in huge.values():
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            assert (image.height, image.width) == size
            assert preprocess.encoded_image_size(data).numpy().tolist() == list(size)
    assert len(huge["png"][0]) < 1_000_000


def test_unreadable_headers():
    jpeg = SAMPLES[0][1]
    sos_first = jpeg[:2] + b"\xff\xda\x00\x08" + b"\0" * 6 + jpeg[2:]
    garbage_segment = jpeg[:2] + b"\xff\xe0\x00\x01" + jpeg[2:]  # length < 2
    bad = [b"", b"junk", jpeg[:40], sos_first, garbage_segment, SAMPLES[4][1][:20],
           b"GIF89a\x00\x00\x05\x00", b"BM" + b"\0" * 30,
           b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 20,
           jpeg_declaring(0, 30)]  # height 0 ("defined later by DNL"): refused too
    sizes = preprocess.encoded_image_size(tf.constant(bad)).numpy().tolist()
    assert sizes == [[-1, -1]] * len(bad)


# ------------------------------------------------------------- the SavedModel


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """An export of the tiny embedder with max_batch=4 and the default max_pixels."""
    base = str(tmp_path_factory.mktemp("saved_models") / "limited")
    return export.export_embedder(tiny_embedder(seed=3), base, resize=RESIZE, crop=CROP,
                                  warmup="skip", max_batch=MAX_BATCH)


_REFUSAL = """
    import json, resource, sys, time
    import tensorflow as tf

    path, *names = sys.argv[1:]
    serve = tf.saved_model.load(path).signatures["serve_bytes"]
    normal = open(names[-1], "rb").read()
    first = serve(image_bytes=tf.constant([normal]))["embedding"].numpy()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    refusals = []
    for name in names[:-1]:
        data = open(name, "rb").read()
        start = time.perf_counter()
        try:
            serve(image_bytes=tf.constant([normal, data]))
            refusals.append({"message": None})
        except tf.errors.InvalidArgumentError as err:
            refusals.append({"message": err.message,
                             "seconds": time.perf_counter() - start})
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    again = serve(image_bytes=tf.constant([normal]))["embedding"].numpy()
    print("RESULT", json.dumps({"refusals": refusals, "grew_mb": (after - before) / 1024,
                                "first": first.tolist(), "again": again.tolist()}))
"""


def test_oversized_images_refused_before_decoding_in_fresh_process(limited, huge, tmp_path):
    """Each huge image, sent at batch index 1, is refused with its declared size and the
    limit; the process's peak memory grows by < 200 MB (decoding the PNG alone needs
    1.2 GB), and the next request gets its embedding."""
    names = []
    for kind, (data, _) in huge.items():
        names.append(str(tmp_path / f"huge.{kind}"))
        with open(names[-1], "wb") as f:
            f.write(data)
    names.append(str(tmp_path / "normal.jpg"))
    with open(names[-1], "wb") as f:
        f.write(encoded_images()[0])
    result = run_python(_REFUSAL, limited, *names)
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")][-1]
    outcome = json.loads(line[len("RESULT "):])
    limit = export.DEFAULT_MAX_PIXELS
    for refusal, (height, width) in zip(outcome["refusals"], (size for _, size in
                                                              huge.values())):
        message = refusal["message"]
        assert message is not None, "an oversized image was not refused"
        assert ("serve_bytes: input image_bytes refused before decoding at batch "
                "index(es) [1]") in message, message
        assert f"declared size(s) [{height}x{width}]" in message and f"{limit} pixels" in message, message
    assert outcome["grew_mb"] < 200, outcome["grew_mb"]
    again = np.array(outcome["again"])
    assert again.shape == (1, DIM)
    np.testing.assert_allclose(again, outcome["first"], atol=1e-6, rtol=0)


def test_unreadable_header_refused_by_index(limited):
    serve = tf.saved_model.load(limited).signatures["serve_bytes"]
    good = encoded_images()[1]
    png = SAMPLES[4][1]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"unreadable image header at \[0 2\]"):
        serve(image_bytes=tf.constant([png[:20], good, png[:23]]))
    assert serve(image_bytes=tf.constant([good]))["embedding"].shape == (1, DIM)


def test_max_batch_refused_before_decoding_both_signatures(limited):
    loaded = tf.saved_model.load(limited)
    contents = (encoded_images() * 2)[:MAX_BATCH + 1]
    serve_bytes = loaded.signatures["serve_bytes"]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"serve_bytes: input image_bytes holds 5 images, over the "
                             r"limit of max_batch=4"):
        serve_bytes(image_bytes=tf.constant(contents))
    # One undecodable image in the oversized batch: the batch limit is what is reported.
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_batch=4"):
        serve_bytes(image_bytes=tf.constant(contents[:-1] + [b"junk"]))
    assert serve_bytes(image_bytes=tf.constant(contents[:MAX_BATCH]))[
        "embedding"].shape == (MAX_BATCH, DIM)
    images = np.zeros((MAX_BATCH + 1, CROP, CROP, 3), np.float32)
    serve_images = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"serving_default: input images holds 5 images"):
        serve_images(images=tf.constant(images))
    assert serve_images(images=tf.constant(images[:MAX_BATCH]))[
        "embedding"].shape == (MAX_BATCH, DIM)


def _recording(model):
    """Wrap both signatures of ``model`` so each call's request size is recorded."""
    sizes = []

    def wrap(function):
        def call(**inputs):
            sizes.append(int(next(iter(inputs.values())).shape[0]))
            return function(**inputs)
        call.structured_outputs = function.structured_outputs
        return call

    model.signatures = {name: wrap(f) for name, f in model.signatures.items()}
    return sizes


def test_embed_splits_any_number_of_images_into_requests_the_model_accepts(limited):
    """11 images through a model exported with max_batch=4: requests of 4, 4 and 3, and
    the same embeddings as one image at a time; arrays go to serving_default alike."""
    model = serving_tools.load_model(limited)
    assert model.limits["max_batch"] == MAX_BATCH
    contents = (encoded_images() * 2)[:11]
    one_by_one = np.concatenate([serving_tools.embed(model, [c]) for c in contents])
    sizes = _recording(model)
    embeddings = serving_tools.embed(model, contents)
    assert sizes == [4, 4, 3]
    np.testing.assert_allclose(embeddings, one_by_one, atol=1e-6, rtol=0)
    del sizes[:]
    assert serving_tools.embed(model, contents, batch_size=100).shape == (11, DIM)
    assert sizes == [4, 4, 3]  # a larger batch_size is capped at the model's limit
    del sizes[:]
    pixels = np.random.default_rng(0).uniform(0, 255, (9, CROP, CROP, 3)).astype(np.float32)
    assert serving_tools.embed(model, pixels, batch_size=2).shape == (9, DIM)
    assert sizes == [2, 2, 2, 2, 1]
    assert serving_tools.embed(model, []).shape == (0, DIM)


def test_hdml_tf_embed_over_more_images_than_max_batch(limited, tmp_path, capsys):
    from hdml_tf.cli import main

    folder = tmp_path / "many"
    folder.mkdir()
    contents = (encoded_images() * 2)[:10]
    for i, data in enumerate(contents):
        (folder / f"{i:02d}.img").write_bytes(data)
    out = str(tmp_path / "many.npz")
    assert main(["embed", "--model", limited, "--images",
                 *sorted(str(p) for p in folder.iterdir()), "--out", out, "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    with np.load(out) as written:
        assert written["embeddings"].shape == (10, DIM)
        np.testing.assert_allclose(
            written["embeddings"], serving_tools.embed(limited, contents), atol=1e-6, rtol=0)


def test_limits_in_metadata_and_checked(limited, tmp_path):
    with open(os.path.join(limited, "assets.extra", export.METADATA_FILENAME)) as f:
        limits = json.load(f)["limits"]
    assert limits["max_batch"] == MAX_BATCH
    assert limits["max_pixels"] == export.DEFAULT_MAX_PIXELS
    assert serving_tools.model_limits(limited) == {"max_pixels": export.DEFAULT_MAX_PIXELS,
                                                   "max_batch": MAX_BATCH}
    for bad in ({"max_batch": 0}, {"max_pixels": -1}, {"max_pixels": 1.5}):
        with pytest.raises(export.ExportError, match=next(iter(bad))):
            export.export_embedder(tiny_embedder(), str(tmp_path / "bad"), resize=RESIZE,
                                   crop=CROP, warmup="skip", verify=False, **bad)
    assert not os.path.exists(tmp_path / "bad") or not os.listdir(tmp_path / "bad")
