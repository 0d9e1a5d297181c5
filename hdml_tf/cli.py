"""The ``hdml-tf`` command line: every sub-command's argparse parser is here.

Each command is a :class:`Command` in :data:`COMMANDS`: a function building its parser
and one running it, which calls library functions with plain arguments
(``training.train(config, workdir)``, ``compare.compare(...)``,
``bench.run_bench(...)``, ...). Nothing in the library imports this module:

  hdml-tf train   --config PRESET_OR_FILE [--set key=value ...] --workdir DIR
  hdml-tf demo    [--smoke]                  Fashion-MNIST HDML vs baseline, the README job
  hdml-tf pretrain --config PRESET [--steps N]   a backbone from the 'pretrain' classes
  hdml-tf compare --config PRESET --seeds N [--set ...] --workdir DIR   HDML vs baseline
  hdml-tf export  --checkpoint WORKDIR_OR_KERAS --out saved_models/NAME
  hdml-tf embed   --model SAVEDMODEL --images DIR_OR_LIST --out emb.npz
  hdml-tf search  --model SAVEDMODEL --gallery emb.npz --query IMAGE [-k 10]
  hdml-tf weights fetch bvlc_googlenet      download (published SHA-1), convert, cache
  hdml-tf weights check FILE                 ImageNet top-5 of two photos: are they right?
  hdml-tf weights import FILE -o OUT.weights.h5   .caffemodel / .mat / .npz / .npy
  hdml-tf weights fetch URL --sha256 HEX [-o DEST]   download with a checksum
  hdml-tf presets                            list the training presets
  hdml-tf bench   --config PRESET [--smoke] [--set ...]   step, pipeline, expected run time
  hdml-tf data glyphs --out DIR [--size 16] [--seed 0] [--counts T,V,T]   CJK ideographs

``import hdml_tf`` keeps TensorFlow's start-up lines off the output
(``hdml_tf.tf_startup``); the command's entry point (``hdml_tf_entry.main``, beside the
package) handles ``--verbose`` before that import; this module only parses and
dispatches.
Warnings print as one wrapped line each (``hdml-tf: warning: ...``).
"""

import argparse
import dataclasses
import importlib
import json
import os
import shlex
import sys
import textwrap
import warnings
from typing import Callable

import tensorflow as tf

from hdml_tf import bench, compare
from hdml_tf import config as config_lib
from hdml_tf import demo, export
from hdml_tf import serving_tools as tools
from hdml_tf import training
from hdml_tf.backbones import download, weights
from hdml_tf.backbones.download import KNOWN_WEIGHTS, default_cache_dir
from hdml_tf.backbones.imagenet import imagenet_check
from hdml_tf.config import ConfigError
from hdml_tf.data import glyphs
from hdml_tf.export import DEFAULT_MAX_BATCH, DEFAULT_MAX_PIXELS
from hdml_tf.nonfinite import NonFiniteTrainingError
from hdml_tf.training import pretrain as pretrain_lib
from hdml_tf.workdir import WorkdirError, WriteError

