"""``python -m hdml_tf``: the ``hdml-tf`` command (see ``hdml_tf_entry``)."""

import sys

import hdml_tf_entry

sys.exit(hdml_tf_entry.main())
