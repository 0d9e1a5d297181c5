"""Non-finite values in an HDML step: the policy in one place, the skipping optimizer,
and a run that keeps skipping stopped.

`StepGuard` is the whole policy of one training step (the authors', docs/method.md,
row 4 of "Where the paper, the authors' code and hdml_tf differ"); ``HDML.train_step``
calls it at four points and is otherwise the paper's step.

`SkipNonFinite` wraps an optimizer the way Keras' ``LossScaleOptimizer`` does: its
``apply`` holds the condition (every gradient and the loss finite), the ``merge_call``
that takes it in cross-replica context under a distribution strategy, and its own
counters. A skipped step changes no weight and no slot, and puts back the BatchNorm
statistics the step's forward pass moved (``restore``), so it leaves no trace but the
counters. Its ``iterations`` count every step, applied or skipped: the training step.

`StopOnNonFinite` is a callback in the spirit of ``keras.callbacks.TerminateOnNaN``: it
raises `NonFiniteTrainingError` once an optimizer has skipped a whole window of steps
in a row, the last good checkpoint being the one to keep.
"""

import keras
import tensorflow as tf

from hdml_tf.objectives import Replicas

# The loss terms whose finiteness decides whether each objective's update is applied.
CHECKED = {"metric": ("j_m", "j_metric"), "generator": ("j_gen",), "classifier": ("j_cls",)}


class StepGuard:
    """The non-finite policy of one HDML training step.

    1. Created before the forward pass, it keeps the BatchNorm statistics each
       objective's networks will move, so that a skipped update can put them back.
    2. `global_terms`: the global value of every loss term; where J_syn is non-finite,
       J_metric = w J_m ("fallback", the authors' N-pair) or 0 ("zero_metric", their
       triplet), and the head's statistics as the real pass left them.
    3. `metric_gradient`: the gradient of J_metric = w J_m + (1 - w) J_syn with the
       J_syn part left out by value where J_syn is non-finite (a NaN never enters the
       backbone's backward pass, and no synchronisation point sits inside a
       ``tf.cond``); all of it zeroed under "zero_metric", where Adam steps on zeros.
    4. `apply`: each optimizer (a `SkipNonFinite`) applies its objective's update only
       when its terms (``CHECKED``) and gradients are finite, else skips it and puts
       back its statistics; the model's counters.

    Args:
      model: the ``hdml_tf.models.HDML`` taking the step.
    """

    def __init__(self, model):
        self.model = model
        self.before = {name: [(v, tf.identity(v)) for v in variables]
                       for name, variables in _moving_statistics(model).items()}
        self.syn_ok = tf.constant(True)

    def global_terms(self, shares, context):
        """Every term summed over replicas, J_metric as the policy has it (see
        `global_terms`); a non-finite J_syn leaves the head's moving statistics as the
        real pass left them."""
        terms, self.syn_ok = global_terms(self.model, shares, context)
        # With head_bn_updates="real" the synthetic pass's update was put back already.
        params = self.model.params
        if params.hdml and params.head_bn_updates != "real":
            self.model._put_back_head_statistics(context["head_after_real"],
                                                 unless=self.syn_ok)
        return terms

    def metric_gradient(self, tape, metric_terms, features):
        """The embedder's gradient of J_metric from its three loss-scaled terms
        (``j_m``: w (J_m - decay), ``j_syn``: (1 - w) J_syn, ``decay``: w decay), taken
        through the features y: one backward pass through the backbone."""
        embedder, syn_ok = self.model.embedder, self.syn_ok
        head = embedder.head.trainable_variables
        via_y = {k: dense_gradients(tape.gradient(metric_terms[k], [features] + head),
                                    [features] + head) for k in ("j_m", "j_syn")}
        via_y["j_syn"] = [tf.where(syn_ok, g, tf.zeros_like(g)) for g in via_y["j_syn"]]
        backbone = embedder.backbone.trainable_variables
        total = {id(v): g for v, g in zip(backbone, dense_gradients(tape.gradient(
            features, backbone, output_gradients=via_y["j_m"][0] + via_y["j_syn"][0]),
            backbone))}
        for v, g_m, g_s in zip(head, via_y["j_m"][1:], via_y["j_syn"][1:]):
            total[id(v)] = g_m + g_s
        variables = embedder.trainable_variables
        decay = dense_gradients(tape.gradient(metric_terms["decay"], variables), variables)
        grads = [total[id(v)] + g for v, g in zip(variables, decay)]
        if self.model.params.nonfinite_syn == "zero_metric":
            grads = [tf.where(syn_ok, g, tf.zeros_like(g)) for g in grads]
        return grads

    def apply(self, grads, terms):
        """Each objective's update where it is finite; returns {objective: applied}."""
        model, applied = self.model, {}
        for name, (optimizer, variables, _) in model.update_plan().items():
            checked = tf.stack([terms[k] for k in CHECKED[name] if k in terms])
            applied[name] = optimizer.apply(grads[name], variables, loss=checked,
                                            restore=self.before[name])
        clean = tf.logical_and(tf.reduce_all(list(applied.values())), self.syn_ok)
        model.nonfinite_steps.assign_add(1.0 - tf.cast(clean, tf.float32))
        if model.params.hdml:
            model.syn_fallback_steps.assign_add(1.0 - tf.cast(self.syn_ok, tf.float32))
        return applied


