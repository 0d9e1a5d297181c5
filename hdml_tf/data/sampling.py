"""Where the batch code used to live; kept so existing imports keep working.

``hdml_tf.data.sampling`` held four ideas in one 700-line module. They now live in:

* ``hdml_tf/data/samplers.py``: the samplers (``Sampler``, ``NPairSampler``,
  ``TripletSampler``, ``AuthorsSampler``, ``MPerClassSampler``);
* ``hdml_tf/data/corrupt_images.py``: corrupt-image handling (the scan before
  sampling, naming bad files, ``strict``);
* ``hdml_tf/data/pipeline.py``: the tf.data pipelines (``training_pipeline`` and its
  ``npair_dataset`` / ``triplet_dataset`` / ``m_per_class_dataset`` layouts,
  ``eval_dataset``).

Import them from ``hdml_tf.data`` (or those modules); the names below are the same
objects.
"""

from hdml_tf.data.pipeline import (  # noqa: F401
    eval_dataset,
    m_per_class_dataset,
    npair_dataset,
    training_pipeline,
    triplet_dataset,
)
from hdml_tf.data.samplers import (  # noqa: F401
    AuthorsSampler,
    MPerClassSampler,
    NPairSampler,
    Sampler,
    TripletSampler,
)
