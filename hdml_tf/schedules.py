"""Learning-rate schedules on the global step: the number of batches trained.

Keras calls a ``LearningRateSchedule`` with the optimizer's own update count, which a
skipped update (a non-finite step, a loss-scale overflow) does not advance, so a rule
written in training steps would drift by the number of skips. The authors'
``main_npair.py`` changes its learning rate by the step of its training loop, which
counts every batch. `GlobalStepDecay` follows the model's step counter instead, once
``HDML.compile`` binds it (``bind_global_step``).
"""

import keras


@keras.saving.register_keras_serializable(package="hdml_tf")
class GlobalStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr = initial_learning_rate · factor ** (the number of boundaries b <= step).

    ``step`` is the number of batches trained before the update, so a boundary b
    changes the learning rate from the (b + 1)-th update on: the authors halve their
    ``_lr`` after the step numbered 5632 has run, and the 5633rd update uses the half.
    Bound (`bind_global_step`, done by ``HDML.compile``), the schedule reads the
    model's step counter; unbound, it follows the step Keras passes (the optimizer's
    update count).

    Args:
      initial_learning_rate: the rate before the first boundary.
      boundaries: increasing step numbers.
      factor: the multiplier at each boundary (the authors: 0.5).
    """

    def __init__(self, initial_learning_rate, boundaries, factor=0.5, name=None):
        super().__init__()
        self.initial_learning_rate = float(initial_learning_rate)
        self.boundaries = tuple(int(b) for b in boundaries)
        if list(self.boundaries) != sorted(set(self.boundaries)):
            raise ValueError(f"boundaries={boundaries!r}: must be strictly increasing")
        self.factor = float(factor)
        self.name = name
        self._global_step = None

    def bind_global_step(self, step):
        """Follow ``step`` (a scalar variable: the batches trained so far)."""
        self._global_step = step

    def __call__(self, step):
        if self._global_step is not None:
            step = self._global_step
        step = keras.ops.cast(step, "float32")
        passed = sum((keras.ops.cast(step >= float(b), "float32") for b in self.boundaries),
                     keras.ops.zeros((), "float32"))
        return self.initial_learning_rate * keras.ops.power(self.factor, passed)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "boundaries": list(self.boundaries), "factor": self.factor,
                "name": self.name}
