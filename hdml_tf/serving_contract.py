"""The serving contract of an exported model: signature, tensor and file names, the
default input limits, and the error an export raises. docs/serving.md documents it."""

import numpy as np

# Signature and tensor names: the serving contract, documented in docs/serving.md.
SIGNATURE_IMAGES = "serving_default"
SIGNATURE_BYTES = "serve_bytes"
INPUT_IMAGES = "images"
INPUT_BYTES = "image_bytes"
OUTPUT_EMBEDDING = "embedding"
WARMUP_FILENAME = "tf_serving_warmup_requests"
METADATA_FILENAME = "hdml_tf_metadata.json"
METADATA_FORMAT = "hdml_tf.export/1"

TEMP_PREFIX = ".tmp-export-"
WARMUP_MODES = ("auto", "require", "skip")
SERVING_API_HINT = ("the warmup file needs tensorflow-serving-api; install it with "
                    "`pip install --no-deps tensorflow-serving-api` (a plain install "
                    "pulls a second TensorFlow)")

# First bytes of the formats tf.io.decode_image accepts; checked before decoding so
# that the error names the batch index of the bad input (the decoders' own errors
# do not say which element of a batch failed).
MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")

# Images are resized to ~256 px before the model sees them, so no input needs many
# pixels; 50 MP still takes a 48 MP (8000 x 6000) phone photograph or an 8K frame
# (33 MP) as it comes. Decoding one costs at most 150 MB as uint8 plus 600 MB for the
# float32 copy the resize makes; a 20,000 x 20,000 PNG (400 MP, 388 KB on the wire)
# would cost 6.9 GB.
DEFAULT_MAX_PIXELS = 50_000_000
# Evaluation's batch size (hdml_tf.data.eval_dataset); clients with more images send
# several requests. Set TF Serving's --batching_parameters_file max_batch_size to at
# most this, since merged batches reach the model as one.
DEFAULT_MAX_BATCH = 128


class ExportError(RuntimeError):
    """The export could not be made; nothing was left in the output directory."""


def size_pair(size, what):
    """``(height, width)`` of an int or a pair (None stays None); ExportError else."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        return (int(size), int(size))
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return (int(size[0]), int(size[1]))
    raise ExportError(f"{what}={size!r}: expected an int or (height, width)")
