"""Export the HDML embedder as a TF Serving SavedModel.

``hdml-tf export --checkpoint WORKDIR_OR_KERAS --out saved_models/NAME`` writes::

    saved_models/NAME/
      1/                                   # next free integer version
        saved_model.pb
        variables/
        assets.extra/
          tf_serving_warmup_requests       # TFRecord of PredictionLog, one per signature
          hdml_tf_metadata.json            # config, class split, metrics, versions

Only the embedder (backbone F, head H, L2 normalisation) is exported: the generator
and the classifier exist only for training. Two signatures, both returning
``embedding`` (float32, L2-normalised, shape ``(batch, embedding_dim)``):

* ``serving_default``: input ``images``, float32 ``(batch, crop, crop, 3)``, RGB in
  0-255, already resized and centre-cropped; the backbone's normalisation (e.g. Caffe
  BGR mean subtraction) runs inside the graph.
* ``serve_bytes``: input ``image_bytes``, ``tf.string`` ``(batch,)`` of encoded JPEG,
  PNG, GIF (first frame), BMP or WebP files; decoding, resizing and centre-cropping
  run inside the graph with the same ops evaluation uses
  (``hdml_tf.data.preprocess.decode_image``, ``eval_transform``, ``normalize``).

Limits (export options, stored in the metadata): a request of more than ``max_batch``
images is refused by either signature, and ``serve_bytes`` reads every image's width
and height from its header and refuses, before decoding anything, an image over
``max_pixels`` or one whose header cannot be read. The refusal is an
``INVALID_ARGUMENT`` error naming the batch index, the declared size and the limit;
the next request is served normally.

The SavedModel itself is written by ``keras.export.ExportArchive`` (one endpoint per
signature, see :func:`build_archive`). On top of it this module adds what TF Serving
deployments need: the export is written to a hidden temporary directory beside the
version directories and renamed into place only when it is complete (and, unless
``verify=False``, only after the written SavedModel has been reloaded and checked
against the Keras embedder), so TF Serving, which polls the base directory for
integer names, never sees a half-written version; the warmup file; the metadata; the
input limits and the batch-index errors.

Models trained under mixed precision are rebuilt and switched to a float32 dtype
policy before export (the weights are float32 already), so the SavedModel computes
and serves float32; models created under a distribution strategy export their plain
weights.

From Python: :func:`export_run` (what ``hdml-tf export`` does, with its report lines),
:func:`export_checkpoint` (a workdir or ``.keras`` file) and :func:`export_embedder`
(a model in memory). Where the pieces are: ``hdml_tf/serving_contract.py`` (names,
limits, ``ExportError``; outside this package because ``serving_tools`` reads what an
export writes without loading the training side), ``graph.py`` (the float32 rebuild and
the serving functions), ``publish.py`` (TF Serving's version directories, warmup,
metadata), ``sources.py`` (what an export is made from).
"""


from hdml_tf.serving_contract import (DEFAULT_MAX_BATCH, DEFAULT_MAX_PIXELS, INPUT_BYTES,
                                      INPUT_IMAGES, METADATA_FILENAME, METADATA_FORMAT,
                                      OUTPUT_EMBEDDING, SIGNATURE_BYTES, SIGNATURE_IMAGES,
                                      WARMUP_FILENAME, ExportError)
from hdml_tf.export.graph import ServingGraph, build_archive, serving_embedder
from hdml_tf.export.publish import (existing_versions, export_embedder, next_version,
                                    write_warmup)
from hdml_tf.export.sources import display_path, export_checkpoint, export_run, load_checkpoint

__all__ = ["DEFAULT_MAX_BATCH", "DEFAULT_MAX_PIXELS", "INPUT_BYTES", "INPUT_IMAGES",
           "METADATA_FILENAME", "METADATA_FORMAT", "OUTPUT_EMBEDDING", "SIGNATURE_BYTES",
           "SIGNATURE_IMAGES", "WARMUP_FILENAME", "ExportError", "ServingGraph",
           "build_archive", "display_path", "existing_versions", "export_checkpoint",
           "export_embedder", "export_run", "load_checkpoint", "next_version",
           "serving_embedder", "write_warmup"]
