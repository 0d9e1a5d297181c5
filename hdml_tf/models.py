"""The HDML model: embedder (backbone + head), generator, classifier and train_step.

Names follow the paper and ``HDML_SPEC.md``: y (backbone features), z (embeddings),
``y_prime`` (reconstructions y' of the real rows), ``y_tilde`` / ``z_tilde`` (the
synthetic tuple mapped back to feature space and re-embedded), ``j_avg`` /
``j_gen_avg`` (the running statistics that drive λ and w).

Batches are nested so that ``tf.distribute`` splits them pair-wise:
  N-pair:  ``((anchors, positives), (anchor_labels, positive_labels))``
  triplet: ``((anchors, positives, negatives), (anchor_labels, positive_labels,
  negative_labels))``
(``hdml_tf.data.sampling`` produces exactly these).

Under a distribution strategy each replica embeds its share of the batch; N-pair
embeddings and labels are gathered across replicas (``all_gather``) so the in-batch
negatives are those of the global batch, each replica's loss is its contribution to the
global loss, and gradients summed over replicas equal the single-device gradients.

Reference: Zheng et al., "Hardness-Aware Deep Metric Learning", CVPR 2019, Sec. 3;
the authors' TF1 code (``main_npair.py``, ``lib/HDML.py``).
"""

import keras
import tensorflow as tf

import hdml_tf.backbones  # noqa: F401  (registers the serialisable backbones for loading)
from hdml_tf import losses as losses_lib
from hdml_tf import synthesis

_KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")


# ------------------------------------------------------------------- sub-networks