# ---------------------------------------------------------------- shared pieces


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as a command prints them: ``hdml-tf: warning: ...``, wrapped to 100
    columns, without the source line Python would show."""
    text = textwrap.fill(f"hdml-tf: warning: {message}", width=100,
                         subsequent_indent="  ", break_on_hyphens=False)
    print(text, file=file or sys.stderr)


def _fail(prog, message, code):
    """One line on stderr, no traceback: what a user can fix, and the exit code."""
    print(f"{prog}: {message}", file=sys.stderr)
    return code


def _add_config_options(parser, set_help):
    parser.add_argument("--config", required=True,
                        help="preset name (hdml-tf presets) or a JSON config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=set_help)


def _config_errors(prog, call):
    """``call()``; a bad config or a missing file is one line and exit code 2."""

    try:
        call()
    except ConfigError as error:
        return _fail(prog, f"config error: {error}", 2)
    except FileNotFoundError as error:
        return _fail(prog, error, 2)
    return 0


# ------------------------------------------------------------ training commands


def _train_parser(prog):
    parser = argparse.ArgumentParser(
        prog=prog, description="Train HDML (or its baseline with --set model.hdml=false).")
    _add_config_options(parser, "override, e.g. --set model.embedding_dim=64 (repeatable)")
    parser.add_argument("--workdir", required=True, help="checkpoints, logs, metrics")
    parser.add_argument("--strategy", choices=config_lib.STRATEGIES,
                        help="overrides train.strategy")
    parser.add_argument("--precision", choices=config_lib.PRECISIONS,
                        help="the backbone's compute precision (train.precision)")
    parser.add_argument("--xla", action="store_true", help="XLA-compile the step")
    parser.add_argument("--smoke", action="store_true", help="a few steps, for checks")
    return parser


def _train(args, parser):
    overrides = list(args.set)
    if args.strategy:
        overrides.append(f"train.strategy={args.strategy}")
    if args.precision:
        overrides.append(f"train.precision={args.precision}")
    if args.xla:
        overrides.append("train.xla=true")

    def run():
        config = config_lib.load_config(args.config, overrides, smoke=args.smoke)
        training.train(config, args.workdir)

    try:
        return _config_errors(parser.prog, run)
    except NonFiniteTrainingError as error:
        return _fail(parser.prog, f"stopped: {error}; the last good checkpoint is kept in "
                     f"{args.workdir}/checkpoints", 1)


def _pretrain_parser(prog):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Pretrain a preset's backbone on its dataset's 'pretrain' classes, "
                    "and write the weights file the preset "
                    "loads (model.weights) with a JSON record of its SHA-256 and accuracy "
                    "beside it (hdml_tf.training.pretrain).")
    _add_config_options(parser, "override, e.g. --set data.root=DIR (repeatable)")
    defaults = pretrain_lib.PretrainSettings()
    parser.add_argument("--out", default=None, metavar="FILE.weights.h5",
                        help="the weights file (default: the preset's model.weights)")
    parser.add_argument("--objective", choices=pretrain_lib.OBJECTIVES,
                        default=defaults.objective,
                        help="softmax over the batch's classes (npair, the default) or "
                             "over every class (softmax)")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help=f"optimizer steps (default {defaults.steps})")
    parser.add_argument("--lr", type=float, default=defaults.lr,
                        help=f"Adam's learning rate, cosine-decayed (default {defaults.lr})")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="batches, held-out images, classes kept and initial weights "
                             "(default 0)")
    parser.add_argument("--classes", type=int, default=defaults.classes,
                        help="pretrain on a seeded choice of this many classes (default: "
                             "all)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing weights file")
    return parser


def _pretrain(args, parser):
    def run():
        config = config_lib.load_config(args.config, args.set)
        out = args.out or config.model.weights
        if not out:
            raise ConfigError("model.weights: the preset names no weights file; pass --out")
        if not out.endswith(".weights.h5"):
            raise ConfigError(f"--out: a backbone's weights file ends in .weights.h5, got "
                              f"{out!r}")
        settings = pretrain_lib.PretrainSettings(
            objective=args.objective, steps=args.steps, lr=args.lr, seed=args.seed,
            classes=args.classes)
        pretrain_lib.pretrain(config, out, settings, overwrite=args.overwrite,
                              command="hdml-tf pretrain " + shlex.join(args.argv))

    return _config_errors(parser.prog, run)


def _demo_parser(prog):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="HDML N-pair vs the N-pair baseline on Fashion-MNIST (CPU, minutes).")
    parser.add_argument("--out", default="runs/demo", help="workdirs, table, pictures")
    parser.add_argument("--export-dir", default="saved_models")
    parser.add_argument("--steps", type=int, help="training steps per run (preset: 1500)")
    parser.add_argument("--smoke", action="store_true", help="a few steps, for checks")
    return parser


def _demo(args, parser):
    os.makedirs(args.out, exist_ok=True)
    result = demo.run_demo(args.out, args.export_dir, smoke=args.smoke, steps=args.steps)
    return 0 if result is not None else 1


def _compare_parser(prog):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="HDML vs its baseline (model.hdml=false) over seeds: mean ± std per "
                    "arm, the paired difference with a 95% Student t interval, a verdict.")
    _add_config_options(parser, "override for both arms, e.g. --set data.batch_size=20")
    parser.add_argument("--seeds", required=True, type=int,
                        help="number of seeds: train.seed = 0 .. N-1")
    parser.add_argument("--workdir", required=True,
                        help="runs and compare.md/.json/.png (rerun to resume)")
    parser.add_argument("--confidence", type=float, default=0.95,
                        help="coverage of the paired t-interval (default 0.95)")
    parser.add_argument("--smoke", action="store_true", help="a few steps, for checks")
    return parser


def _compare(args, parser):
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    command = "hdml-tf compare " + shlex.join(args.argv)
    return _config_errors(parser.prog, lambda: compare.compare(
        args.config, args.seeds, args.workdir, overrides=args.set, smoke=args.smoke,
        confidence=args.confidence, command=command))


def _presets_parser(prog):
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("name", nargs="?", help="print this preset as JSON")
    parser.add_argument("--provenance", action="store_true",
                        help="with a name: each setting, its value and where it comes "
                             "from (the authors' commit and file, or ours and why)")
    return parser


def _presets(args, parser):
    if args.provenance and not args.name:
        parser.error("--provenance needs a preset name")
    if args.name:
        show = _print_provenance if args.provenance else (
            lambda name: print(config_lib.get_preset(name).to_json()))
        return _config_errors(parser.prog, lambda: show(args.name))
    print(f"{'preset':<20} {'fidelity':<8} description")
    indent = " " * 30
    for name in config_lib.available_presets():
        module = importlib.import_module(f"hdml_tf.configs.{name}")
        first = (module.__doc__ or "").strip().splitlines()[0]
        head = f"{name:<20} {config_lib.fidelity(config_lib.get_preset(name)):<8} "
        print(textwrap.fill(first, 99, initial_indent=head, subsequent_indent=indent))
        print(textwrap.fill(_sources_line(config_lib.get_provenance(name)), 99,
                            initial_indent=indent, subsequent_indent=indent + "  "))
    print("(hdml-tf presets NAME --provenance: the settings one by one)")
    return 0


def _sources_line(provenance):
    """"from the authors' code: fa03ef0 (27 keys), ...; ours: train.ks" (or "no
    setting from the authors' code")."""
    if not provenance:
        return "every setting ours (not from the authors' code)"
    commits = {}
    for source in provenance.values():
        if source.origin == "authors":
            commits[source.commit] = commits.get(source.commit, 0) + 1
    ours = sorted(key for key, source in provenance.items() if source.origin == "ours")
    authors = ", ".join(f"{c} ({n} keys)" for c, n in commits.items())
    return f"from the authors' code: {authors}; ours: {', '.join(ours) or 'none'}"


def _print_provenance(name):
    """One row per setting of a paper preset: key, value, source."""
    values = _flat(config_lib.get_preset(name).to_dict())
    provenance = config_lib.get_provenance(name)
    if not provenance:
        print(f"{name}: not a paper preset; every setting is ours")
        return
    print(f"{name}: settings that change what it computes (github.com/wzzheng/HDML)")
    width = max(len(k) for k in provenance) + 2
    for key in sorted(provenance):
        value = json.dumps(values[key])
        row = f"{key:<{width}}{value:<14} "
        print(textwrap.fill(str(provenance[key]), 99, initial_indent=row,
                            subsequent_indent=" " * len(row)))


def _flat(config_dict):
    """{"data": {"crop": 227}} -> {"data.crop": 227}."""
    return {f"{section}.{key}": value for section, fields in config_dict.items()
            if isinstance(fields, dict) for key, value in fields.items()}


def _bench_parser(prog):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Time a preset's training step and input pipeline on this machine.")
    _add_config_options(parser, "override, e.g. --set data.batch_size=64 (repeatable)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes (small_cnn, batch 8, 32 px): seconds, for CI")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per row")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    parser.add_argument("--steps", type=int, default=2, help="steps per timed repeat")
    parser.add_argument("--xla", action=argparse.BooleanOptionalAction, default=None,
                        help="add the XLA rows (default: on a GPU only)")
    return parser


def _bench(args, parser):
    try:
        config = bench.bench_config(args.config, args.set, smoke=args.smoke)
    except ConfigError as error:
        return _fail(parser.prog, f"config error: {error}", 2)
    timing = dict(warmup=args.warmup, repeats=args.repeats, steps=args.steps)
    if args.smoke:
        timing = dict(bench.SMOKE_TIMING)

    tf.get_logger().setLevel("ERROR")  # one tf.function per measured model: no retrace notes
    bench.run_bench(config, smoke=args.smoke, xla=args.xla, **timing)
    return 0


# ------------------------------------------------------------- serving commands


def _export_parser(prog):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export the embedder of a trained model as a TF Serving SavedModel "
                    "(OUT/<next version>/, with warmup requests and metadata).")
    parser.add_argument("--checkpoint", required=True,
                        help="training workdir (with model.keras) or a .keras file of an "
                             "HDML model or Embedder")
    parser.add_argument("--out", required=True,
                        help="model base directory, e.g. saved_models/cub_npair")
    parser.add_argument("--config", default=None,
                        help="experiment config JSON (default: config.json beside the "
                             "checkpoint)")
    parser.add_argument("--resize", type=int, default=None,
                        help="resize before the centre crop (default: data.resize)")
    parser.add_argument("--crop", type=int, default=None,
                        help="centre crop = model input size (default: data.crop)")
    parser.add_argument("--preprocessing", default=None,
                        help="normalisation mode: caffe, tf, torch or none (default: the "
                             "backbone's)")
    parser.add_argument("--version", type=int, default=None,
                        help="explicit version number (default: next free integer)")
    warmup = parser.add_mutually_exclusive_group()
    warmup.add_argument("--warmup", dest="warmup", action="store_const", const="require",
                        default="auto", help="require the warmup file (fail without "
                        "tensorflow-serving-api)")
    warmup.add_argument("--no-warmup", dest="warmup", action="store_const", const="skip",
                        help="do not write the warmup file")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip reloading the export to compare it with Keras")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="serve_bytes refuses, before decoding, an image whose header "
                             "declares more pixels (height x width) (default: "
                             f"{DEFAULT_MAX_PIXELS})")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="both signatures refuse a request of more images (default: "
                             f"{DEFAULT_MAX_BATCH})")
    parser.add_argument("--head-statistics", choices=training.head_statistics.MODES,
                        default="auto",
                        help="the head's BatchNorm statistics: 'real' re-estimates them "
                             "from the run's real training images, 'trained' keeps them; "
                             "'auto' (default) re-estimates them when the synthetic "
                             "features moved them in training (model.head_bn_updates "
                             "other than 'real')")
    return parser


