"""Benchmark of hdml_tf.evaluation at Stanford Online Products scale.

Run:  python benchmarks/evaluation.py            (full: SOP size, several minutes)
      python benchmarks/evaluation.py --smoke    (small sizes, seconds)

Data: generated, clustered embeddings of SOP shape (60,502 x 512, 11,316 classes of 5 or
6 images, L2-normalised): a random unit centre per class plus Gaussian noise, the noise
scale chosen so Recall@1 is in the range a real SOP model reaches (about 0.6 to 0.7), so
every metric is non-trivial.

Each stage runs in its own fresh Python subprocess that regenerates the data from the
seed, and reports:
  * time: wall-clock seconds of the stage only (data generation and imports excluded);
  * peak RSS: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of that subprocess at the
    end of the stage (the whole process: interpreter, numpy/faiss/sklearn and the data),
    and the RSS right before the stage (``base``), read from /proc/self/statm, so the
    stage's own increment is peak - base.

Stages:
  recall / ours-faiss, ours-numpy: `hdml_tf.evaluation.evaluate_embeddings` recall (neighbour table +
      metric) with each backend.
  recall / faiss-flat: a bare faiss IndexFlatIP search of all queries at once with
      k = K+1 and the metric computed directly (the library baseline).
  recall / naive-numpy: the full N x N similarity matrix, diagonal masked, full argsort
      of every row (only at the small size, where the matrix fits).
  evaluate: `evaluate_embeddings` with Recall@1/10/100/1000, MAP@R, R-precision, NMI, F1
      on the full SOP-size data (neighbour table and k-means timed separately too).
  kmeans-niter: NMI of faiss k-means against its iteration cap, with the number of
      iterations faiss actually ran (it stops when the objective stops changing).

The machine is shared (2 cores), so timings are noisy; the numbers in the final report
come from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

SOP = dict(n=60_502, d=512, classes=11_316)
NOISE = 2.3  # norm of the Gaussian noise relative to the unit class centre; sets R@1


def make_data(n, d, classes, seed=0, noise=NOISE):
    """Clustered unit embeddings: every class gets floor or ceil of n / classes points."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    centres = rng.standard_normal((classes, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[labels]
    x += (noise / np.sqrt(d)) * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _recall_from_first(first, ks):
    return {k: float(np.mean(first < k)) for k in ks}


