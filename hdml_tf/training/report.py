"""What a finished run reports: test metrics, the authors' selection, the table, the
export."""

import os
import sys

from hdml_tf import config as config_lib
from hdml_tf import export as export_lib
from hdml_tf.evaluation import evaluate
from hdml_tf.training import head_statistics, inputs
from hdml_tf.workdir import WorkdirError

EVAL_METRICS = ("recall", "nmi", "f1", "map@r", "r_precision")


def authors_selected(callback, train_config):
    """The authors' number: the evaluation with the best test NMI, and its step."""
    if callback.best_step is None:
        return None
    best = next(e for e in callback.evaluations if e["step"] == callback.best_step)
    metrics = {k[len("test_"):]: v for k, v in best.items() if k.startswith("test_")}
    t = train_config
    return {"selected_on": "test", "criterion": "best test NMI over the authors' "
            f"evaluation steps (every {t.authors_eval_every_initial}, every "
            f"{t.authors_eval_every} from step 5000)",
            "step": callback.best_step, "metrics": metrics}


def authors_note(selected, train_config):
    if not selected:
        return ("authors' protocol: no evaluation step was reached (first at step "
                f"{train_config.authors_eval_every_initial})")
    return (f"authors' protocol: step {selected['step']}, chosen for its test NMI (selected "
            "on the test set,\n  as their code did; the first column is the final "
            "checkpoint, the number to compare)")


def evaluate_model(model, config, split):
    data = inputs.evaluation_dataset(config, split, model.embedder.preprocessing)
    return evaluate(model.embedder, data, ks=config.train.ks, metrics=EVAL_METRICS,
                    kmeans_nredo=config.train.kmeans_restarts, seed=config.train.kmeans_seed)


def export_workdir(workdir, config, log=print, model=None, head_statistics=None):
    """Export the embedder to ``<export_dir>/<export_name>/<version>/``.

    ``model``: the run's HDML model, if in memory (else ``model.keras`` is read);
    ``head_statistics``: what `hdml_tf.training.head_statistics.reestimate` returned if
    the head's statistics were re-estimated (recorded in the export's metadata).
    Returns the model base directory, or None when the export failed (the run's
    results stand; the error is printed as ``hdml-tf export`` prints it).
    """
    out = os.path.join(config.train.export_dir, config.train.export_name or config.name)
    try:
        export_lib.export_run(workdir, out, log=log, model=model, config=config,
                              head_statistics=head_statistics)
    except (export_lib.ExportError, WorkdirError, ValueError) as error:
        print(f"hdml-tf export: error: {error}", file=sys.stderr)
        return None
    return out


def export_checkpoint(checkpoint, out_dir, head_statistics_mode="auto", log=print,
                      **options):
    """``hdml-tf export``: export a workdir's or ``.keras`` file's embedder, its head's
    statistics first re-estimated from the run's real training images when
    ``head_statistics_mode`` asks (`hdml_tf.training.head_statistics.wanted`: by
    default, when they carry synthetic features). ``options`` as for
    `hdml_tf.export.export_run`. Returns the new version directory.
    """
    loaded = export_lib.load_checkpoint(checkpoint, config_path=options.get("config_path"))
    config = config_lib.from_dict(loaded["config"]) if loaded["config"] else None
    info = None
    if head_statistics.wanted(head_statistics_mode, config.model if config else None):
        if config is None:
            raise export_lib.ExportError(
                f"{checkpoint!r} has no config.json beside it, so its head's statistics "
                "cannot be re-estimated from its training images; --head-statistics "
                "trained exports them as trained")
        info = head_statistics.reestimate(loaded["embedder"], config)
        log(f"head statistics: re-estimated from {info['images']} real training images "
            f"(the trained moving variance was {info['variance_ratio']:.2f}x theirs)")
    return export_lib.export_run(checkpoint, out_dir, log=log, model=loaded["embedder"],
                                 head_statistics=info, **options)


def summary_table(results, paper=None, keys=None):
    """Results side by side: one column per run, one row per metric (in %)."""
    runs = list(results)
    keys = keys or [k for k in next(iter(results.values())) if isinstance(
        next(iter(results.values()))[k], (int, float))]
    header = ["metric"] + runs + (["paper"] if paper else [])
    rows = []
    for key in keys:
        row = [key] + [f"{100 * results[r][key]:.2f}" if key in results[r] else "-"
                       for r in runs]
        if paper:
            row.append(f"{paper[key]:.1f}" if key in paper else "-")
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
