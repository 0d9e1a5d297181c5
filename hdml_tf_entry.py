"""The ``hdml-tf`` command's entry point: ``--verbose``, then ``hdml_tf.cli.main``.

It sits beside the ``hdml_tf`` package, not in it, on purpose: ``import hdml_tf``
imports TensorFlow with its start-up lines kept off stderr (``hdml_tf.tf_startup``), so
``hdml-tf --verbose <command>`` must set ``HDML_TF_VERBOSE=1`` before the package is
imported for those lines to show. ``python -m hdml_tf`` comes here too, after the
package has been imported: there only ``HDML_TF_VERBOSE=1`` shows them.
"""

import os
import sys


def main(argv=None):
    """``hdml-tf``: honour ``--verbose``, then run the command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--verbose"]:
        os.environ["HDML_TF_VERBOSE"] = "1"  # read by `import hdml_tf` (tf_startup)
    from hdml_tf import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