def stage(name, n, d, classes, ks):
    """Runs inside the subprocess; returns a dict."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import faiss  # noqa: F401

    from hdml_tf import evaluation as ev
    from hdml_tf.evaluation import clustering

    x, y = make_data(n, d, classes)
    extra = {}
    base = _rss_mb()
    t0 = time.perf_counter()
    if name == "ours-faiss":
        res = ev.evaluate_embeddings(x, y, ks, ("recall",), backend="faiss")
        res = {k: res[f"recall@{k}"] for k in ks}
    elif name == "ours-numpy":
        res = ev.evaluate_embeddings(x, y, ks, ("recall",), backend="numpy")
        res = {k: res[f"recall@{k}"] for k in ks}
    elif name == "faiss-flat":
        index = faiss.IndexFlatIP(d)
        index.add(x)
        _, idx = index.search(x, max(ks) + 1)
        # Drop the query itself (first column when it is its own best match; generated
        # data has no duplicates, so it always is).
        rel = y[idx[:, 1:]] == y[:, None]
        first = np.where(rel.any(1), rel.argmax(1), rel.shape[1])
        res = _recall_from_first(first, ks)
    elif name == "naive-numpy":
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        order = np.argsort(-s, axis=1)[:, : max(ks)]
        rel = y[order] == y[:, None]
        first = np.where(rel.any(1), rel.argmax(1), rel.shape[1])
        res = _recall_from_first(first, ks)
    elif name == "evaluate":
        t = time.perf_counter()
        res = ev.evaluate_embeddings(x, y, ks, ("recall", "map@r", "r_precision"))
        extra["t_retrieval"] = time.perf_counter() - t
        t = time.perf_counter()
        res.update(clustering.clustering_metrics(x, y))
        extra["t_clustering"] = time.perf_counter() - t
    elif name.startswith("kmeans-niter"):
        # faiss directly, to read how many iterations it ran (len(obj)): it stops early
        # once the assignment no longer changes the objective.
        niter = int(name.split("=")[1])
        km = faiss.Kmeans(d, classes, niter=niter, seed=0, verbose=False,
                          max_points_per_centroid=1 << 30, min_points_per_centroid=1)
        km.train(x)
        _, assign = km.index.search(x, 1)
        res = {"nmi": clustering.nmi_from_clusters(y, assign.ravel()),
               "f1": clustering.pairwise_f1_from_clusters(y, assign.ravel())}
        extra["iterations_run"] = len(km.obj)
    else:
        raise ValueError(name)
    elapsed = time.perf_counter() - t0
    res = {str(k): v for k, v in res.items()}
    return dict(stage=name, n=n, time_s=elapsed, base_mb=base, peak_mb=_peak_mb(),
                load=os.getloadavg()[0], result=res, **extra)


def run_stage(name, n, d, classes, ks):
    cmd = [sys.executable, os.path.abspath(__file__), "--stage", name, "--n", str(n),
           "--d", str(d), "--classes", str(classes), "--ks", ",".join(map(str, ks))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"stage {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt_row(r, ref=None):
    ratio = "" if ref is None else f"{r['time_s'] / ref['time_s']:8.2f}x"
    stage_mb = r["peak_mb"] - r["base_mb"]
    ref_mb = None if ref is None else max(ref["peak_mb"] - ref["base_mb"], 1)
    mratio = "" if ref is None else f"{stage_mb / ref_mb:8.2f}x"
    rec = " ".join(f"{float(v):.4f}" for k, v in r["result"].items() if k.isdigit())
    return (f"{r['stage']:<14}{r['n']:>8}{r['time_s']:>10.2f}{r['peak_mb']:>10.0f}"
            f"{r['peak_mb'] - r['base_mb']:>10.0f}{ratio:>10}{mratio:>10}{r['load']:>6.1f}"
            f"   {rec}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--stage")
    p.add_argument("--n", type=int)
    p.add_argument("--d", type=int)
    p.add_argument("--classes", type=int)
    p.add_argument("--ks", default="1,10,100,1000")
    p.add_argument("--skip-numpy-full", action="store_true",
                   help="skip our numpy backend at full size (slowest stage)")
    p.add_argument("--niters", default="1,5,20", help="k-means iteration sweep")
    a = p.parse_args()
    if a.stage:
        ks = [int(k) for k in a.ks.split(",")]
        print(json.dumps(stage(a.stage, a.n, a.d, a.classes, ks)))
        return

    full = dict(n=2_000, d=64, classes=400) if a.smoke else SOP
    small_n = 1_000 if a.smoke else 12_000
    small = dict(n=small_n, d=full["d"], classes=max(2, small_n * full["classes"] // full["n"]))
    ks = [1, 10, 100] if a.smoke else [1, 10, 100, 1000]
    head = (f"{'method':<14}{'N':>8}{'time s':>10}{'peak MB':>10}{'stage MB':>10}"
            f"{'t ratio':>10}{'mem ratio':>10}{'load':>6}   recall@{','.join(map(str, ks))}")
    print(f"faiss threads={__import__('faiss').omp_get_max_threads()}, cpus={os.cpu_count()}")
    print("peak MB = peak RSS of the stage's process; stage MB = peak - RSS before stage; "
          "load = 1-min load average at the end of the stage (the machine is shared)")

    print(f"\n## Recall@K, small size (N={small['n']}, naive full matrix fits); "
          "ratios relative to naive-numpy")
    print(head)
    rows = {m: run_stage(m, small["n"], small["d"], small["classes"], ks)
            for m in ("naive-numpy", "ours-numpy", "ours-faiss", "faiss-flat")}
    for m, r in rows.items():
        print(fmt_row(r, rows["naive-numpy"]), flush=True)

    print(f"\n## Recall@K, SOP size (N={full['n']}, d={full['d']}, {full['classes']} "
          "classes); ratios relative to faiss-flat")
    print(head)
    methods = ["faiss-flat", "ours-faiss"] + ([] if a.skip_numpy_full else ["ours-numpy"])
    rows = {}
    for m in methods:
        rows[m] = run_stage(m, full["n"], full["d"], full["classes"], ks)
        print(fmt_row(rows[m], rows["faiss-flat"]), flush=True)

    print(f"\n## evaluate_embeddings at SOP size: Recall@{','.join(map(str, ks))}, "
          "MAP@R, R-precision, NMI, F1")
    r = run_stage("evaluate", full["n"], full["d"], full["classes"], ks)
    print(f"total {r['time_s']:.1f} s (retrieval {r['t_retrieval']:.1f} s, k-means + "
          f"NMI/F1 {r['t_clustering']:.1f} s), peak RSS {r['peak_mb']:.0f} MB "
          f"(before: {r['base_mb']:.0f} MB), load {r['load']:.1f}")
    print("metrics:", json.dumps({k: round(v, 4) for k, v in r["result"].items()}))

    if a.niters:
        print("\n## faiss k-means iterations vs NMI/F1 at SOP size")
        print(f"{'niter':>6}{'ran':>6}{'time s':>10}{'NMI':>10}{'F1':>10}")
        for it in a.niters.split(","):
            r = run_stage(f"kmeans-niter={it}", full["n"], full["d"], full["classes"], ks)
            print(f"{it:>6}{r['iterations_run']:>6}{r['time_s']:>10.1f}"
                  f"{r['result']['nmi']:>10.4f}"
                  f"{r['result']['f1']:>10.4f}  load {r['load']:.1f}", flush=True)


if __name__ == "__main__":
    main()
