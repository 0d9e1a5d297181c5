"""Contract with hdml_tf.models: HDML.fit consumes npair_dataset batches as they are."""

import numpy as np
import pytest

from hdml_tf import backbones, data, models, networks


@pytest.mark.manual
@pytest.mark.slow
def test_hdml_fit_on_npair_batches():
    import keras

    train = data.load_dataset("digits", "train")
    backbone = backbones.build_backbone("inception_v1")
    ds = data.npair_dataset(train, 4, seed=0, resize=64, crop=56, preprocessing=backbone)
    model = models.HDML(networks.Embedder(backbone, embedding_dim=16),
                        num_classes=train.num_classes, loss="npair", hdml=True)
    model.compile(metric_optimizer=keras.optimizers.Adam(7e-5),
                  generator_optimizer=keras.optimizers.Adam(1e-2),
                  classifier_optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
    for key in ("j_m", "j_metric", "j_gen", "j_cls"):
        assert np.isfinite(history.history[key][-1]), key