def global_terms(model, shares, context):
    """(every loss term summed over replicas, whether J_syn is finite); where it is
    not, J_metric = w J_m ("fallback") or 0 ("zero_metric")."""
    terms = {k: Replicas.current().sum(v) for k, v in shares.items()}
    syn_ok = tf.constant(True)
    if model.params.hdml:
        syn_ok = tf.math.is_finite(terms["j_syn"])
        fallback = context["w"] * terms["j_m"]
        if model.params.nonfinite_syn == "zero_metric":
            fallback = tf.zeros_like(fallback)  # and a zero gradient (metric_gradient)
        terms["j_metric"] = tf.where(syn_ok, terms["j_metric"], fallback)
    return terms, syn_ok


def _moving_statistics(model):
    """objective -> the BatchNorm statistics its networks move in a step."""
    moving = {"metric": list(model.embedder.non_trainable_variables)}
    if model.params.hdml:
        moving["generator"] = list(model.generator.non_trainable_variables)
        moving["classifier"] = []
    return moving


def dense_gradients(grads, variables):
    """Zeros for variables a loss does not reach (tf.where needs tensors)."""
    return [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
            for g, v in zip(grads, variables)]


class NonFiniteTrainingError(RuntimeError):
    """An update was skipped for a whole window of steps: training cannot go on."""


def all_finite(values):
    """True when every tensor of ``values`` (None entries ignored) is finite."""
    checks = [tf.reduce_all(tf.math.is_finite(v)) for v in values if v is not None]
    return tf.reduce_all(checks) if checks else tf.constant(True)