def _export(args, parser):
    try:
        training.export_checkpoint(
            args.checkpoint, args.out, head_statistics_mode=args.head_statistics,
            resize=args.resize, crop=args.crop,
            preprocessing=args.preprocessing, config_path=args.config,
            version=args.version, warmup=args.warmup, verify=args.verify,
            max_pixels=args.max_pixels, max_batch=args.max_batch)
    except (export.ExportError, config_lib.ConfigError, ValueError) as err:
        return _fail(parser.prog, f"error: {err}", 1)
    return 0


def _add_model_option(parser):
    parser.add_argument("--model", required=True,
                        help="SavedModel directory or model base directory (latest version)")


def _add_max_pixels_option(parser, what):
    parser.add_argument("--max-pixels", type=int, default=None,
                        help=f"{what} whose header declares more pixels (height x width), "
                             "before decoding it (default: the export's max_pixels)")


def _embed_parser(prog):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Embed images with an exported SavedModel (serve_bytes signature).")
    _add_model_option(parser)
    parser.add_argument("--images", required=True, nargs="+",
                        help="image files, folders (recursive) or .txt lists of paths")
    parser.add_argument("--out", required=True, help="output .npz")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per request (default and upper bound: the export's "
                             "max_batch)")
    parser.add_argument("--strict", action="store_true",
                        help="fail on an undecodable or oversized image instead of "
                             "skipping it")
    _add_max_pixels_option(parser, "skip an image")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _embed(args, parser):
    try:
        files = tools.list_images(args.images)
        if not files:
            raise FileNotFoundError(f"no images found in {args.images}")
        model = tools.load_model(args.model)
        embeddings, kept, skipped = tools.embed_files(
            model, files, args.batch_size, strict=args.strict, progress=not args.quiet,
            max_pixels=args.max_pixels)
    except Exception as err:  # noqa: BLE001 -- a CLI reports, it does not trace back
        return _fail(parser.prog, f"error: {err}", 1)
    for name, reason in skipped:
        print(f"{parser.prog}: skipped {name}: {reason}", file=sys.stderr)
    if not kept:
        return _fail(parser.prog, "error: no image could be embedded", 1)
    tools.save_embeddings(args.out, embeddings, kept, skipped, model=model.path)
    print(f"wrote {args.out}: {len(kept)} embeddings of dimension {embeddings.shape[1]}"
          + (f", {len(skipped)} skipped" if skipped else ""))
    return 0


