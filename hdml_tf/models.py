"""HDML: the trainer that combines the embedder, the generator and the classifier.

``HDML.train_step`` is the Keras guide's GAN ``train_step`` with three objectives: one
forward pass computes every term (``_forward``, a straight line through the pieces in
:mod:`hdml_tf.objectives`), one gradient per objective, then each optimizer applies
its own. What a non-finite value does is decided in one place,
:class:`hdml_tf.nonfinite.StepGuard`, which the step calls at four points (before the
forward pass, on the loss terms, on the metric gradient, to apply the updates).

Names follow the paper and ``docs/method.md``: y (backbone features), z (embeddings),
``y_prime`` (reconstructions y' of the real rows), ``y_tilde`` / ``z_tilde`` (the
synthetic tuple mapped back to feature space and re-embedded), ``j_avg`` /
``j_gen_avg`` (the running statistics that drive λ and w).

Batches are nested so that ``tf.distribute`` splits them pair-wise:
  N-pair:  ``((anchors, positives), (anchor_labels, positive_labels))``
  triplet: ``((anchors, positives, negatives), (anchor_labels, positive_labels,
  negative_labels))``
(``hdml_tf.data.pipeline`` produces exactly these).

Under a distribution strategy each replica embeds its share of the batch; N-pair
embeddings and labels are gathered across replicas (``all_gather``) so the in-batch
negatives are those of the global batch, each replica's loss is its contribution to the
global loss, and gradients summed over replicas equal the single-device gradients.

Reference: Zheng et al., "Hardness-Aware Deep Metric Learning", CVPR 2019, Sec. 3;
the authors' TF1 code (``main_npair.py``, ``lib/HDML.py``).
"""

import keras
import tensorflow as tf

from hdml_tf import losses as losses_lib
from hdml_tf import nonfinite, objectives, synthesis
from hdml_tf.networks import Generator
from hdml_tf.params import DEFAULT_LEARNING_RATES, HDMLParams, tuple_size

_KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")
_NORM_NAMES = ("gamma", "beta")
OBJECTIVES = ("metric", "generator", "classifier")


def _check(params, num_classes):
    params.check()
    if int(num_classes) < 2:
        raise ValueError(f"num_classes={num_classes!r}: need at least 2 classes")


class _Window:
    """A running statistic of the model (J_avg or J_gen_avg): its published mean and
    the window being filled, as model weights (saved with the model)."""

    def __init__(self, model, name, initial):
        def weight(suffix, value):
            return model.add_weight(shape=(), initializer=keras.initializers.Constant(value),
                                    trainable=False, aggregation="mean", dtype="float32",
                                    name=f"{name}{suffix}")

        self.mean = weight("", initial)
        self.total, self.count = weight("_window_sum", 0.0), weight("_window_count", 0.0)
        self.published = weight("_windows", 0.0)  # complete windows so far

    def record(self, value, applied, window):
        """Record one step's value; returns whether it completed the first window."""
        kept = tf.logical_and(applied, tf.math.is_finite(value))
        full = self.count + tf.cast(kept, tf.float32) >= float(window)
        total, count, mean = synthesis.window_update(self.total, self.count, self.mean,
                                                     value, applied, window)
        for variable, new in ((self.total, total), (self.count, count), (self.mean, mean)):
            variable.assign(new)
        self.published.assign_add(tf.cast(full, tf.float32))
        return tf.logical_and(full, tf.equal(self.published, 1.0))