@keras.saving.register_keras_serializable(package="hdml_tf")
class EmbeddingHead(keras.layers.Layer):
    """H: BatchNorm over the backbone features, then Dense(embedding_dim), no activation.

    Args:
      embedding_dim: d (spec: 128 Cars196, 256 CUB, 512 SOP).
      synchronized_bn: synchronise BatchNorm statistics across replicas.
    """

    def __init__(self, embedding_dim, synchronized_bn=False, **kwargs):
        super().__init__(**kwargs)
        self.embedding_dim = int(embedding_dim)
        self.synchronized_bn = bool(synchronized_bn)
        # Sub-layers follow this layer's dtype policy, so a mixed-precision model
        # reloads as one.
        policy = self.dtype_policy
        self.bn = keras.layers.BatchNormalization(synchronized=synchronized_bn, name="bn",
                                                  dtype=policy)
        self.fc = keras.layers.Dense(self.embedding_dim, name="fc", dtype=policy)

    def build(self, input_shape):
        if not self.bn.built:
            self.bn.build(input_shape)
        if not self.fc.built:
            self.fc.build(input_shape)

    def call(self, features, training=None):
        return self.fc(self.bn(features, training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.embedding_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(embedding_dim=self.embedding_dim, synchronized_bn=self.synchronized_bn)
        return config


@keras.saving.register_keras_serializable(package="hdml_tf")
class Generator(keras.layers.Layer):
    """G: Dense(hidden) -> ReLU -> BatchNorm -> Dense(feature_dim), from R^d to R^1024.

    Args:
      feature_dim: output size, the backbone's feature size (1024 for GoogLeNet).
      hidden_units: 512 in the paper.
    """

    def __init__(self, feature_dim=1024, hidden_units=512, synchronized_bn=False, **kwargs):
        super().__init__(**kwargs)
        self.feature_dim = int(feature_dim)
        self.hidden_units = int(hidden_units)
        self.synchronized_bn = bool(synchronized_bn)
        policy = self.dtype_policy
        self.fc1 = keras.layers.Dense(self.hidden_units, activation="relu", name="fc1",
                                      dtype=policy)
        self.bn = keras.layers.BatchNormalization(synchronized=synchronized_bn, name="bn",
                                                  dtype=policy)
        self.fc2 = keras.layers.Dense(self.feature_dim, name="fc2", dtype=policy)

    def build(self, input_shape):
        hidden_shape = tuple(input_shape[:-1]) + (self.hidden_units,)
        for layer, shape in ((self.fc1, input_shape), (self.bn, hidden_shape),
                             (self.fc2, hidden_shape)):
            if not layer.built:
                layer.build(shape)

    def call(self, z, training=None):
        return self.fc2(self.bn(self.fc1(z), training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.feature_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(feature_dim=self.feature_dim, hidden_units=self.hidden_units,
                      synchronized_bn=self.synchronized_bn)
        return config


def _feature_dim(backbone):
    dim = getattr(backbone, "feature_dim", None)
    if dim is None:
        dim = backbone.output_shape[-1]
    return int(dim)


@keras.saving.register_keras_serializable(package="hdml_tf")
class Embedder(keras.Model):
    """F then H: images -> embeddings, L2-normalised unless ``normalize=False``.

    This is the model that is evaluated and exported. Training uses the raw z
    (``embed_raw``); evaluation and serving use the normalised output of ``call``.

    Args:
      backbone: a keras.Model from preprocessed images (batch, H, W, 3) to pooled
        features (batch, feature_dim), e.g. ``hdml_tf.backbones.build_backbone(...)``.
      embedding_dim: d.
      normalize: L2-normalise the output of ``call``.
      synchronized_bn: synchronise the head's BatchNorm across replicas.
      preprocessing: the input normalisation the backbone expects (a
        ``hdml_tf.data.preprocess.normalize`` mode); defaults to
        ``backbone.preprocessing``.
    """

    def __init__(self, backbone, embedding_dim=128, normalize=True, synchronized_bn=False,
                 preprocessing=None, **kwargs):
        kwargs.setdefault("name", "embedder")
        super().__init__(**kwargs)
        self.backbone = backbone
        self.embedding_dim = int(embedding_dim)
        self.normalize = bool(normalize)
        self.feature_dim = _feature_dim(backbone)
        # Kept in the config: a keras.applications backbone loses its Python
        # attributes when saved and loaded.
        self.preprocessing = preprocessing or getattr(backbone, "preprocessing", "none")
        self.head = EmbeddingHead(self.embedding_dim, synchronized_bn=synchronized_bn,
                                  name="head", dtype=self.dtype_policy)

    def build(self, input_shape):
        if not self.backbone.built:
            self.backbone.build(input_shape)
        if not self.head.built:
            self.head.build((None, self.feature_dim))
        self.built = True

    def features(self, images, training=False):
        """y = F(x) as float32 (mixed-precision backbones compute in float16)."""
        return tf.cast(self.backbone(images, training=training), tf.float32)

    def embed_raw(self, images, training=False):
        """z = H(F(x)), not normalised: what the metric losses see."""
        return tf.cast(self.head(self.features(images, training), training=training),
                       tf.float32)

    def call(self, images, training=False):
        z = self.embed_raw(images, training=training)
        return tf.math.l2_normalize(z, axis=-1) if self.normalize else z

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=keras.saving.serialize_keras_object(self.backbone),
            embedding_dim=self.embedding_dim,
            normalize=self.normalize,
            synchronized_bn=self.head.synchronized_bn,
            preprocessing=self.preprocessing,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


# ------------------------------------------------------------------- distribution


def _replica_context():
    """(context, number of replicas, replica index) in a replica or default context."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:  # cross-replica context: behave as a single replica
        return None, 1, 0
    return ctx, ctx.num_replicas_in_sync, ctx.replica_id_in_sync_group


def _gather(ctx, value):
    return value if ctx is None or ctx.num_replicas_in_sync == 1 else ctx.all_gather(value, 0)


def _global_sum(ctx, value):
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)


# --------------------------------------------------------------------------- HDML


@keras.saving.register_keras_serializable(package="hdml_tf")
class HDML(keras.Model):
    """Hardness-Aware Deep Metric Learning around an `Embedder`.

    Args:
      embedder: the `Embedder` (F and H); ``model.embedder`` is what gets exported.
      num_classes: number of training classes (the softmax classifier C).
      loss: "npair" or "triplet".
      hdml: False gives the paper's baseline: only J_m and the metric optimizer.
      alpha: λ = exp(-alpha / J_avg) (spec: 90; the paper reports 7 for triplet).
      beta: w = exp(-beta / J_gen_avg) (spec: 1e4 Cars196, 5e3 CUB, 5e4 SOP).
      lambda_gen: trade-off between J_recon and J_soft (0.5).
      softmax_factor: s, the scale of J_soft (1e4 in the official code).
      l2_reg: N-pair embedding-norm penalty (3e-3 Cars196, 1.5e-2 CUB).
      margin: triplet margin (1.0).
      weight_decay: wd on backbone and head kernels, wd * sum(w^2) / 2.
      window: W, steps per window of the running statistics (official 64).
      stat_init: initial J_avg and J_gen_avg (1e6: λ ~ 1 and w ~ 1 at first).
      record_weighted_jm: record w * J_m in J_avg (official) instead of the raw J_m.
      generator_hidden: hidden units of G (512).
      synchronized_bn: synchronise G's BatchNorm across replicas.
    """

    def __init__(
        self,
        embedder,
        num_classes,
        loss="npair",
        hdml=True,
        alpha=90.0,
        beta=1e4,
        lambda_gen=0.5,
        softmax_factor=1e4,
        l2_reg=3e-3,
        margin=1.0,
        weight_decay=0.0,
        window=64,
        stat_init=1e6,
        record_weighted_jm=True,
        generator_hidden=512,
        synchronized_bn=False,
        **kwargs,
    ):
        kwargs.setdefault("name", "hdml")
        super().__init__(**kwargs)
        if loss not in ("npair", "triplet"):
            raise ValueError(f"loss={loss!r}: expected 'npair' or 'triplet'")
        if int(window) < 1:
            raise ValueError(f"window={window!r}: must be a positive number of steps")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes={num_classes!r}: need at least 2 classes")
        self.embedder = embedder
        self.num_classes = int(num_classes)
        self.loss_type = loss
        self.hdml = bool(hdml)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.lambda_gen = float(lambda_gen)
        self.softmax_factor = float(softmax_factor)
        self.l2_reg = float(l2_reg)
        self.margin = float(margin)
        self.weight_decay = float(weight_decay)
        self.window = int(window)
        self.stat_init = float(stat_init)
        self.record_weighted_jm = bool(record_weighted_jm)
        self.generator_hidden = int(generator_hidden)
        self.synchronized_bn = bool(synchronized_bn)
        self.generator = Generator(embedder.feature_dim, generator_hidden,
                                   synchronized_bn=synchronized_bn, name="generator",
                                   dtype=self.dtype_policy)
        self.classifier = keras.layers.Dense(self.num_classes, name="classifier",
                                             dtype=self.dtype_policy)

        def stat(name, value, dtype="float32"):
            return self.add_weight(shape=(), initializer=keras.initializers.Constant(value),
                                   trainable=False, aggregation="mean", dtype=dtype,
                                   name=name)

        # Running statistics (spec step 11): saved and restored with the model.
        self.j_avg = stat("j_avg", self.stat_init)
        self.j_gen_avg = stat("j_gen_avg", self.stat_init)
        self._j_m_sum = stat("j_m_window_sum", 0.0)
        self._j_m_count = stat("j_m_window_count", 0.0)
        self._j_gen_sum = stat("j_gen_window_sum", 0.0)
        self._j_gen_count = stat("j_gen_window_count", 0.0)
        self.nonfinite_steps = stat("nonfinite_steps", 0.0)

        names = ["j_m", "weight_decay"]
        if self.hdml:
            names += ["j_syn", "j_metric", "j_recon", "j_soft", "j_gen", "j_cls",
                      "lambda", "w"]
        self._trackers = {n: keras.metrics.Mean(name=n) for n in names}

    # ----------------------------------------------------------------- building

    def build(self, input_shape):
        image_shape = input_shape
        while isinstance(image_shape, (list, tuple)) and image_shape and isinstance(
            image_shape[0], (list, tuple)
        ):
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

    def _optimizer_groups(self):
        groups = [(self.metric_optimizer, self.embedder.trainable_variables)]
        if self.hdml:
            groups += [
                (self.generator_optimizer, self.generator.trainable_variables),
                (self.classifier_optimizer, self.classifier.trainable_variables),
            ]
        return groups

    def _build_optimizers(self):
        """Build each optimizer over its own variables (before any state is loaded).

        Keras' own fit would otherwise build ``model.optimizer`` over every trainable
        variable, and a loaded model would drop the saved optimizer state.
        """
        if not self.built or not getattr(self, "compiled", False):
            return
        for optimizer, variables in self._optimizer_groups():
            if optimizer is not None and not optimizer.built:
                optimizer.build(variables)

    def build_from_data(self, data):
        """Build the model (and the optimizers, if compiled) from a batch or dataset.

        ``fit``/``evaluate`` call this, so an explicit call is only needed before
        restoring a checkpoint into a fresh model.
        """
        if not self.built:
            if isinstance(data, tf.data.Dataset):
                spec = data.element_spec
                images = spec[0]
                shape = tf.nest.flatten(images)[0].shape
            else:
                shape = tf.nest.flatten(data[0] if isinstance(data, (list, tuple)) else data)[0].shape
            self.build((None,) + tuple(shape[1:]))
        self._build_optimizers()

    def fit(self, x=None, *args, **kwargs):
        if x is not None:
            self.build_from_data(x)
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        if x is not None:
            self.build_from_data(x)
        return super().evaluate(x, *args, **kwargs)

    def train_on_batch(self, x, y=None, *args, **kwargs):
        self.build_from_data(x)
        return super().train_on_batch(x, y, *args, **kwargs)

    def test_on_batch(self, x, y=None, *args, **kwargs):
        self.build_from_data(x)
        return super().test_on_batch(x, y, *args, **kwargs)

    def compile(self, metric_optimizer=None, generator_optimizer=None,
                classifier_optimizer=None, **kwargs):
        """Three optimizers, each over its own variables only.

        Args:
          metric_optimizer: J_metric over F and H (default Adam(1e-4)).
          generator_optimizer: J_gen over G (default Adam(1e-2)).
          classifier_optimizer: J_cls over C (default Adam(1e-3)).
          **kwargs: passed to ``keras.Model.compile`` (e.g. ``jit_compile``,
            ``steps_per_execution``); ``loss``/``optimizer`` are not accepted.
        """
        for key in ("loss", "optimizer"):
            if key in kwargs:
                raise ValueError(f"HDML.compile() does not take {key!r}: the losses are "
                                 "fixed by the method; pass the three optimizers")
        metric_optimizer = keras.optimizers.get(metric_optimizer or keras.optimizers.Adam(1e-4))
        self.generator_optimizer = keras.optimizers.get(
            generator_optimizer or keras.optimizers.Adam(1e-2))
        self.classifier_optimizer = keras.optimizers.get(
            classifier_optimizer or keras.optimizers.Adam(1e-3))
        super().compile(optimizer=metric_optimizer, **kwargs)
        self._hdml_compile_kwargs = {
            k: v for k, v in kwargs.items() if k in ("jit_compile", "steps_per_execution",
                                                     "run_eagerly")
        }
        self._build_optimizers()

    @property
    def metric_optimizer(self):
        return self.optimizer

    def get_compile_config(self):
        if not getattr(self, "compiled", False):
            return {}
        config = {
            "metric_optimizer": keras.saving.serialize_keras_object(self.metric_optimizer),
            "generator_optimizer": keras.saving.serialize_keras_object(
                self.generator_optimizer),
            "classifier_optimizer": keras.saving.serialize_keras_object(
                self.classifier_optimizer),
        }
        config.update(getattr(self, "_hdml_compile_kwargs", {}))
        return config

    def compile_from_config(self, config):
        config = dict(config)
        for key in ("metric_optimizer", "generator_optimizer", "classifier_optimizer"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        self.compile(**config)

    @property
    def metrics(self):
        # Listed here so Keras resets them at the start of every epoch.
        return list(self._trackers.values())

    # ------------------------------------------------------------------ forward

    def call(self, inputs, training=False):
        """Normalised embeddings of an image batch (or of a training tuple's images)."""
        if isinstance(inputs, (list, tuple)):
            inputs = tf.concat(list(inputs), axis=0)
        return self.embedder(inputs, training=training)

    def _unpack(self, data):
        if not isinstance(data, (list, tuple)) or len(data) < 2:
            raise ValueError("HDML expects batches (images, labels) with nested tuples; "
                             f"got {type(data).__name__}")
        images, labels = data[0], data[1]
        expected = 2 if self.loss_type == "npair" else 3
        if (not isinstance(images, (list, tuple)) or len(images) != expected
                or not isinstance(labels, (list, tuple)) or len(labels) != expected):
            layout = ("((anchors, positives), (anchor_labels, positive_labels))"
                      if expected == 2 else
                      "((anchors, positives, negatives), (anchor_labels, positive_labels,"
                      " negative_labels))")
            raise ValueError(f"loss={self.loss_type!r} expects batches laid out as "
                             f"{layout}; see hdml_tf.data.sampling")
        labels = [tf.cast(tf.reshape(l, [-1]), tf.int32) for l in labels]
        return list(images), labels

    def _weight_decay(self):
        if not self.weight_decay:
            return tf.constant(0.0)
        kernels = [v for v in self.embedder.trainable_variables
                   if v.name.split("/")[-1].split(":")[0] in _KERNEL_NAMES]
        return self.weight_decay * tf.add_n(
            [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in kernels])

    def _forward(self, data, training):
        """One forward pass: every loss term, as this replica's contribution.

        Returns (contributions, extras): ``contributions[k]`` summed over replicas is
        the global value of term k; ``extras`` holds λ and w (HDML on).
        """
        images, labels = self._unpack(data)
        ctx, num_replicas, replica_id = _replica_context()
        inv_r = 1.0 / num_replicas
        groups = len(images)
        sizes = [tf.shape(x)[0] for x in images]
        y = self.embedder.features(tf.concat(images, axis=0), training=training)
        z = tf.cast(self.embedder.head(y, training=training), tf.float32)
        z_parts = tf.split(z, sizes, axis=0) if groups else []
        all_labels = tf.concat(labels, axis=0)

        out = {}
        # [J_m] the metric loss on the real tuple.
        if self.loss_type == "npair":
            z_a, z_p = z_parts
            z_a_all, z_p_all = _gather(ctx, z_a), _gather(ctx, z_p)
            labels_all = _gather(ctx, labels[0])
            j_metric_loss = losses_lib.npair_loss(labels_all, z_a_all, z_p_all, self.l2_reg)
            j_m_contrib = j_metric_loss * inv_r  # same global value on every replica
        else:
            z_a, z_p, z_n = z_parts
            j_m_contrib = losses_lib.triplet_loss(z_a, z_p, z_n, self.margin)  # a sum
        wd = self._weight_decay()
        out["j_m"] = j_m_contrib + wd * inv_r
        out["weight_decay"] = wd * inv_r
        extras = {}
        if not self.hdml:
            out["j_metric"] = out["j_m"]
            return out, extras

        # [synthesis] hardness-aware negatives in embedding space (spec step 3).
        lam = synthesis.hardness_lambda(self.j_avg, self.alpha)
        w = synthesis.metric_weight(self.j_gen_avg, self.beta)
        extras.update(lam=lam, w=w)
        if self.loss_type == "npair":
            local_p = tf.shape(z_a)[0]
            # This replica's anchors against every positive of the global batch.
            synthetic = tf.concat(
                [z_a, synthesis.npair_candidates(z_a, z_p, lam, all_positives=z_p_all)],
                axis=0)
            synthetic_labels = tf.concat(
                [labels[0], tf.tile(labels_all, [local_p])], axis=0)
        else:
            z_hat_neg = synthesis.hardness_aware_negatives(z_a, z_p, z_n, lam)
            synthetic = tf.concat([z_a, z_p, z_hat_neg], axis=0)
            synthetic_labels = all_labels

        # [generator] one pass over real and synthetic rows (shared BN statistics).
        num_real = tf.shape(z)[0]
        y_gen = tf.cast(self.generator(tf.concat([z, synthetic], axis=0), training=training),
                        tf.float32)
        y_prime, y_tilde = y_gen[:num_real], y_gen[num_real:]
        # [J_syn] the synthetic tuple re-embedded by the SAME head.
        z_tilde = tf.cast(self.embedder.head(y_tilde, training=training), tf.float32)
        if self.loss_type == "npair":
            z_tilde_a, z_tilde_cand = z_tilde[:local_p], z_tilde[local_p:]
            num_all = tf.shape(z_p_all)[0]
            logits = tf.einsum("id,ijd->ij", z_tilde_a,
                               tf.reshape(z_tilde_cand, [local_p, num_all, -1]))
            targets = tf.range(local_p) + replica_id * local_p
            j_syn = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=targets, logits=logits))
            if self.l2_reg:
                j_syn += losses_lib.npair_l2_term(z_tilde_a, z_tilde_cand, self.l2_reg)
            j_syn_contrib = j_syn * inv_r
        else:
            t_a, t_p, t_n = tf.split(z_tilde, 3, axis=0)
            j_syn_contrib = losses_lib.triplet_loss(t_a, t_p, t_n, self.margin)
        out["j_syn"] = j_syn_contrib
        out["j_metric"] = w * out["j_m"] + (1.0 - w) * j_syn_contrib

        # [J_gen] reconstruction (a sum) plus label preservation of the synthetic rows.
        out["j_recon"] = (1.0 - self.lambda_gen) * tf.reduce_sum(tf.square(y_prime - y))
        logits_tilde = tf.cast(self.classifier(y_tilde), tf.float32)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=synthetic_labels, logits=logits_tilde)
        if self.loss_type == "npair":
            # Mean over the P^2 synthetic rows plus mean over the P anchor rows.
            ce_soft = tf.reduce_mean(ce[local_p:]) + tf.reduce_mean(ce[:local_p])
        else:
            ce_soft = tf.reduce_mean(ce)
        out["j_soft"] = self.softmax_factor * self.lambda_gen * ce_soft * inv_r
        out["j_gen"] = out["j_recon"] + out["j_soft"]
        # [J_cls] the classifier on real features.
        logits_real = tf.cast(self.classifier(y), tf.float32)
        out["j_cls"] = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=all_labels, logits=logits_real)) * inv_r
        return out, extras

    # ------------------------------------------------------------ running stats

    def _record(self, value, sum_var, count_var, avg_var):
        """Add a finite value to the window; at W values, publish their mean."""
        finite = tf.math.is_finite(value)
        new_sum = sum_var + tf.where(finite, value, 0.0)
        new_count = count_var + tf.cast(finite, tf.float32)
        full = new_count >= float(self.window)
        avg_var.assign(tf.where(full, new_sum / tf.maximum(new_count, 1.0), avg_var))
        sum_var.assign(tf.where(full, 0.0, new_sum))
        count_var.assign(tf.where(full, 0.0, new_count))

    def _update_statistics(self, totals, extras):
        if not self.hdml:
            return
        j_m = totals["j_m"] * extras["w"] if self.record_weighted_jm else totals["j_m"]
        self._record(j_m, self._j_m_sum, self._j_m_count, self.j_avg)
        self._record(totals["j_gen"], self._j_gen_sum, self._j_gen_count, self.j_gen_avg)

    def _update_trackers(self, totals, extras):
        for name, value in totals.items():
            if name in self._trackers:
                self._trackers[name].update_state(value)
        if self.hdml:
            self._trackers["lambda"].update_state(extras["lam"])
            self._trackers["w"].update_state(extras["w"])
        logs = {name: t.result() for name, t in self._trackers.items()}
        logs["nonfinite_steps"] = tf.identity(self.nonfinite_steps)
        return logs

    # -------------------------------------------------------------- train/test

    def _objectives(self, contrib):
        """(optimizer, loss, variables) for each objective, spec step 10."""
        result = [(self.metric_optimizer, contrib["j_metric"],
                   self.embedder.trainable_variables)]
        if self.hdml:
            result += [
                (self.generator_optimizer, contrib["j_gen"],
                 self.generator.trainable_variables),
                (self.classifier_optimizer, contrib["j_cls"],
                 self.classifier.trainable_variables),
            ]
        return result

    def _apply_if_finite(self, finite, objectives, grads, moving, saved):
        """Apply every optimizer, or none of them and count the step, by ``finite``.

        A non-finite step must not touch the weights, the optimizer state or the
        BatchNorm statistics (which the forward pass has already updated: ``moving``
        is restored from ``saved``). With several replicas the optimizers' gradient
        all-reduce is a synchronisation point, which tf.distribute does not allow
        inside a replica-context ``tf.cond``; as Keras' LossScaleOptimizer does, the
        decision is then taken in cross-replica context (``merge_call``) and the
        updates run per replica.
        """

        def apply_all(grads):
            for (opt, _, variables), g in zip(objectives, grads):
                opt.apply(g, variables)

        def restore(saved):
            for variable, value in zip(moving, saved):
                variable.assign(value)

        ctx, num_replicas, _ = _replica_context()
        if ctx is None or num_replicas == 1:

            def apply_fn():
                apply_all(grads)
                return tf.constant(True)

            def skip_fn():
                restore(saved)
                self.nonfinite_steps.assign_add(1.0)
                return tf.constant(False)

            tf.cond(finite, apply_fn, skip_fn)
            return

        def cross_replica(distribution, finite, grads, saved):
            # Every replica holds the same value (the flag is all-reduced).
            finite = distribution.experimental_local_results(finite)[0]

            def apply_fn():
                distribution.extended.call_for_each_replica(apply_all, args=(grads,))
                return tf.constant(True)

            def skip_fn():
                distribution.extended.call_for_each_replica(restore, args=(saved,))
                self.nonfinite_steps.assign_add(1.0)
                return tf.constant(False)

            tf.cond(finite, apply_fn, skip_fn)

        ctx.merge_call(cross_replica, args=(finite, grads, saved))

    def train_step(self, data):
        ctx, _, _ = _replica_context()
        # BatchNorm statistics move during the forward pass; keep their values so a
        # skipped step can put them back.
        moving = (self.embedder.non_trainable_variables
                  + (self.generator.non_trainable_variables if self.hdml else []))
        saved = [tf.identity(v) for v in moving]
        with tf.GradientTape(persistent=True) as tape:
            contrib, extras = self._forward(data, training=True)
            objectives = self._objectives(contrib)
            scaled = [opt.scale_loss(loss) if hasattr(opt, "scale_loss") else loss
                      for opt, loss, _ in objectives]
        grads = [tape.gradient(loss, variables)
                 for loss, (_, _, variables) in zip(scaled, objectives)]
        del tape
        totals = {k: _global_sum(ctx, v) for k, v in contrib.items()}
        checks = [tf.math.is_finite(totals[k]) for k in ("j_metric", "j_gen", "j_cls")
                  if k in totals]
        # A NaN input can give finite losses and NaN gradients (a fused Conv+ReLU maps
        # NaN to 0 forward, not backward). LossScaleOptimizers check their own
        # gradients: they must see an overflow to lower the loss scale.
        for (opt, _, _), group in zip(objectives, grads):
            if not isinstance(opt, keras.optimizers.LossScaleOptimizer):
                checks += [tf.reduce_all(tf.math.is_finite(g)) for g in group if g is not None]
        bad_here = 1.0 - tf.cast(tf.reduce_all(tf.stack(checks)), tf.float32)
        finite = tf.equal(_global_sum(ctx, bad_here), 0.0)  # the same on every replica

        self._apply_if_finite(finite, objectives, grads, moving, saved)
        self._update_statistics(totals, extras)
        return self._update_trackers(totals, extras)

    def test_step(self, data):
        ctx, _, _ = _replica_context()
        contrib, extras = self._forward(data, training=False)
        totals = {k: _global_sum(ctx, v) for k, v in contrib.items()}
        return self._update_trackers(totals, extras)

    # ------------------------------------------------------------ running stats API

    def statistics(self):
        """Current running statistics as Python floats (for logs and tests)."""
        return {
            "j_avg": float(self.j_avg.numpy()),
            "j_gen_avg": float(self.j_gen_avg.numpy()),
            "lambda": float(synthesis.hardness_lambda(self.j_avg, self.alpha)),
            "w": float(synthesis.metric_weight(self.j_gen_avg, self.beta)),
            "nonfinite_steps": int(self.nonfinite_steps.numpy()),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            embedder=keras.saving.serialize_keras_object(self.embedder),
            num_classes=self.num_classes,
            loss=self.loss_type,
            hdml=self.hdml,
            alpha=self.alpha,
            beta=self.beta,
            lambda_gen=self.lambda_gen,
            softmax_factor=self.softmax_factor,
            l2_reg=self.l2_reg,
            margin=self.margin,
            weight_decay=self.weight_decay,
            window=self.window,
            stat_init=self.stat_init,
            record_weighted_jm=self.record_weighted_jm,
            generator_hidden=self.generator_hidden,
            synchronized_bn=self.synchronized_bn,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedder"] = keras.saving.deserialize_keras_object(config["embedder"])
        return cls(**config)

    def get_build_config(self):
        shape = getattr(self, "_image_shape", None)
        return {"input_shape": list(shape)} if shape is not None else {}

    def build_from_config(self, config):
        if config.get("input_shape"):
            self.build(tuple(config["input_shape"]))