def _search_parser(prog):
    parser = argparse.ArgumentParser(
        prog=prog, description="Nearest gallery images (cosine similarity) for query images.")
    _add_model_option(parser)
    parser.add_argument("--gallery", required=True, help=".npz written by hdml-tf embed")
    parser.add_argument("--query", required=True, nargs="+",
                        help="query image files, folders or .txt lists")
    parser.add_argument("-k", type=int, default=10, help="neighbours per query")
    parser.add_argument("--grid", default=None, help="also save a picture grid here")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    _add_max_pixels_option(parser, "refuse a query")
    return parser


def _search(args, parser):
    if args.k < 1:
        parser.error("-k must be at least 1")
    try:
        gallery, gallery_paths = tools.load_embeddings(args.gallery)
        queries = tools.list_images(args.query)
        embeddings, kept, _ = tools.embed_files(tools.load_model(args.model), queries,
                                                strict=True, max_pixels=args.max_pixels)
        if embeddings.shape[1] != gallery.shape[1]:
            raise ValueError(f"the model gives {embeddings.shape[1]}-d embeddings but the "
                             f"gallery holds {gallery.shape[1]}-d ones")
        scores, indices = tools.search(embeddings, gallery, args.k)
    except Exception as err:  # noqa: BLE001 -- a CLI reports, it does not trace back
        return _fail(parser.prog, f"error: {err}", 1)
    report = _print_neighbours(kept, scores, indices, gallery_paths)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    if args.grid:
        tools.save_grid(args.grid, kept, list(zip(scores, indices)), gallery_paths)
        print(f"wrote {args.grid}")
    return 0


