"""The notebooks in notebooks/ run, in smoke mode, on generated data in the real layouts.

Each notebook is executed with nbclient in a fresh ``python3`` kernel. The notebooks
read their parameters from environment variables (``HDML_SMOKE``, ``HDML_OUT_DIR``,
...), which the kernel inherits from this process, so the tests change no cell:

* 01_quickstart: end to end on generated Fashion-MNIST IDX files.
* 03_serving: end to end from an empty model directory (it trains and exports a small
  model itself), on the same generated data.
* 02_reproduce_paper: up to the training it skips in smoke mode, on a generated
  CUB_200_2011 tree (official metadata files) and a synthetic bvlc_googlenet.caffemodel
  in the real wire format, layer names and shapes, fetched from a file:// stand-in for
  the published URL with its SHA-1, converted, and run through the ImageNet top-5 check.

And the notebooks are committed clean: no outputs, no execution counts; and their first
import of ``hdml_tf`` or TensorFlow prints none of TensorFlow's start-up lines.
"""

import ast
import glob
import hashlib
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.data.helpers_data import make_cub, write_idx_gz
from tests.test_cli import STARTUP_LINES, user_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
COLAB_PREFIX = "https://colab.research.google.com/github/"
CELL_TIMEOUT = 600
REAL_SIZE_TIMEOUT = 3600  # a cell of a real-size run (the demo cell: minutes on a CPU)

import nbclient  # noqa: E402  (requirements-dev.txt: a missing one is a failure, not a skip)
import nbformat  # noqa: E402


def _notebook_paths():
    return sorted(glob.glob(os.path.join(NOTEBOOKS, "*.ipynb")))


def _execute(name, cwd, timeout=CELL_TIMEOUT):
    """Run notebooks/<name> in a new python3 kernel with cwd as working directory.

    Returns the executed notebook; a failing cell raises CellExecutionError, whose
    message holds the cell and the traceback. The kernel process's own stdout/stderr
    (TensorFlow's start-up lines, not cell outputs) go to <cwd>/kernel.log.
    """
    notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(cwd)}})
    with open(os.path.join(cwd, "kernel.log"), "w") as log:
        client.execute(stdout=log, stderr=log)
    return notebook


def _outputs(notebook, output_type=None):
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output_type is None or output["output_type"] == output_type:
                yield output


def _stdout(notebook):
    return "".join(o.get("text", "") for o in _outputs(notebook, "stream")
                   if o.get("name") == "stdout")


def _png_count(notebook):
    return sum("image/png" in o.get("data", {}) for o in _outputs(notebook, "display_data"))


# Images per class in each of the two generated Fashion-MNIST files: the test split
# (classes 5-9 of both) then holds 150 images, more than an export's default max_batch
# (128), so the smoke runs send the SavedModel more images than one request holds, as
# the real-size runs do (notebook 01 queries 500, notebook 03's gallery is 200).
SMOKE_PER_CLASS = 15
SMOKE_TEST_IMAGES = 2 * 5 * SMOKE_PER_CLASS
MAX_BATCH = 128  # hdml_tf.export.DEFAULT_MAX_BATCH


def _fashion_fixture(root, per_class=SMOKE_PER_CLASS):
    """The four Fashion-MNIST IDX files: noise plus a bar whose row encodes the class,
    so that the pictures show something and retrieval is not trivially perfect."""
    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    for part in ("train", "t10k"):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        images = rng.integers(0, 90, size=(len(labels), 28, 28)).astype(np.uint8)
        for image, label in zip(images, labels):
            row = 2 + 2 * int(label)
            image[row:row + 5, 4:24] = rng.integers(170, 255)
        write_idx_gz(os.path.join(root, f"{part}-images-idx3-ubyte.gz"), images)
        write_idx_gz(os.path.join(root, f"{part}-labels-idx1-ubyte.gz"), labels)
    return root


@pytest.fixture
def smoke_env(tmp_path, monkeypatch):
    """Smoke mode, generated Fashion-MNIST, CPU only, outputs under tmp_path."""
    monkeypatch.setenv("HDML_SMOKE", "1")
    monkeypatch.setenv("HDML_FASHION_MNIST_DIR", _fashion_fixture(str(tmp_path / "fmnist")))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for name in ("HDML_OUT_DIR", "HDML_EXPORT_DIR", "HDML_MODEL_DIR", "HDML_SERVING_URL",
                 "HDML_DATA_ROOT", "HDML_GOOGLENET_MAT", "HDML_GOOGLENET_URL",
                 "HDML_GOOGLENET_SHA256", "HDML_GOOGLENET_SHA1", "HDML_TF_CACHE",
                 "HDML_PRESET", "HDML_RUN_BASELINE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ------------------------------------------------------------------ committed clean


@pytest.mark.parametrize("path", _notebook_paths(), ids=os.path.basename)
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    dirty = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{os.path.basename(path)}: cells {dirty} have outputs or execution "
                       "counts; clear them (jupyter nbconvert --clear-output --inplace)")


