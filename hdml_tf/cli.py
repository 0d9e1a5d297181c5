"""The ``hdml-tf`` command line.

Sub-commands are dispatched lazily to the module that implements them, so light tools
(``embed``, ``search``) start fast and import no training code:

  hdml-tf train   --config PRESET_OR_FILE [--set key=value ...] --workdir DIR
  hdml-tf demo    [--smoke]                  Fashion-MNIST HDML vs baseline, the README job
  hdml-tf compare --config PRESET --seeds N [--set ...] --workdir DIR   HDML vs baseline
  hdml-tf export  --checkpoint WORKDIR_OR_KERAS --out saved_models/NAME
  hdml-tf embed   --model SAVEDMODEL --images DIR_OR_LIST --out emb.npz
  hdml-tf search  --model SAVEDMODEL --gallery emb.npz --query IMAGE [-k 10]
  hdml-tf weights fetch bvlc_googlenet      download (published SHA-1), convert, cache
  hdml-tf weights check FILE                 ImageNet top-5 of two photos: are they right?
  hdml-tf weights import FILE -o OUT.weights.h5   .caffemodel / .mat / .npz / .npy
  hdml-tf weights fetch URL --sha256 HEX [-o DEST]   download with a checksum
  hdml-tf presets                            list the training presets
  hdml-tf bench   --config PRESET [--smoke] [--set ...]   step, pipeline, expected run time

TensorFlow's start-up lines (the absl "before absl::InitializeLog()" notice, oneDNN,
"Could not find cuda drivers", the CPU feature guard) are kept off a command's output;
``hdml-tf --verbose <command>`` or ``HDML_TF_VERBOSE=1`` shows them.
"""

import importlib
import os
import re
import sys
import tempfile

from hdml_tf.import_hooks import around_import

# TensorFlow logs these while its shared libraries load, through absl before TF's own
# logging reads TF_CPP_MIN_LOG_LEVEL, so only filtering them out of stderr removes them.
_STARTUP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} [\d:. ]+\d+ \S+:\d+\] "  # absl INFO / WARNING records
    r"|To enable the following instructions: .* rebuild TensorFlow")


def _quietly(load):
    """Load with stderr (fd 2) captured, then write back all but the start-up noise:
    errors and anything else TensorFlow prints while loading stay visible."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            load()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = [l for l in text.splitlines(True) if not _STARTUP_NOISE.match(l)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def _quiet_tensorflow_startup():
    """Hide TensorFlow's start-up logs unless the user asked for them."""
    # 2 hides TF's own INFO and WARNING records and keeps its errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    around_import("tensorflow", _quietly)

# name -> (module, function, one-line help). The function takes argv (list of str)
# and returns an exit code.
COMMANDS = {
    "train": ("hdml_tf.training", "train_main", "train HDML or a baseline from a preset"),
    "demo": ("hdml_tf.demo", "demo_main", "Fashion-MNIST demo: HDML vs baseline"),
    "compare": ("hdml_tf.compare", "compare_main", "HDML vs baseline over seeds, with intervals"),
    "presets": ("hdml_tf.config", "presets_main", "list the training presets"),
    "export": ("hdml_tf.export", "export_main", "export the embedder as a SavedModel"),
    "embed": ("hdml_tf.serving_tools", "embed_main", "embed images with a SavedModel"),
    "search": ("hdml_tf.serving_tools", "search_main", "nearest gallery images"),
    "bench": ("hdml_tf.bench", "bench_main", "time a preset's step and pipeline here"),
    "weights": ("hdml_tf.cli", "_weights_main",
                "weights fetch|check|import: the GoogLeNet weights"),
}


def _weights_main(argv):
    if argv and argv[0] == "import":
        from hdml_tf.backbones.weights import weights_import_main

        return weights_import_main(argv[1:])
    if argv and argv[0] == "fetch":
        from hdml_tf.backbones.download import fetch_main

        return fetch_main(argv[1:], prog="hdml-tf weights fetch")
    if argv and argv[0] == "check":
        from hdml_tf.backbones.imagenet import check_main

        return check_main(argv[1:])
    print("usage: hdml-tf weights fetch bvlc_googlenet [--url MIRROR] [--cache-dir DIR]\n"
          "       hdml-tf weights check FILE\n"
          "       hdml-tf weights import FILE -o OUT.weights.h5\n"
          "       hdml-tf weights fetch URL --sha256 HEX [-o DEST]", file=sys.stderr)
    return 2


def _usage():
    lines = ["usage: hdml-tf [--verbose] <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`hdml-tf <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = os.environ.get("HDML_TF_VERBOSE", "") not in ("", "0")
    if argv and argv[0] == "--verbose":
        verbose, argv = True, argv[1:]
    if not verbose:
        _quiet_tensorflow_startup()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from hdml_tf import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"hdml-tf: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, function_name, _ = COMMANDS[name]
    function = getattr(importlib.import_module(module_name), function_name)
    return int(function(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