def _print_neighbours(queries, scores, indices, gallery_paths):
    """Print each query's ranked neighbours; returns them as JSON-ready dicts."""
    report = []
    for query, row_scores, row_indices in zip(queries, scores, indices):
        print(f"query: {query}")
        hits = []
        for rank, (score, index) in enumerate(zip(row_scores, row_indices), start=1):
            print(f"  {rank:3d}  {score:.4f}  {gallery_paths[index]}")
            hits.append({"rank": rank, "score": float(score),
                         "path": gallery_paths[index], "index": int(index)})
        report.append({"query": query, "neighbours": hits})
    return report


# -------------------------------------------------------------- weights commands


def _weights_import_parser(prog):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Convert BVLC GoogLeNet weights from BVLC's bvlc_googlenet.caffemodel, or "
            "the converted-Caffe .mat (the HDML authors' tf_ckpt_from_caffe.mat), "
            ".npz or .npy layout, into a Keras .weights.h5 for hdml_tf's InceptionV1."))
    parser.add_argument("src", help="input .caffemodel / .mat / .npz / .npy file")
    parser.add_argument("-o", "--output", required=True, help="output .weights.h5 path")
    parser.add_argument("--include-top", action="store_true",
                        help="also convert the 1000-way loss3/classifier")
    parser.add_argument("--input-size", type=int, default=227,
                        help="square input size the model is built at (default 227)")
    return parser


