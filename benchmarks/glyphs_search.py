"""The hyper-parameter search behind the glyphs_npair preset (issue 25, item 3).

  python benchmarks/glyphs_search.py WORKDIR [--steps 500] [--seed 0]

Every candidate trains with `hdml-tf train --config glyphs_npair` plus its overrides and
is scored on the *validation* characters only (leave-one-out and across typeface
families, benchmarks/glyphs_protocol.py evaluate --split val); the test characters are
never looked at (each run's own end-of-training test evaluation is cut to 1,000 images
and ignored). Stage 1 chooses the learning rate on the baseline, stage 2 HDML's α and β
at that rate (the candidate with the best val MAP@R wins each stage). Reruns skip
candidates already scored. Prints a markdown table.
"""

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import glyphs_protocol  # noqa: E402

# Stage 1: the baseline's learning rate (for the metric network; the same for both arms).
# Stage 2, at the rate stage 1 chose: HDML's schedule constants, the authors' 90 / 1e4
# and the Fashion-MNIST preset's scaled-down 1 / 1e3.
LEARNING_RATES = ("1e-3", "3e-3")
SCHEDULES = (("90", "1e4"), ("1", "1e3"))


def candidates_of_stage(stage, lr=None):
    """(name, overrides) of one stage of the search."""
    if stage == 1:
        return [(f"baseline lr {r}", ["model.hdml=false", f"optim.lr_metric={r}"])
                for r in LEARNING_RATES]
    return [(f"HDML lr {lr} a{a} b{b}", [f"optim.lr_metric={lr}", f"optim.lr_gen={lr}",
                                           f"optim.lr_cls={lr}", f"model.alpha={a}",
                                           f"model.beta={b}"]) for a, b in SCHEDULES]


def run(workdir, name, overrides, steps, seed):
    slug = name.replace(" ", "_")
    out = os.path.join(workdir, slug)
    scored = os.path.join(workdir, slug + ".json")
    if os.path.exists(scored):
        with open(scored) as f:
            return json.load(f)
    sets = overrides + [f"train.steps={steps}", f"train.seed={seed}",
                        "data.max_eval_images=1000", "train.export=false"]
    cmd = ["hdml-tf", "train", "--config", "glyphs_npair", "--workdir", out]
    for s in sets:
        cmd += ["--set", s]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    result = glyphs_protocol.evaluate_workdir(out, "val")
    with open(scored, "w") as f:
        json.dump(result, f, indent=1)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    rows, best = [], {}
    for stage in (1, 2):
        lr = max(best, key=best.get) if best else None
        for i, (name, overrides) in enumerate(candidates_of_stage(stage, lr)):
            r = run(args.workdir, name, overrides, args.steps, args.seed)
            loo, across = r["leave_one_out"], r["across_families"]
            if stage == 1:
                best[LEARNING_RATES[i]] = loo["map@r"]
            rows.append(f"| {name} | {' '.join(overrides)} | {100 * loo['map@r']:.2f} | "
                        f"{100 * loo['r_precision']:.2f} | {100 * loo['recall@1']:.2f} | "
                        f"{100 * across['map@r']:.2f} | {100 * across['recall@1']:.2f} |")
    print(f"\nval characters, {args.steps} steps, seed {args.seed}")
    print("| candidate | overrides | MAP@R | R-precision | R@1 | across MAP@R | across R@1 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
