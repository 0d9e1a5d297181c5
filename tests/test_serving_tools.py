"""hdml-tf embed / hdml-tf search: tools that use only the exported SavedModel."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from hdml_tf import cli, export, serving_tools
from tests.test_export import (CROP, DIM, REPO, RESIZE, SUBPROCESS_ENV, encoded_images,
                               tiny_embedder)

# One xdist worker runs the whole module, so its module-scoped fixtures are built once
# (--dist loadgroup in pyproject.toml).
pytestmark = pytest.mark.xdist_group("test_serving_tools")

# Modules a serving process that embeds must not import: training, its evaluation and
# its configs (``import hdml_tf`` itself brings the model classes, for loading saved
# models; `serving_tools.search` imports the evaluation's neighbour search when it runs).
TRAINING_MODULES = ("hdml_tf.training", "hdml_tf.evaluation", "hdml_tf.config",
                    "hdml_tf.compare", "hdml_tf.bench", "hdml_tf.demo")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A model base directory holding one exported tiny embedder (version 1)."""
    base = str(tmp_path_factory.mktemp("saved_models") / "tiny")
    export.export_embedder(tiny_embedder(seed=5), base, resize=RESIZE, crop=CROP,
                           warmup="skip", verify=False)
    return base


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """Seven images in a folder tree, one file that is not an image, and a list file."""
    root = tmp_path_factory.mktemp("gallery")
    (root / "images" / "sub").mkdir(parents=True)
    exts = ["jpg", "png", "png", "gif", "bmp", "jpg", "jpg"]
    files = []
    for i, (data, ext) in enumerate(zip(encoded_images(), exts)):
        path = root / "images" / ("sub" if i % 2 else "") / f"img{i}.{ext}"
        path.write_bytes(data)
        files.append(str(path))
    (root / "images" / "broken.jpg").write_bytes(b"this is not a JPEG")
    (root / "images" / "notes.txt").write_text("not an image, not listed by folders")
    listing = root / "extra.txt"
    listing.write_text("# more images\nimages/img0.jpg\n\n")
    return root, files, str(listing)