def _weights_import(args, parser):
    _, report = weights.convert_with_report(
        args.src, args.output, input_shape=(args.input_size, args.input_size, 3),
        include_top=args.include_top)
    for line in weights.skipped_layers_lines(report["ignored"]):
        print(line)
    print(f"wrote {args.output}")
    return 0


def _weights_fetch_parser(prog):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=("Download a weights file and verify its digest (file:// works too). "
                     f"Known names: {', '.join(sorted(KNOWN_WEIGHTS))}."))
    parser.add_argument("target", nargs="?", metavar="NAME_OR_URL",
                        help="a known name (bvlc_googlenet) or an https://, http:// or "
                             "file:// URL")
    parser.add_argument("--sha256", help="expected hex SHA-256")
    parser.add_argument("--sha1", help="expected hex SHA-1")
    parser.add_argument("--url", help="with a known name: a mirror URL of the same file "
                                      "(the published digest is still checked)")
    parser.add_argument("-o", "--output", help="destination file or folder (URLs only)")
    parser.add_argument("--cache-dir", help=f"default folder ({default_cache_dir()})")
    parser.add_argument("--no-convert", action="store_true",
                        help="with a known name: only fetch and verify")
    parser.add_argument("--hash", metavar="FILE", help="print FILE's SHA-256 and exit")
    return parser


def _weights_fetch(args, parser):
    """A known name is fetched with its published digest and converted; a URL needs
    ``--sha256`` or ``--sha1``; ``--hash FILE`` prints a file's SHA-256. Returns 0, 1
    (download, checksum or conversion error) or 2 (bad arguments)."""

    if args.hash:
        print(f"{download.sha256_file(args.hash)}  {args.hash}")
        return 0
    if args.target in download.KNOWN_WEIGHTS:
        return _fetch_known(args, parser)
    if not args.target or not (args.sha256 or args.sha1):
        parser.print_usage(sys.stderr)
        return _fail(parser.prog,
                     "error: a known name, or a URL with --sha256 or --sha1, is required", 2)
    try:
        path = download.fetch_weights(args.target, args.sha256, args.output, sha1=args.sha1,
                                      cache_dir=args.cache_dir)
    except download.ChecksumError:
        raise  # exit code 1, as for a download error
    except ValueError as error:  # a malformed digest or URL: a usage error
        return _fail(parser.prog, f"error: {error}", 2)
    print(path)
    return 0


def _fetch_known(args, parser):
    source = dict(url=args.url, sha256=args.sha256, sha1=args.sha1, cache_dir=args.cache_dir)
    if args.no_convert:
        print(download.fetch_known_weights(args.target, **source))
        return 0
    fetched = download.fetch_and_convert(args.target, **source)
    print(f"weights: {fetched.weights}")
    if args.target == "bvlc_googlenet":
        print(f"check them: hdml-tf weights check {fetched.source}")
    return 0


def _weights_check_parser(prog):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=("Classify scikit-learn's two sample photographs (a temple, a flower) "
                     "with InceptionV1(include_top=True) and print the ImageNet top-5 "
                     "with Caffe's and the HDML authors' LRN side by side."))
    parser.add_argument("weights", help=".caffemodel, Caffe-layout .mat/.npz/.npy, or a "
                                        ".weights.h5 converted with --include-top")
    parser.add_argument("--crop", type=int, default=224, choices=(224, 227))
    parser.add_argument("-k", type=int, default=5)
    return parser


