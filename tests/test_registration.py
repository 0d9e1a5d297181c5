"""Saved artefacts load the ordinary Keras way after only ``import hdml_tf``.

Keras finds a custom class by its registered name (``"hdml_tf>HDML"``); the name exists
only once the class's module has run its ``register_keras_serializable`` decorator, and
``import hdml_tf`` imports those modules. Each artefact is loaded in a fresh process
that imports nothing of hdml_tf but the package itself.
"""

import importlib
import json
import pkgutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from hdml_tf.backbones.small_cnn import SmallCNN
from hdml_tf import HDML, Embedder
from tests.test_export import REPO, SUBPROCESS_ENV

# One xdist worker runs the whole module, so its module-scoped fixtures are built once
# (--dist loadgroup in pyproject.toml).
pytestmark = pytest.mark.xdist_group("test_registration")

SHAPE = (2, 32, 32, 3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """What a run and the README write: a run's ``model.keras`` and a saved embedder."""
    keras.utils.set_random_seed(3)
    root = tmp_path_factory.mktemp("registration")
    embedder = Embedder(SmallCNN(widths=(4, 8, 8), feature_dim=16), embedding_dim=8)
    model = HDML(embedder, num_classes=3)
    model.build((None,) + SHAPE[1:])
    images = np.random.default_rng(0).uniform(-1, 1, SHAPE).astype(np.float32)
    np.save(root / "images.npy", images)
    paths = {"model": str(root / "model.keras"), "embedder": str(root / "e.keras")}
    model.save(paths["model"])
    model.embedder.save(paths["embedder"])
    expected = {"model": np.asarray(model(images)),
                "embedder": np.asarray(model.embedder(images))}
    return paths, str(root / "images.npy"), expected


# One fresh process serves the three tests below: it records what ``import hdml_tf``
# alone registered, then loads each artefact in turn (a failure is reported per
# artefact). A load imports no further hdml_tf module (checked after each), so the
# second load runs after only ``import hdml_tf`` as the first does.
_FRESH_PROCESS = """
    import json, sys, traceback
    import numpy as np
    import hdml_tf, keras

    def ours():
        return sorted(m for m in sys.modules if m == "hdml_tf" or m.startswith("hdml_tf."))

    out = {"registered": sorted(n for n in keras.saving.get_custom_objects()
                                if n.startswith("hdml_tf>"))}
    imported = ours()
    for artefact, path in json.loads(sys.argv[1]).items():
        try:
            model = keras.models.load_model(path)
            result = np.asarray(model(np.load(sys.argv[2])))
            out[artefact] = {"class": type(model).__name__, "out": result.tolist(),
                             "new_modules": sorted(set(ours()) - set(imported))}
        except Exception:
            out[artefact] = {"error": traceback.format_exc()}
    print("RESULT", json.dumps(out))
"""


@pytest.fixture(scope="module")
def fresh_process(saved):
    """What one fresh process that imported only hdml_tf saw (see _FRESH_PROCESS)."""
    paths, images_path, _ = saved
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(_FRESH_PROCESS),
                             json.dumps(paths), images_path],
                            capture_output=True, text=True, cwd=REPO, env=SUBPROCESS_ENV,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("artefact", ["model", "embedder"])
def test_load_model_after_only_import_hdml_tf(saved, fresh_process, artefact):
    _, _, expected = saved
    outcome = fresh_process[artefact]
    assert "error" not in outcome, outcome.get("error")
    assert outcome["new_modules"] == []  # the load relied on `import hdml_tf` alone
    assert outcome["class"] == {"model": "HDML", "embedder": "Embedder"}[artefact]
    np.testing.assert_array_equal(np.asarray(outcome["out"], np.float32),
                                  expected[artefact])


def test_import_hdml_tf_registers_every_serialisable_class(fresh_process):
    """In a fresh process, ``import hdml_tf`` alone registers every class that any module
    of the package registers (found by importing them all here)."""
    import hdml_tf

    for info in pkgutil.walk_packages(hdml_tf.__path__, "hdml_tf."):
        if info.name != "hdml_tf.__main__":
            importlib.import_module(info.name)
    every = sorted(name for name in keras.saving.get_custom_objects()
                   if name.startswith("hdml_tf>"))
    assert fresh_process["registered"] == every
    assert "hdml_tf>HDML" in every and "hdml_tf>InceptionV1" in every