@keras.saving.register_keras_serializable(package="hdml_tf")
class SkipNonFinite(keras.optimizers.Optimizer):
    """Applies ``inner_optimizer``'s update only when the step is finite.

    A step is finite when the loss passed to :meth:`apply` is finite and, unless the
    inner optimizer is a ``LossScaleOptimizer`` (which must see an overflow to lower
    its scale, and skips that step itself), every gradient is; under a strategy, on
    every replica (the flag is all-reduced, so all replicas take the same branch).

    Attributes:
      iterations: steps seen, applied or skipped.
      skipped_steps: steps skipped here (a ``LossScaleOptimizer`` inside counts its
        own: ``iterations - skipped_steps - inner_optimizer.iterations``).
      consecutive_skips: skipped steps since the last applied one.

    Args:
      inner_optimizer: the optimizer whose updates are applied.
      name: the wrapper's name.
    """

    def __init__(self, inner_optimizer, name=None, **kwargs):
        if kwargs:
            raise ValueError(f"SkipNonFinite takes no {sorted(kwargs)}: set them on the "
                             "inner optimizer")
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner_optimizer

    def build(self, var_list):
        counter = dict(shape=(), dtype="int", initializer="zeros",
                       aggregation="only_first_replica")
        self.skipped_steps = self.add_variable(name="skipped_steps", **counter)
        self.consecutive_skips = self.add_variable(name="consecutive_skips", **counter)
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finite(self, grads, loss=None):
        """This replica's verdict on a step (before the all-reduce)."""
        checks = [all_finite([loss])]
        if not isinstance(self.inner_optimizer, keras.optimizers.LossScaleOptimizer):
            checks.append(all_finite(grads))
        return tf.reduce_all(checks)

    def apply(self, grads, trainable_variables=None, loss=None, restore=()):
        """Apply ``grads`` through the inner optimizer, or skip the step.

        Args:
          grads, trainable_variables: as ``Optimizer.apply``.
          loss: the step's (global) loss; a non-finite one skips the step.
          restore: ``(variable, value)`` pairs put back when the step is skipped (the
            BatchNorm statistics as they were before the forward pass).

        Returns:
          A boolean tensor: whether the update was applied (the same on every replica).
        """
        if not self.built:
            self.build(trainable_variables)
        ok = self.finite(grads, loss)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(ok, tf.float32))
            ok = tf.equal(bad, 0.0)
        for variable, value in restore:
            variable.assign(tf.where(ok, variable, value))
        if ctx is None or ctx.num_replicas_in_sync == 1:
            self._apply_or_count(ok, lambda: self.inner_optimizer.apply(
                grads, trainable_variables))
        else:
            # The inner update all-reduces its gradients, a synchronisation point that
            # tf.distribute does not allow inside a replica-context tf.cond.
            ctx.merge_call(self._cross_replica, args=(ok, grads, trainable_variables))
        return ok

    def _cross_replica(self, distribution, ok, grads, trainable_variables):
        def apply_each():
            distribution.extended.call_for_each_replica(
                self.inner_optimizer.apply, args=(grads, trainable_variables))

        self._apply_or_count(distribution.experimental_local_results(ok)[0], apply_each)

    def _apply_or_count(self, ok, apply_inner):
        def applied():
            apply_inner()
            self.consecutive_skips.assign(0)
            return tf.constant(True)

        def skipped():
            self.skipped_steps.assign_add(1)
            self.consecutive_skips.assign_add(1)
            return tf.constant(False)

        tf.cond(ok, applied, skipped)
        self._iterations.assign_add(1)

    def get_config(self):
        return {"name": self.name,
                "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(config.pop("inner_optimizer"),
                                                      custom_objects=custom_objects)
        return cls(inner, **config)


def skipping(optimizer):
    """``optimizer`` wrapped in `SkipNonFinite` (itself if it already is)."""
    return optimizer if isinstance(optimizer, SkipNonFinite) else SkipNonFinite(optimizer)


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training with `NonFiniteTrainingError` once a watched optimizer has skipped
    ``window`` steps in a row.

    Args:
      window: consecutive skipped steps that end the run (HDML: its window W, so a
        full window of running statistics went without a single metric update).
      optimizers: ``{name: SkipNonFinite}`` to watch (default: the model's metric
        optimizer; HDML trains on, on w J_m, while its generator keeps failing).
    """

    def __init__(self, window, optimizers=None):
        super().__init__()
        self.window, self._optimizers = int(window), optimizers
        self._last = {}  # the last logs of a batch whose updates were applied

    def on_train_batch_end(self, batch, logs=None):
        optimizers = self._optimizers or {"metric": self.model.metric_optimizer}
        runs = {name: int(opt.consecutive_skips.numpy()) for name, opt in optimizers.items()}
        if not any(runs.values()):
            self._last = dict(logs or {})
        name, run = max(runs.items(), key=lambda item: item[1])
        if run < self.window:
            return
        step = int(optimizers[name].iterations.numpy())
        shown = ", ".join(f"{label}={float(self._last[k]):.6g}" for k, label in
                          (("j_m", "J_m"), ("j_metric", "J_metric")) if k in self._last)
        raise NonFiniteTrainingError(
            f"the {name} update was non-finite for {run} steps in a row, up to step "
            f"{step}; last applied at step {step - run}"
            + (f" (epoch means then: {shown})" if shown else ""))