def _weights_check(args, parser):
    imagenet_check(args.weights, crop=args.crop, k=args.k)
    return 0


# ----------------------------------------------------------------- data commands


def _data_glyphs_parser(prog):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Render the CJK ideographs that every distinct installed typeface "
                    "draws into an image folder (one class per character, one image per "
                    "face), with splits.txt and manifest.json (hdml_tf.data.glyphs).")
    parser.add_argument("--out", default=None,
                        help="output folder (default: where the glyphs dataset looks, "
                             "$HDML_GLYPHS_DIR, else $HDML_DATA_DIR/glyphs, else "
                             "~/hdml_data/glyphs)")
    parser.add_argument("--size", type=int, default=16,
                        help="image side in pixels (default 16: the glyphs_npair folder)")
    parser.add_argument("--margin", type=int, default=None,
                        help="white pixels around the face box (default size // 16)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the characters kept by --max-chars and the split")
    parser.add_argument("--max-chars", type=int, default=3000,
                        help="keep this many shared characters, a seeded choice (default "
                             "3000: the glyphs_npair benchmark's folder; 0 keeps all)")
    parser.add_argument("--min-ideographs", type=int, default=7000,
                        help="skip faces whose charset has fewer ideographs (default 7000)")
    parser.add_argument("--fractions", default="0.45,0.05,0.5", metavar="TRAIN,VAL,TEST",
                        help="shares of the characters (default 0.45,0.05,0.5)")
    parser.add_argument("--held-out", type=float, default=1 / 3, metavar="SHARE",
                        help="share of the faces (whole families) that draw only the val "
                             "and test characters, the others only the train characters "
                             "(default 1/3; 0: every face draws every character)")
    parser.add_argument("--counts", default=None, metavar="TRAIN,VAL,TEST",
                        help="that many characters per split instead of --fractions; "
                             "the others become a 'pretrain' split for `hdml-tf pretrain` "
                             "(the fine-tuning protocol, docs/results.md: 100,100,1000 "
                             "with --max-chars 0)")
    parser.add_argument("--pretrain-faces", type=float, default=0.15, metavar="SHARE",
                        help="with --counts: share of the training faces (whole families) "
                             "that draw the pretrain characters (default 0.15)")
    parser.add_argument("--fonts", action="append", default=None, metavar="PATH",
                        help="use these font files or directories instead of every "
                             "installed face (repeatable)")
    return parser


def _data_glyphs(args, parser):
    try:
        fractions = tuple(float(x) for x in args.fractions.split(","))
    except ValueError:
        parser.error(f"--fractions: expected three numbers TRAIN,VAL,TEST, got "
                     f"{args.fractions!r}")
    counts = None
    if args.counts is not None:
        try:
            counts = tuple(int(x) for x in args.counts.split(","))
        except ValueError:
            parser.error(f"--counts: expected three whole numbers TRAIN,VAL,TEST, got "
                         f"{args.counts!r}")
    glyphs.build(args.out, size=args.size, margin=args.margin, seed=args.seed,
                 max_chars=args.max_chars or None, min_ideographs=args.min_ideographs,
                 fractions=fractions, held_out=args.held_out, counts=counts,
                 pretrain_faces=args.pretrain_faces, fonts=args.fonts,
                 command="hdml-tf data glyphs " + shlex.join(args.argv))
    return 0


# ---------------------------------------------------------------- the dispatcher


@dataclasses.dataclass(frozen=True)
class Command:
    """One sub-command: ``parser(prog)`` builds its argparse parser, ``run(args,
    parser)`` does the work by calling library functions and returns the exit code.
    An exception of a class in ``errors`` leaving ``run`` is what a user can fix (a
    missing or unfitting file, a failed download): one line ``PROG: error: ...`` and
    exit code 1, no traceback."""

    help: str
    parser: Callable[[str], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace, argparse.ArgumentParser], int]
    errors: tuple = ()