@pytest.mark.parametrize("path", _notebook_paths(), ids=os.path.basename)
def test_notebook_has_colab_badge_parameters_and_guarded_install(path):
    notebook = nbformat.read(path, as_version=4)
    name = os.path.basename(path)
    first = notebook.cells[0]
    assert first.cell_type == "markdown"
    links = re.findall(re.escape(COLAB_PREFIX) + r"[^)\s]+", first.source)
    assert links and all(link.endswith(f"/blob/main/notebooks/{name}") for link in links)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert 'os.environ.get("HDML_SMOKE"' in code[0].source
    assert "%pip install" in code[1].source and "google.colab" in code[1].source


def _import_cell(notebook):
    """The top-level import statements of the first code cell importing ``hdml_tf`` or
    TensorFlow, as Python source (IPython's ``!`` and ``%`` lines translated first)."""
    from IPython.core.inputtransformer2 import TransformerManager

    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        body = ast.parse(TransformerManager().transform_cell(cell.source)).body
        imports = [n for n in body if isinstance(n, (ast.Import, ast.ImportFrom))]
        modules = {a.name for n in imports if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module for n in imports if isinstance(n, ast.ImportFrom)}
        if {m.split(".")[0] for m in modules if m} & {"hdml_tf", "tensorflow"}:
            return "\n".join(ast.unparse(n) for n in imports)
    raise AssertionError("no cell imports hdml_tf or tensorflow")


@pytest.mark.parametrize("path", _notebook_paths(), ids=os.path.basename)
def test_notebook_import_cell_prints_no_tensorflow_startup_logs(path):
    """The imports of the notebook's first cell that imports TensorFlow or hdml_tf, then
    a TensorFlow op (the devices start: the cuInit line), in a fresh process with the
    user's environment: nothing of TensorFlow's start-up reaches stderr, which a kernel
    shows in the cells."""
    code = _import_cell(nbformat.read(path, as_version=4))
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport tensorflow as tf\nprint(tf.constant(1) + 1)"],
        capture_output=True, text=True, cwd=REPO, env=user_env(), timeout=240)
    assert result.returncode == 0 and "tf.Tensor(2" in result.stdout, result.stderr[-3000:]
    found = [line for line in STARTUP_LINES if line in result.stderr]
    assert not found, f"{os.path.basename(path)}: {code!r} printed\n{result.stderr}"


def test_notebook_links_in_readme_name_existing_notebooks():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    names = set(re.findall(r"notebooks/([\w.-]+\.ipynb)", readme))
    missing = sorted(n for n in names if not os.path.isfile(os.path.join(NOTEBOOKS, n)))
    assert not missing, f"README.md links to notebooks that do not exist: {missing}"


# ------------------------------------------------------------------------ execution


@pytest.mark.slow
def test_quickstart_runs_end_to_end_in_smoke_mode(tmp_path, smoke_env):
    out, exports = tmp_path / "runs", tmp_path / "saved_models"
    smoke_env.setenv("HDML_OUT_DIR", str(out))
    smoke_env.setenv("HDML_EXPORT_DIR", str(exports))

    notebook = _execute("01_quickstart.ipynb", tmp_path)

    printed = _stdout(notebook)
    assert "recall@1" in printed and "HDML" in printed and "baseline" in printed
    assert re.search(r"Recall@1: \d+\.\d %", printed)
    # The query crossed the export's request limit (the cell that failed for users).
    queried = int(re.search(r"embeddings: \((\d+), \d+\)", printed).group(1))
    assert queried == SMOKE_TEST_IMAGES > MAX_BATCH, printed
    # The embedding maps and retrieval grids are displayed, and they are real pictures.
    assert _png_count(notebook) == 4
    for run in ("hdml", "baseline"):
        for picture in (f"embedding_map_{run}.png", f"retrieval_{run}.png"):
            assert (out / picture).stat().st_size > 10_000, picture
    assert (exports / "fashion_mnist_hdml" / "1" / "saved_model.pb").is_file()