@pytest.fixture(scope="module")
def serving_process(model_dir, gallery, tmp_path_factory):
    """One fresh process for the two tests below. First, as a serving process that
    embeds through the library: ``serving_tools`` imported and the model loaded, then
    the training-side modules loaded so far are printed (before anything else is
    imported). Then `hdml-tf embed` and `hdml-tf search`, as a user runs them."""
    root, files, listing = gallery
    out = tmp_path_factory.mktemp("serving_process")
    npz, grid, report = (str(out / n) for n in ("g.npz", "grid.png", "r.json"))
    code = f"""
        import json, sys
        from hdml_tf import serving_tools
        serving_tools.load_model({model_dir!r})
        loaded = sorted(m for m in sys.modules if m.startswith({TRAINING_MODULES!r}))
        print("IMPORTED", json.dumps(loaded), flush=True)

        from hdml_tf.cli import main
        codes = [
            main(["embed", "--model", {model_dir!r}, "--images", {str(root / "images")!r},
                  {listing!r}, "--out", {npz!r}, "--batch-size", "3", "--quiet"]),
            main(["search", "--model", {model_dir!r}, "--gallery", {npz!r},
                  "--query", {files[3]!r}, {files[4]!r}, "-k", "3",
                  "--grid", {grid!r}, "--json", {report!r}]),
        ]
        print("RESULT", json.dumps({{"codes": codes}}))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                            capture_output=True, text=True, cwd=REPO, env=SUBPROCESS_ENV,
                            timeout=240)
    return result, npz, grid, report


def test_embed_and_search_end_to_end(serving_process, model_dir, gallery):
    root, files, listing = gallery
    result, npz, grid, report = serving_process
    assert result.returncode == 0, result.stderr[-3000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")][-1]
    outcome = json.loads(line[len("RESULT "):])
    assert outcome == {"codes": [0, 0]}, result.stderr[-3000:]
    assert "skipped" in result.stderr and "broken.jpg" in result.stderr

    # The .npz: folder images in sorted order, then the list file's entry.
    data = np.load(npz, allow_pickle=False)
    walk = sorted(f for f in files if os.sep + "sub" + os.sep not in f) + sorted(
        f for f in files if os.sep + "sub" + os.sep in f)
    expected_paths = walk + [os.path.join(str(root), "images/img0.jpg")]
    assert data["paths"].tolist() == expected_paths
    assert data["skipped"].tolist() == [str(root / "images" / "broken.jpg")]
    assert data["embeddings"].shape == (len(expected_paths), DIM)
    function = serving_tools.load_model(model_dir).signature("serve_bytes")
    want = function(image_bytes=tf.constant(
        [open(p, "rb").read() for p in expected_paths]))["embedding"].numpy()
    np.testing.assert_allclose(data["embeddings"], want, atol=1e-6, rtol=0)

    # search: each query is in the gallery, so it is its own nearest neighbour.
    hits = json.load(open(report))
    assert [h["query"] for h in hits] == [files[3], files[4]]
    for hit in hits:
        assert len(hit["neighbours"]) == 3
        assert hit["neighbours"][0]["path"] == hit["query"]
        assert hit["neighbours"][0]["score"] == pytest.approx(1.0, abs=1e-5)
        scores = [n["score"] for n in hit["neighbours"]]
        assert scores == sorted(scores, reverse=True)
    assert f"query: {files[3]}" in result.stdout
    with Image.open(grid) as image:
        assert image.size[0] > 100 and image.size[1] > 100


def test_serving_tools_import_no_training_code(serving_process):
    """A serving process that embeds through the library (``serving_tools``) loads the
    model classes (``import hdml_tf``) but none of the training side."""
    result = serving_process[0]
    line = [l for l in result.stdout.splitlines() if l.startswith("IMPORTED ")][-1]
    assert json.loads(line[len("IMPORTED "):]) == [], result.stderr[-3000:]


def test_search_golden():
    """Gallery e1, e2, (e1+e2)/sqrt2, -e1; query e1: cosines 1, 0, 0.7071, -1."""
    gallery = np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], np.float32)
    scores, indices = serving_tools.search(np.array([[2.0, 0.0]]), gallery, k=3)
    np.testing.assert_array_equal(indices, [[0, 2, 1]])
    np.testing.assert_allclose(scores, [[1.0, np.sqrt(0.5), 0.0]], atol=1e-6)
    # k larger than the gallery is capped; equal scores keep gallery order.
    scores, indices = serving_tools.search(np.array([[0.0, 1.0]]), gallery[[0, 3]], k=10)
    np.testing.assert_array_equal(indices, [[0, 1]])


def test_list_images_and_model_dir(gallery, tmp_path, model_dir):
    root, files, listing = gallery
    listed = serving_tools.list_images([listing, files[2]])
    assert listed == [os.path.join(str(root), "images/img0.jpg"), files[2]]
    with pytest.raises(FileNotFoundError, match="nope"):
        serving_tools.list_images([str(tmp_path / "nope")])
    # A base directory resolves to its highest version holding a SavedModel.
    base = tmp_path / "m"
    for version in ("1", "2", "10", "11"):
        (base / version).mkdir(parents=True)
    for version in ("2", "10"):
        (base / version / "saved_model.pb").write_bytes(b"")
    assert serving_tools.resolve_model_dir(str(base)) == str(base / "10")
    assert serving_tools.resolve_model_dir(str(base / "2")) == str(base / "2")
    with pytest.raises(FileNotFoundError, match="not a SavedModel"):
        serving_tools.resolve_model_dir(str(base / "1"))
    assert serving_tools.resolve_model_dir(model_dir) == os.path.join(model_dir, "1")


def test_strict_embedding_and_cli_errors(model_dir, gallery, tmp_path, capsys):
    root, files, _ = gallery
    broken = str(root / "images" / "broken.jpg")
    model = serving_tools.load_model(model_dir)
    with pytest.raises(tf.errors.InvalidArgumentError, match="broken.jpg"):
        serving_tools.embed_files(model, [files[0], broken], strict=True)
    embeddings, kept, skipped = serving_tools.embed_files(model, [files[0], broken])
    assert kept == [files[0]] and skipped[0][0] == broken
    assert "not a JPEG/PNG/GIF/BMP/WebP image" in skipped[0][1]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["embed", "--model", model_dir, "--images", str(empty),
                                     "--out", str(tmp_path / "e.npz")]) == 1
    assert "no images found" in capsys.readouterr().err
    foreign = str(tmp_path / "foreign.npz")
    np.savez(foreign, x=np.zeros(3))
    assert cli.main(["search", "--model", model_dir, "--gallery", foreign,
                                      "--query", files[0]]) == 1
    assert "hdml-tf embed" in capsys.readouterr().err
    wrong_dim = str(tmp_path / "wrong.npz")
    serving_tools.save_embeddings(wrong_dim, np.ones((2, DIM + 1)), ["a", "b"])
    assert cli.main(["search", "--model", model_dir, "--gallery", wrong_dim,
                                      "--query", files[0]]) == 1
    assert f"{DIM}-d embeddings" in capsys.readouterr().err


def test_oversized_and_empty_files_one_line_each(model_dir, gallery, tmp_path, capsys):
    """The tools refuse an image over the export's max_pixels from its header (one line
    naming the file, before the model sees it); --strict errors are one line too."""
    from tests.test_serving_limits import zero_png

    root, files, _ = gallery
    huge, empty = tmp_path / "huge.png", tmp_path / "empty.jpg"
    huge.write_bytes(zero_png(20_000, 20_000))
    empty.write_bytes(b"")
    out = str(tmp_path / "o.npz")
    reason = ("declares 20000x20000 pixels (height x width), over the limit of "
              f"{export.DEFAULT_MAX_PIXELS}; not decoded")

    assert cli.main(["embed", "--model", model_dir, "--images", files[0], str(huge),
                                     "--out", out, "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hdml-tf embed: skipped {huge}: {reason}"]
    assert np.load(out)["skipped"].tolist() == [str(huge)]

    for bad, expected in ((huge, reason), (empty, "empty string at [0]")):
        assert cli.main(["embed", "--model", model_dir, "--images", str(bad),
                                         "--out", out, "--quiet", "--strict"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"hdml-tf embed: error: {bad}: "), err
        assert expected in err[0] and "node" not in err[0], err

    assert cli.main(["search", "--model", model_dir, "--gallery", out,
                                      "--query", str(huge)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"hdml-tf search: error: {huge}: {reason}"]

    # --max-pixels below the export's limit: the tool's own check (50 x 60 = 3000 pixels).
    assert cli.main(["embed", "--model", model_dir, "--images", files[0], files[1],
                                     "--out", out, "--quiet", "--max-pixels", "2000"]) == 0
    err = capsys.readouterr().err
    assert f"skipped {files[0]}: declares 50x60 pixels" in err and files[1] not in err
