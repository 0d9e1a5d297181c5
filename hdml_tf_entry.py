"""The ``hdml-tf`` command's entry point: TensorFlow's start-up lines kept off its output.

It sits beside the ``hdml_tf`` package, not in it, on purpose: ``import hdml_tf``
imports TensorFlow (the package registers its Keras classes on import), and TensorFlow
writes some lines while its shared libraries load, through absl before its own logging
reads ``TF_CPP_MIN_LOG_LEVEL`` (the "before absl::InitializeLog()" notice, oneDNN, "Could
not find cuda drivers"), and one more when its CUDA platform starts on a machine without
a GPU driver (the cuInit failure). No environment variable silences those, so this
module sets the one that does work (``TF_CPP_MIN_LOG_LEVEL=2``, TensorFlow's own INFO and
WARNING records) and imports TensorFlow and starts its devices with stderr (fd 2)
captured, writing back everything but those lines. Then it runs ``hdml_tf.cli.main``.

``hdml-tf --verbose <command>`` or ``HDML_TF_VERBOSE=1`` leaves TensorFlow alone.
``python -m hdml_tf`` comes here too, after the package (and TensorFlow) has been
imported: only the device start-up line can still be filtered then.
"""

import os
import re
import sys
import tempfile

STARTUP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} [\d:. ]+\d+ \S+:\d+\] "  # absl INFO / WARNING records
    r"|E\d{4} [\d:. ]+\d+ cuda_platform\.cc:\d+\] failed call to cuInit: "
    r"|To enable the following instructions: .* rebuild TensorFlow")


def _start_tensorflow_quietly():
    """Import TensorFlow and list its devices with fd 2 captured; write back the rest."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
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


def main(argv=None):
    """``hdml-tf``: start TensorFlow quietly unless asked not to, then the command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = (os.environ.get("HDML_TF_VERBOSE", "") not in ("", "0")
               or argv[:1] == ["--verbose"])
    if not verbose:
        _start_tensorflow_quietly()
    from hdml_tf import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