@pytest.mark.manual
@pytest.mark.slow
def test_serving_runs_end_to_end_in_smoke_mode(tmp_path, smoke_env):
    from tests.serving_stub import ServingStub

    model_dir, out = tmp_path / "saved_models" / "fmnist", tmp_path / "serving"
    smoke_env.setenv("HDML_MODEL_DIR", str(model_dir))  # empty: the notebook makes one
    smoke_env.setenv("HDML_OUT_DIR", str(out))

    # The REST client cell runs against a stand-in of TF Serving's REST API that refuses
    # requests over max_batch as the model does.
    with ServingStub(str(model_dir), name="fmnist") as server:
        smoke_env.setenv("HDML_SERVING_URL", server.url)
        notebook = _execute("03_serving.ipynb", tmp_path)

    printed = _stdout(notebook)
    gallery_size = SMOKE_TEST_IMAGES
    assert server.request_sizes == [MAX_BATCH, gallery_size - MAX_BATCH], server.request_sizes
    rest = re.search(r"(\d+) images in requests of at most (\d+); largest difference to the "
                     r"local SavedModel: (\S+)", printed)
    assert rest and int(rest.group(1)) == gallery_size and int(rest.group(2)) == MAX_BATCH
    assert float(rest.group(3)) < 1e-5, printed
    assert (model_dir / "1" / "saved_model.pb").is_file()
    assert "serve_bytes" in printed and "serving_default" in printed
    difference = re.search(r"largest difference between the two signatures: (\S+)", printed)
    assert difference and float(difference.group(1)) < 1e-4
    assert "wrote" in printed and (out / "gallery.npz").is_file()
    with np.load(out / "gallery.npz") as gallery:
        assert gallery["embeddings"].shape[0] == len(os.listdir(out / "gallery"))
    assert (out / "search.png").stat().st_size > 5_000
    assert _png_count(notebook) == 1


@pytest.mark.manual
@pytest.mark.slow
def test_reproduce_paper_runs_up_to_training_in_smoke_mode(tmp_path, smoke_env):
    from tests.backbones.test_caffemodel import googlenet_arrays, write_caffemodel

    # CUB_200_2011 in the archive's layout: every class listed, 2 images for each
    # training class (so the held-out validation classes exist), 3 for a few test ones.
    counts = {c: 2 for c in range(1, 101)}
    counts.update({c: 3 for c in range(101, 109)})
    data_root = tmp_path / "data"
    make_cub(str(data_root), counts)
    # The weights: a stand-in for BVLC's bvlc_googlenet.caffemodel (legacy V1 layers,
    # auxiliary heads, the ImageNet classifier) served from file://; the notebook's one
    # fetch call verifies its SHA-1 (the stand-in's own, as the published one is the real
    # file's) and converts it into the cache.
    published = write_caffemodel(tmp_path / "published" / "bvlc_googlenet.caffemodel",
                                 googlenet_arrays(), v1=True)
    with open(published, "rb") as f:
        digest = hashlib.sha1(f.read()).hexdigest()
    cache = tmp_path / "cache"
    out = tmp_path / "paper"
    smoke_env.setenv("HDML_DATA_ROOT", str(data_root))
    smoke_env.setenv("HDML_TF_CACHE", str(cache))
    smoke_env.setenv("HDML_GOOGLENET_URL", pathlib.Path(published).as_uri())
    smoke_env.setenv("HDML_GOOGLENET_SHA1", digest)
    smoke_env.setenv("HDML_OUT_DIR", str(out))
    smoke_env.setenv("HDML_RUN_BASELINE", "1")  # the baseline's config is built, not trained

    notebook = _execute("02_reproduce_paper.ipynb", tmp_path)

    printed = _stdout(notebook)
    assert sorted(os.listdir(cache / "weights")) == ["bvlc_googlenet.caffemodel",
                                                     "bvlc_googlenet.weights.h5"]
    assert f"SHA-1 {digest} verified" in printed and "skipped the auxiliary" in printed
    # The top-5 check ran on both photographs with both LRNs.
    assert "flower.jpg" in printed and "china.jpg" in printed
    assert "LRN 'caffe' (the weights' own)" in printed and "LRN 'authors'" in printed
    assert "train:    200 images, 100 classes" in printed  # all training classes
    assert " test:     24 images, 8 classes" in printed
    assert "SMOKE: training skipped" in printed
    # The bench cell ran (smoke sizes) and printed the expected time of the full run.
    assert "hdml-tf bench: cub200_npair" in printed
    assert "expected full run of cub200_npair" in printed
    assert not (out / "cub200_npair").exists()  # nothing was trained
    assert not (out / "cub200_npair_baseline").exists()
    # The evaluation ran: a recall@K row for each K of the preset's paper numbers, the
    # measured value (in %) beside the paper's, and recall@K does not fall as K grows.
    from hdml_tf.config import get_preset

    paper = get_preset("cub200_npair").paper
    assert "before training" in printed
    rows = {line.split()[0]: line.split()[1:] for line in printed.splitlines()
            if re.match(r"\s*recall@\d+\s", line)}
    assert sorted(rows) == sorted(paper), rows
    ks = sorted(paper, key=lambda k: int(k.split("@")[1]))
    measured = [float(rows[k][0]) for k in ks]
    assert all(0.0 <= m <= 100.0 for m in measured) and measured == sorted(measured), rows
    assert [rows[k][1] for k in ks] == [f"{paper[k]:.1f}" for k in ks]
    assert not (data_root / "CUB_200_2011.tgz").exists()  # no download was tried
    assert notebook.metadata.get("accelerator") == "GPU"  # Colab opens it on a GPU runtime


