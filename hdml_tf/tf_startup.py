"""TensorFlow's start-up lines kept off stderr; ``import hdml_tf`` imports TensorFlow here.

TensorFlow writes some lines while its shared libraries load, through absl before its
own logging reads ``TF_CPP_MIN_LOG_LEVEL`` (the "before absl::InitializeLog()" notice,
oneDNN, "Could not find cuda drivers", the CPU instructions it was not built for), and
one more when its CUDA platform starts on a machine without a GPU driver (the cuInit
failure). No environment variable silences those, so :func:`import_tensorflow_quietly`
sets the one that does work for the later records (``TF_CPP_MIN_LOG_LEVEL=2`` unless it
is set: TensorFlow's own INFO and WARNING records), imports TensorFlow and starts its
CUDA platform with stderr (fd 2) captured, and writes back everything but those lines.

The package's ``__init__`` calls it before any of its modules imports TensorFlow, so
the ``hdml-tf`` command, ``python -m hdml_tf``, the notebooks and any program that
imports ``hdml_tf`` before TensorFlow start without them. ``HDML_TF_VERBOSE=1`` (or
``hdml-tf --verbose <command>``, which sets it) leaves TensorFlow alone. A program that
imports TensorFlow itself first has had its loading lines written already.
"""

import os
import re
import sys
import tempfile

#: The lines filtered: TensorFlow's loading notices and the cuInit failure. Other
#: errors (a missing CUDA library, a failed check) are written back.
STARTUP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} [\d:. ]+\d+ \S+:\d+\] "  # absl INFO / WARNING records
    r"|E\d{4} [\d:. ]+\d+ cuda_platform\.cc:\d+\] failed call to cuInit: "
    r"|To enable the following instructions: .* rebuild TensorFlow")


def verbose():
    """``HDML_TF_VERBOSE`` is set (to anything but "" or "0"): leave TensorFlow alone."""
    return os.environ.get("HDML_TF_VERBOSE", "") not in ("", "0")


def import_tensorflow_quietly():
    """Import TensorFlow and list its devices with fd 2 captured; write back the rest.

    Under ``HDML_TF_VERBOSE`` (:func:`verbose`) it only imports TensorFlow. Where the
    process has no fd 2 there is nothing to filter and TensorFlow is imported as is.
    """
    if verbose():
        import tensorflow  # noqa: F401

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        import tensorflow  # noqa: F401

        return
    with tempfile.TemporaryFile("w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA platform starts (cuInit) here
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            sys.stderr.write("".join(line for line in text.splitlines(True)
                                     if not STARTUP_NOISE.match(line)))
            sys.stderr.flush()