COMMANDS = {
    "train": Command("train HDML or a baseline from a preset", _train_parser, _train),
    "demo": Command("Fashion-MNIST demo: HDML vs baseline", _demo_parser, _demo),
    # An existing output file (kept as it was).
    "pretrain": Command("pretrain a preset's backbone on its 'pretrain' classes",
                        _pretrain_parser, _pretrain, errors=(FileExistsError,)),
    "compare": Command("HDML vs baseline over seeds, with intervals", _compare_parser,
                       _compare),
    "presets": Command("list the training presets", _presets_parser, _presets),
    "export": Command("export the embedder as a SavedModel", _export_parser, _export),
    "embed": Command("embed images with a SavedModel", _embed_parser, _embed),
    "search": Command("nearest gallery images", _search_parser, _search),
    "bench": Command("time a preset's step and pipeline here", _bench_parser, _bench),
    # Download, digest, conversion and file errors.
    "weights import": Command("", _weights_import_parser, _weights_import,
                              errors=(OSError, ValueError)),
    "weights fetch": Command("", _weights_fetch_parser, _weights_fetch,
                             errors=(OSError, ValueError)),
    "weights check": Command("", _weights_check_parser, _weights_check,
                             errors=(OSError, ValueError)),
    # Missing fonts or fontconfig, an unusable output folder, bad fractions.
    "data glyphs": Command("", _data_glyphs_parser, _data_glyphs,
                           errors=(OSError, ValueError)),
}
_WEIGHTS_HELP = "weights fetch|check|import: the GoogLeNet weights"
_WEIGHTS_USAGE = (
    "usage: hdml-tf weights fetch bvlc_googlenet [--url MIRROR] [--cache-dir DIR]\n"
    "       hdml-tf weights check FILE\n"
    "       hdml-tf weights import FILE -o OUT.weights.h5\n"
    "       hdml-tf weights fetch URL --sha256 HEX [-o DEST]")


def run_command(name, argv=None, prog=None):
    """Runs one sub-command as ``hdml-tf NAME ARGV...`` does, and returns its exit code.

    ``name`` is a key of :data:`COMMANDS` (``"train"``, ``"weights fetch"``, ...);
    ``argv`` the arguments after it (default ``sys.argv[1:]``); ``prog`` the name
    its messages give (default ``hdml-tf NAME``). Usage errors exit with status 2, as
    argparse does. Unlike :func:`main`, TensorFlow's start-up logs are left alone.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = COMMANDS[name]
    parser = command.parser(prog or f"hdml-tf {name}")
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given (compare records it)
    try:
        return int(command.run(args, parser) or 0)
    except WorkdirError as error:  # busy, or nothing in it restores
        return _fail(parser.prog, f"error: {error}", 2)
    except WriteError as error:  # a full disk: what was written before is kept
        return _fail(parser.prog, f"error: {error}", 1)
    except command.errors as error:
        return _fail(parser.prog, f"error: {error}", 1)


def _usage():
    lines = ["usage: hdml-tf [--verbose] <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {command.help}" for name, command in COMMANDS.items()
              if " " not in name]
    lines += [f"  {'weights':<9} {_WEIGHTS_HELP}"]
    lines += [f"  {'data':<9} data glyphs: CJK ideographs in the installed typefaces"]
    lines += ["", "`hdml-tf <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--verbose":  # read by the entry point (hdml_tf_entry.py)
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from hdml_tf import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name == "weights":
        if not rest or rest[0] not in ("import", "fetch", "check"):
            print(_WEIGHTS_USAGE, file=sys.stderr)
            return 2
        name, rest = f"weights {rest[0]}", rest[1:]
    elif name == "data":
        if not rest or rest[0] != "glyphs":
            print("usage: hdml-tf data glyphs --out DIR [--size 16] [--seed 0] "
                  "[--max-chars N]", file=sys.stderr)
            return 2
        name, rest = "data glyphs", rest[1:]
    elif name not in COMMANDS or " " in name:
        print(f"hdml-tf: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    with warnings.catch_warnings():  # restores Python's display when the command ends
        warnings.showwarning = _show_warning
        return run_command(name, rest)