# ------------------------------------------------------------------ at real size


@pytest.fixture
def real_env(tmp_path, monkeypatch):
    """A user's run: no smoke mode, the real Fashion-MNIST (Debian's dataset-fashion-mnist
    or $HDML_FASHION_MNIST_DIR), outputs under tmp_path."""
    from hdml_tf import data

    try:
        data.load_dataset("fashion_mnist", "test")
    except data.DatasetNotFoundError as error:
        pytest.skip(f"needs the real Fashion-MNIST: {error}")
    for name in ("HDML_SMOKE", "HDML_SERVING_URL", "HDML_MODEL_DIR", "HDML_DATA_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return monkeypatch


@pytest.mark.manual
def test_quickstart_then_serving_at_their_real_sizes(tmp_path, real_env):
    """01 as a new user runs it (1,500 steps per arm, 500 queries of the SavedModel),
    then 03 on the model 01 exported (a 200-image gallery, the REST client against
    the stand-in server): about 10 minutes on 2 CPU cores."""
    from tests.serving_stub import ServingStub

    exports = tmp_path / "saved_models"
    real_env.setenv("HDML_OUT_DIR", str(tmp_path / "runs"))
    real_env.setenv("HDML_EXPORT_DIR", str(exports))
    printed = _stdout(_execute("01_quickstart.ipynb", tmp_path, timeout=REAL_SIZE_TIMEOUT))
    assert re.search(r"embeddings: \(500, 64\)", printed), printed
    recall = float(re.search(r"Recall@1: (\d+\.\d) %", printed).group(1))
    assert recall > 70.0, printed  # a trained model, not the smoke run's

    model_dir = exports / "fashion_mnist_hdml"
    real_env.setenv("HDML_MODEL_DIR", str(model_dir))
    real_env.setenv("HDML_OUT_DIR", str(tmp_path / "serving"))
    with ServingStub(str(model_dir), name="fashion_mnist_hdml") as server:
        real_env.setenv("HDML_SERVING_URL", server.url)
        printed = _stdout(_execute("03_serving.ipynb", tmp_path, timeout=REAL_SIZE_TIMEOUT))
    assert server.request_sizes == [MAX_BATCH, 200 - MAX_BATCH], server.request_sizes
    assert "200 images in requests of at most 128" in printed, printed


@pytest.mark.manual
def test_reproduce_paper_at_its_real_size(tmp_path, monkeypatch):
    """02 trains cub200_npair for 8,000 steps of GoogLeNet: it needs CUB-200-2011 at
    $HDML_DATA_ROOT and a GPU (hours); on a machine without them it cannot run."""
    import tensorflow as tf

    root = os.environ.get("HDML_DATA_ROOT", "")
    if not os.path.isdir(os.path.join(root, "CUB_200_2011")):
        pytest.skip("needs CUB-200-2011 at $HDML_DATA_ROOT")
    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("needs a GPU: 8,000 GoogLeNet steps take ~12 h on 2 CPU cores")
    monkeypatch.delenv("HDML_SMOKE", raising=False)
    monkeypatch.setenv("HDML_OUT_DIR", str(tmp_path / "paper"))
    printed = _stdout(_execute("02_reproduce_paper.ipynb", tmp_path, timeout=24 * 3600))
    assert "recall@1" in printed
