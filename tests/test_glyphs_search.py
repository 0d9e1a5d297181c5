"""benchmarks/glyphs_search.py: every setting of the design trains what its row says."""

import os
import sys

import pytest

from hdml_tf.config import load_config

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import glyphs_search  # noqa: E402


@pytest.mark.parametrize("preset", sorted(glyphs_search.SPACES))
def test_each_design_row_is_the_config_trained(preset):
    space = glyphs_search.SPACES[preset]
    rows = [("baseline", s) for s in glyphs_search.baseline_settings(8, space)]
    rows += [("hdml", s) for s in glyphs_search.hdml_settings(8, space=space)]
    constants = 0
    for arm, setting in rows:
        config = load_config(preset, glyphs_search.overrides(arm, setting, 300, 1))
        m, o = config.model, config.optim
        assert m.hdml == (arm == "hdml") and config.train.seed == 1
        assert (o.lr_metric, m.l2_reg) == (float(setting["optim.lr_metric"]),
                                           float(setting["model.l2_reg"]))
        if arm == "baseline":
            continue
        # The authors' constant given: nothing fitted, whatever the preset fits.
        if "model.alpha" in setting:
            constants += 1
            assert m.lambda_start is None and m.alpha == 90.0
        else:
            assert m.lambda_start == float(setting["model.lambda_start"])
        if "model.beta" in setting:
            constants += 1
            assert m.w_start is None and m.beta == float(space["beta"])
        else:
            assert m.w_start == float(setting["model.w_start"])
    assert constants > 0


def test_a_constant_given_beside_a_fitted_start_is_an_error():
    """The mistake the search once made: α given, λ still fitted by the preset."""
    from hdml_tf.config import ConfigError
    with pytest.raises(ConfigError, match="model.alpha has no effect while "
                                          "model.lambda_start=0.2"):
        load_config("glyphs_finetune_npair", ["model.alpha=90"])
    with pytest.raises(ConfigError, match="model.w_start=none"):
        load_config("glyphs_finetune_npair", ["model.beta=1e4"])
    assert load_config("glyphs_finetune_npair",
                       ["model.alpha=90", "model.lambda_start=none"]).model.alpha == 90.0