@keras.saving.register_keras_serializable(package="hdml_tf")
class HDML(keras.Model):
    """Hardness-Aware Deep Metric Learning around an `hdml_tf.networks.Embedder`.

      ====================  ==============  ==============================
      objective             optimizer       variables
      ====================  ==============  ==============================
      J_metric (``metric``)  metric          embedder (backbone F, head H)
      J_gen (``generator``)  generator       generator G
      J_cls (``classifier``) classifier      classifier C
      ====================  ==============  ==============================

    Non-finite values (`hdml_tf.nonfinite.StepGuard`, ``docs/method.md``): a non-finite
    J_syn falls back to J_metric = w J_m for that step (``syn_fallback_steps``); a
    non-finite loss or gradient skips that objective's update (its optimizer counts
    it). Add
    `hdml_tf.nonfinite.StopOnNonFinite` to ``fit``'s callbacks to stop a run whose
    metric update keeps being skipped.

    Args:
      embedder: the `Embedder` (F and H); ``model.embedder`` is what gets exported.
      num_classes: number of outputs of the softmax classifier C.
      synchronized_bn: synchronise G's BatchNorm across replicas.
      **kwargs: the fields of `hdml_tf.params.HDMLParams` (the method's
        hyper-parameters, documented and defaulted there; ``model.params``), and
        ``keras.Model``'s own (``name``, ``dtype``).
    """

    def __init__(self, embedder, num_classes, synchronized_bn=False, **kwargs):
        params = HDMLParams(**{k: kwargs.pop(k) for k in HDMLParams.names() if k in kwargs})
        kwargs.setdefault("name", "hdml")
        super().__init__(**kwargs)
        _check(params, num_classes)
        self.params = params
        self.variant = objectives.variant(params.loss, l2_reg=params.l2_reg,
                                        margin=params.margin)
        self.embedder = embedder
        self.num_classes = int(num_classes)
        self.synchronized_bn = bool(synchronized_bn)
        self.generator = Generator(embedder.feature_dim, params.generator_hidden,
                                   synchronized_bn=self.synchronized_bn, name="generator",
                                   dtype=self.dtype_policy)
        # The authors' extra output (labels from 1) is the last one: never a target.
        self.classifier = keras.layers.Dense(
            self.num_classes + int(params.classifier_extra_class), name="classifier",
            dtype=self.dtype_policy)
        # Set by `compile`; one per objective, each over its own variables.
        self.metric_optimizer = self.generator_optimizer = self.classifier_optimizer = None
        self.j_avg_window = _Window(self, "j_avg", params.j_avg_init)
        self.j_gen_window = _Window(self, "j_gen_avg", params.j_gen_avg_init)
        # α and β as the schedule uses them: as given, or fitted at the end of the first
        # window (``lambda_start``, ``w_start``); weights, so a resumed run keeps them.
        self.alpha, self.beta = (
            self.add_weight(name=name, shape=(), trainable=False, aggregation="mean",
                            initializer=keras.initializers.Constant(value), dtype="float32")
            for name, value in (("alpha", params.alpha), ("beta", params.beta)))
        counter = dict(shape=(), initializer="zeros", trainable=False, aggregation="mean",
                       dtype="float32")
        self.nonfinite_steps = self.add_weight(name="nonfinite_steps", **counter)
        self.syn_fallback_steps = self.add_weight(name="syn_fallback_steps", **counter)
        self.last_hardened_fraction = self.add_weight(name="last_hardened_fraction", **counter)
        names = ["j_m", "weight_decay"]
        if params.hdml:
            names += ["j_syn", "j_metric", "j_recon", "j_soft", "j_gen", "j_cls",
                      "lambda", "w", "hardened_fraction"]
        self._trackers = {n: keras.metrics.Mean(name=n) for n in names}

    @property
    def j_avg(self):
        return self.j_avg_window.mean

    @property
    def j_gen_avg(self):
        return self.j_gen_window.mean

    # ------------------------------------------------------------ train / test

    def train_step(self, data):
        self.build_from_data(data)  # fit on an unbuilt model: before any tf.cond
        guard = nonfinite.StepGuard(self)  # the non-finite policy, in one place
        with tf.GradientTape(persistent=True) as tape:
            shares, context = self._forward(data, training=True)
            losses = self._objective_losses(shares, context)
        terms = guard.global_terms(shares, context)
        grads = self._gradients(tape, losses, context, guard)
        del tape
        applied = guard.apply(grads, terms)
        self._update_statistics(terms, context, applied)
        return self._update_trackers(terms, context)

    def test_step(self, data):
        self.build_from_data(data)
        shares, context = self._forward(data, training=False)
        terms, _ = nonfinite.global_terms(self, shares, context)
        return self._update_trackers(terms, context)

    # ------------------------------------------------------------------ forward

    def _forward(self, data, training):
        """One forward pass: every loss term, as this replica's contribution.

        Returns (shares, context): ``shares[k]`` summed over replicas is the global
        value of term k; ``context`` holds λ, w, the features y and the head's moving
        statistics as the real pass left them.
        """
        images, labels = self._unpack(data)
        replicas = objectives.Replicas.current()
        p = self.params
        # [embed] one backbone pass over every image of the tuple.
        y = self.embedder.features(tf.concat(images, axis=0), training=training)
        head_bn = self.embedder.head.bn
        prestep = None  # the head's statistics before the step (head_bn_updates)
        if p.hdml and training and p.head_bn_updates == "prestep":
            prestep = [tf.identity(v) for v in (head_bn.moving_mean, head_bn.moving_variance)]
        z = tf.cast(self.embedder.head(y, training=training), tf.float32)
        real = self.variant.real_tuple(tf.split(z, [tf.shape(x)[0] for x in images]),
                                       labels, replicas)
        # [J_m] the metric loss on the real tuple, with weight decay.
        out = {"weight_decay": replicas.share(self._weight_decay())}
        out["j_m"] = self.variant.metric_loss(real, replicas) + out["weight_decay"]
        if not p.hdml:
            out["j_metric"] = out["j_m"]
            return out, {}
        head_after_real = [tf.identity(v) for v in self.embedder.head.non_trainable_variables]
        lam, w = self.schedule()
        context = {"features": y, "lam": lam, "w": w}
        # [synthesis] hardness-aware negatives in embedding space.
        synthetic = self.variant.synthesize(real, lam)
        out["hardened_fraction"] = replicas.share(synthetic.hardened)
        # [generator] one pass over real and synthetic rows (shared BN statistics).
        num_real = tf.shape(z)[0]
        y_gen = tf.cast(self.generator(tf.concat([z, synthetic.rows], axis=0),
                                       training=training), tf.float32)
        # tf.split, not slicing: its gradient is one concat, where two slices' gradients
        # are two zero-padded copies of the whole (4,288 x 256 at P = 64) summed.
        y_prime, y_tilde = tf.split(y_gen, tf.stack([num_real, tf.shape(synthetic.rows)[0]]))
        # [J_syn] the synthetic tuple re-embedded by the SAME head.
        z_tilde = tf.cast(self.embedder.head(y_tilde, training=training), tf.float32)
        self._after_synthetic_head_pass(prestep, head_after_real, training)
        out["j_syn"] = self.variant.synthetic_loss(z_tilde, synthetic, replicas)
        out["j_metric"] = w * out["j_m"] + (1.0 - w) * out["j_syn"]
        # [J_gen] reconstruction (a sum) plus label preservation of the synthetic rows.
        out["j_recon"] = (1.0 - p.lambda_gen) * tf.reduce_sum(tf.square(y_prime - y))
        ce_soft = self.variant.label_ce(self.classifier(y_tilde), synthetic, replicas)
        out["j_soft"] = p.softmax_factor * p.lambda_gen * ce_soft
        out["j_gen"] = out["j_recon"] + out["j_soft"]
        # [J_cls] the classifier on real features.
        logits_real = self.classifier(y)
        out["j_cls"] = replicas.share(tf.reduce_mean(
            losses_lib.softmax_ce(tf.concat(labels, axis=0), logits_real)))
        context["head_after_real"] = head_after_real
        return out, context

    def _after_synthetic_head_pass(self, prestep, after_real, training):
        """What the synthetic pass leaves of the head's moving statistics
        (``head_bn_updates``): "real" puts back what the real pass left (the synthetic
        pass normalised with its own batch's statistics; inference, the only reader of
        the moving ones, sees real images), "prestep" re-bases its update on the
        pre-step value, "sequential" keeps Keras' update."""
        if prestep is not None:
            _second_update_from_prestep(self.embedder.head.bn, prestep, after_real)
        elif training and self.params.head_bn_updates == "real":
            self._put_back_head_statistics(after_real)

    def _put_back_head_statistics(self, values, unless=None):
        """Set the head's moving statistics to ``values`` (where ``unless`` is false)."""
        for variable, value in zip(self.embedder.head.non_trainable_variables, values):
            variable.assign(value if unless is None else tf.where(unless, variable, value))

    def _objective_losses(self, shares, context):
        """Each objective's loss as its optimizer differentiates it (loss-scaled).

        With HDML on, the metric loss comes in three terms (``j_m``: w (J_m - decay),
        ``j_syn``: (1 - w) J_syn, ``decay``: w decay) so that the step's guard can leave
        a non-finite J_syn out by value (`hdml_tf.nonfinite.StepGuard.metric_gradient`).
        """
        losses = {name: optimizer.scale_loss(shares[term])
                  for name, (optimizer, _, term) in self.update_plan().items()}
        if self.params.hdml:
            w, scale = context["w"], self.metric_optimizer.scale_loss
            losses["metric"] = {"j_m": scale(w * (shares["j_m"] - shares["weight_decay"])),
                                "j_syn": scale((1.0 - w) * shares["j_syn"]),
                                "decay": scale(w * shares["weight_decay"])}
        return losses

    def _gradients(self, tape, losses, context, guard):
        """One gradient per objective, before any update; the metric one from its
        three terms, by the step's non-finite ``guard``."""
        grads = {name: nonfinite.dense_gradients(tape.gradient(losses[name], variables),
                                                 variables)
                 for name, (_, variables, _) in self.update_plan().items()
                 if not isinstance(losses[name], dict)}
        if self.params.hdml:
            grads["metric"] = guard.metric_gradient(tape, losses["metric"],
                                                    context["features"])
        return grads

    # --------------------------------------------------- statistics and logs

    def _update_statistics(self, terms, context, applied):
        if self.params.hdml:
            self.last_hardened_fraction.assign(terms["hardened_fraction"])
            self.record_statistics(terms["j_m"], terms["j_gen"], context["w"],
                                   applied["metric"], applied["generator"])

    def record_statistics(self, j_m, j_gen, w, metric_applied=True, generator_applied=True):
        """Add one step's values to the windows of J_avg and J_gen_avg (docs/method.md,
        "One training step", step 11), and fit α and β when the first window completes
        (``lambda_start``, ``w_start``).

        ``train_step`` calls it after every step; ``tests/test_authors_parity.py``
        drives it with a sequence of losses beside the authors' ``data_collector``.

        Args:
          j_m: the step's J_m with weight decay, not weighted; w J_m is recorded
            (``record_weighted_jm``, the J_m the authors fetch), else J_m.
          j_gen: the step's J_gen; w: the w the step used.
          metric_applied, generator_applied: whether the step's metric / generator
            update was applied. Only applied steps with a finite value are recorded
            (the authors' ``data_collector`` drops NaN).
        """
        p = self.params
        j_m = j_m * w if p.record_weighted_jm else j_m
        for window, value, applied, constant, start in (
                (self.j_avg_window, j_m, metric_applied, self.alpha, p.lambda_start),
                (self.j_gen_window, j_gen, generator_applied, self.beta, p.w_start)):
            first = window.record(tf.cast(value, tf.float32), applied, p.window)
            if start is not None:
                # exp(-constant / J_1) = start at the first window's mean J_1.
                fitted = -tf.maximum(window.mean, 1e-12) * tf.math.log(start)
                constant.assign(tf.where(first, fitted, constant))

    def _update_trackers(self, terms, context):
        """Epoch means of the finite values (one bad step does not make them NaN)."""
        values = dict(terms)
        if self.params.hdml:
            values.update({"lambda": context["lam"], "w": context["w"]})
        for name, tracker in self._trackers.items():
            if name in values:
                value = tf.cast(values[name], tf.float32)
                finite = tf.math.is_finite(value)
                tracker.update_state(tf.where(finite, value, 0.0),
                                     sample_weight=tf.cast(finite, tf.float32))
        return self.logs()

    def logs(self):
        """What `train_step` returns, read from the model's state: the trackers'
        means, the running statistics and the non-finite counters."""
        logs = {name: t.result() for name, t in self._trackers.items()}
        logs["nonfinite_steps"] = tf.identity(self.nonfinite_steps)
        if self.params.hdml:
            logs.update(j_avg=tf.identity(self.j_avg), j_gen_avg=tf.identity(self.j_gen_avg))
            logs.update({f"{name}_skipped_steps": tf.cast(opt.skipped_steps, tf.float32)
                         for name, opt in self.skipping_optimizers().items()})
            logs["syn_fallback_steps"] = tf.identity(self.syn_fallback_steps)
        return logs

    def schedule(self):
        """(λ, w) the next step uses, from the running statistics."""
        return (synthesis.hardness_lambda(self.j_avg, self.alpha),
                synthesis.metric_weight(self.j_gen_avg, self.beta))

    def statistics(self):
        """Current running statistics and counters as Python numbers (logs and tests)."""
        lam, w = self.schedule()
        stats = {
            "j_avg": float(self.j_avg.numpy()),
            "j_gen_avg": float(self.j_gen_avg.numpy()),
            "lambda": float(lam),
            "w": float(w),
            "alpha": float(self.alpha.numpy()),
            "beta": float(self.beta.numpy()),
            "j_avg_windows": int(self.j_avg_window.published.numpy()),
            "j_gen_avg_windows": int(self.j_gen_window.published.numpy()),
            "nonfinite_steps": int(self.nonfinite_steps.numpy()),
            "syn_fallback_steps": int(self.syn_fallback_steps.numpy()),
            "hardened_fraction": float(self.last_hardened_fraction.numpy()),
        }
        for name, optimizer in self.skipping_optimizers().items():
            stats[f"{name}_skipped_steps"] = int(optimizer.skipped_steps.numpy())
            inner = optimizer.inner_optimizer
            # A LossScaleOptimizer skips an overflowing step itself; its iterations
            # count only the steps it applied.
            if isinstance(inner, keras.optimizers.LossScaleOptimizer):
                stats[f"{name}_loss_scale_skips"] = int(
                    optimizer.iterations.numpy() - optimizer.skipped_steps.numpy()
                    - inner.iterations.numpy())
        return stats

    # ------------------------------------------------------------ updates

    def update_plan(self):
        """name -> (optimizer, variables, loss term): which optimizer applies which
        objective's gradient to which variables (docs/method.md, step 10)."""
        result = {"metric": (self.metric_optimizer, self.embedder.trainable_variables,
                             "j_metric")}
        if self.params.hdml:
            result["generator"] = (self.generator_optimizer,
                                   self.generator.trainable_variables, "j_gen")
            result["classifier"] = (self.classifier_optimizer,
                                    self.classifier.trainable_variables, "j_cls")
        return result

    def skipping_optimizers(self):
        """name -> the `SkipNonFinite` optimizer of each objective."""
        return {name: optimizer for name, (optimizer, _, _) in self.update_plan().items()}

    def decayed_variables(self):
        """The embedder variables weight decay applies to (``weight_decay_scope``)."""
        names = [(v, v.name.split("/")[-1].split(":")[0])
                 for v in self.embedder.trainable_variables]
        if self.params.weight_decay_scope == "kernels":
            return [v for v, name in names if name in _KERNEL_NAMES]
        # The authors' exclude_batch_norm: everything but the normalisation layers'
        # scale and offset (gamma, beta), biases included.
        return [v for v, name in names if name not in _NORM_NAMES]

    def _weight_decay(self):
        if not self.params.weight_decay:
            return tf.constant(0.0)
        return self.params.weight_decay * tf.add_n(
            [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in self.decayed_variables()])

    # ----------------------------------------------------------------- building

    def build(self, input_shape):
        """Build F, H, G and C for image batches of ``input_shape`` (or a tuple of
        them, as in a training batch); once compiled, the optimizers too."""
        image_shape = input_shape
        while isinstance(image_shape, (list, tuple)) and image_shape and isinstance(
                image_shape[0], (list, tuple)):
            image_shape = image_shape[0]
        image_shape = (None,) + tuple(image_shape[1:])
        if not self.embedder.built:
            self.embedder.build(image_shape)
        if not self.generator.built:
            self.generator.build((None, self.embedder.embedding_dim))
        if not self.classifier.built:
            self.classifier.build((None, self.embedder.feature_dim))
        self._image_shape = tuple(image_shape)
        self.built = True
        self.build_optimizers()

    @property
    def image_shape(self):
        """``(None, height, width, channels)`` of the images the model was built for
        (None before it is built)."""
        return getattr(self, "_image_shape", None)

    def build_optimizers(self):
        """Build each optimizer over its own variables (`update_plan`).

        A no-op until the model is both built and compiled: `build` and `compile` both
        call it, so whichever comes second builds the optimizers, before any state is
        loaded into them and outside the train step's ``tf.cond``.
        """
        if not self.built or not self.compiled:
            return
        for optimizer, variables, _ in self.update_plan().values():
            if not optimizer.built:
                optimizer.build(variables)

    def build_from_data(self, data):
        """Build the model (and the optimizers, if compiled) from a batch or dataset."""
        if self.built:
            return
        if isinstance(data, tf.data.Dataset):
            shape = tf.nest.flatten(data.element_spec[0])[0].shape
        else:
            shape = tf.nest.flatten(data[0] if isinstance(data, (list, tuple)) else data)[0].shape
        self.build((None,) + tuple(shape[1:]))

    def compile(self, metric_optimizer=None, generator_optimizer=None,
                classifier_optimizer=None, **kwargs):
        """Three optimizers, each over its own variables only (`update_plan`).

        As in the Keras guide's GAN: Keras is compiled without an optimizer and the
        three optimizers are attributes, each wrapped in
        `hdml_tf.nonfinite.SkipNonFinite` (a non-finite step skips that update).

        Args:
          metric_optimizer: J_metric over F and H (default Adam(7e-5), the authors').
          generator_optimizer: J_gen over G (default Adam(1e-2)).
          classifier_optimizer: J_cls over C (default Adam(1e-3)).
          **kwargs: passed to ``keras.Model.compile`` (e.g. ``jit_compile``,
            ``steps_per_execution``); ``loss``/``optimizer`` are not accepted.
        """
        for key in ("loss", "optimizer"):
            if key in kwargs:
                raise ValueError(f"HDML.compile() does not take {key!r}: the losses are "
                                 "fixed by the method; pass the three optimizers")
        given = {"metric": metric_optimizer, "generator": generator_optimizer,
                 "classifier": classifier_optimizer}
        for name, optimizer in given.items():
            optimizer = keras.optimizers.get(
                optimizer or keras.optimizers.Adam(DEFAULT_LEARNING_RATES[name]))
            setattr(self, f"{name}_optimizer", nonfinite.skipping(optimizer))
        for name in OBJECTIVES:  # a schedule on the step: the metric optimizer's count
            _bind_global_step(getattr(self, f"{name}_optimizer"),
                              self.metric_optimizer.iterations)
        super().compile(optimizer=None, **kwargs)
        self._compile_kwargs = {k: v for k, v in kwargs.items()
                                if k in ("jit_compile", "steps_per_execution", "run_eagerly")}
        self.build_optimizers()

    def get_compile_config(self):
        if not self.compiled:
            return {}
        config = {f"{name}_optimizer": keras.saving.serialize_keras_object(
            getattr(self, f"{name}_optimizer")) for name in OBJECTIVES}
        config.update(getattr(self, "_compile_kwargs", {}))
        return config

    def compile_from_config(self, config):
        config = dict(config)
        for name in OBJECTIVES:
            key = f"{name}_optimizer"
            config[key] = keras.saving.deserialize_keras_object(config[key])
        self.compile(**config)

    @property
    def metrics(self):
        # Listed here so Keras resets them at the start of every epoch.
        return list(self._trackers.values())

    def call(self, inputs, training=False):
        """Normalised embeddings of an image batch (or of a training tuple's images)."""
        if isinstance(inputs, (list, tuple)):
            inputs = tf.concat(list(inputs), axis=0)
        return self.embedder(inputs, training=training)

    def _unpack(self, data):
        # train_on_batch(x=batch) and fit on (x, y) datasets both arrive here: Keras
        # packs the former as (batch, None, None).
        if (isinstance(data, (list, tuple)) and len(data) >= 2 and data[1] is None
                and isinstance(data[0], (list, tuple)) and len(data[0]) == 2):
            data = data[0]
        expected = tuple_size(self.params.loss)
        images, labels = (data[0], data[1]) if (
            isinstance(data, (list, tuple)) and len(data) >= 2) else (None, None)
        if (not isinstance(images, (list, tuple)) or len(images) != expected
                or not isinstance(labels, (list, tuple)) or len(labels) != expected):
            layout = ("((anchors, positives), (anchor_labels, positive_labels))"
                      if expected == 2 else
                      "((anchors, positives, negatives), (anchor_labels, positive_labels,"
                      " negative_labels))")
            raise ValueError(f"loss={self.params.loss!r} expects batches laid out as "
                             f"{layout}; see hdml_tf.data.pipeline")
        labels = [tf.cast(tf.reshape(l, [-1]), tf.int32) for l in labels]
        return list(images), labels

    # ---------------------------------------------------- inspection (public API)

    def _keep_statistics(self, fn):
        """Run ``fn`` in training mode and put every BatchNorm statistic back after."""
        variables = [v for v in self.variables if not v.trainable]
        saved = [tf.identity(v) for v in variables]
        try:
            return fn()
        finally:
            for variable, value in zip(variables, saved):
                variable.assign(value)

    def loss_terms(self, batch, training=True):
        """Every loss term of ``batch`` as Python floats, without taking a step.

        Computed as a training step would (batch statistics when ``training``, the
        current λ and w) but no weight, optimizer state, running statistic or
        BatchNorm statistic changes. Keys: ``j_m`` (J_m with weight decay),
        ``weight_decay``, and with HDML ``j_syn``, ``j_metric``, ``j_recon``,
        ``j_soft``, ``j_gen``, ``j_cls``, ``hardened_fraction``, ``lambda``, ``w``.
        """
        self.build_from_data(batch)

        def run():
            shares, context = self._forward(batch, training=training)
            values = {k: float(v) for k, v in shares.items()}
            if self.params.hdml:
                values.update({"lambda": float(context["lam"]), "w": float(context["w"])})
            return values

        return self._keep_statistics(run)

    def objective_gradients(self, batch):
        """The three objectives' gradients at the current weights, without a step.

        Returns ``{"metric" | "generator" | "classifier": [(gradient, variable), ...]}``
        (unscaled; the J_syn fallback applies as in a step). No weight, optimizer state
        or statistic changes.
        """
        self.build_from_data(batch)

        def run():
            guard = nonfinite.StepGuard(self)
            with tf.GradientTape(persistent=True) as tape:
                shares, context = self._forward(batch, training=True)
                losses = self._objective_losses(shares, context)
            guard.global_terms(shares, context)
            grads = self._gradients(tape, losses, context, guard)
            return {name: list(zip(grads[name], variables))
                    for name, (_, variables, _) in self.update_plan().items()}

        return self._keep_statistics(run)

    # ------------------------------------------------------------------ saving

    def get_config(self):
        config = super().get_config()
        config.update(embedder=keras.saving.serialize_keras_object(self.embedder),
                      num_classes=self.num_classes, synchronized_bn=self.synchronized_bn,
                      **self.params.hdml_kwargs())
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedder"] = keras.saving.deserialize_keras_object(config["embedder"])
        return cls(**config)

    def get_build_config(self):
        shape = self.image_shape
        return {"input_shape": list(shape)} if shape is not None else {}

    def build_from_config(self, config):
        if config.get("input_shape"):
            self.build(tuple(config["input_shape"]))


def _bind_global_step(optimizer, step):
    """Let a learning-rate schedule that follows the step (`hdml_tf.schedules`) read
    ``step`` (the batches trained, skipped ones included) instead of its optimizer's
    update count, which a skipped update does not advance."""
    while optimizer is not None:
        schedule = getattr(optimizer, "_learning_rate", None)
        if hasattr(schedule, "bind_global_step"):
            schedule.bind_global_step(step)
        optimizer = getattr(optimizer, "inner_optimizer", None)


def _second_update_from_prestep(bn, prestep, after_real):
    """Re-base the second of a step's two updates of ``bn``'s statistics on the
    pre-step value (``head_bn_updates="prestep"``).

    Keras moved them one after the other: after_syn = m after_real + (1 - m) b_syn.
    Adding (1 - m)(after_real - prestep) gives prestep + (1 - m)(b_real - prestep) +
    (1 - m)(b_syn - prestep): both updates computed from the pre-step value, both
    applied. ``prestep`` and ``after_real`` are [moving_mean, moving_variance] values.
    """
    rate = 1.0 - bn.momentum
    for variable, before, real in zip((bn.moving_mean, bn.moving_variance), prestep,
                                      after_real):
        variable.assign(variable + rate * (real - before))
