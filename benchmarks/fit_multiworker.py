"""Does Keras' ``fit`` run under MultiWorkerMirroredStrategy here? (Why ``hdml-tf train``
drives its own loop: hdml_tf/training/loop.py.)

Starts two worker processes on localhost ports with their own ``TF_CONFIG``; each
builds a one-layer ``keras.Sequential`` under the strategy and calls ``fit`` for two
epochs of four steps, at each ``--per-execution`` value, and prints what each worker
got (the losses, or the exception's first line).

    python benchmarks/fit_multiworker.py                 # steps_per_execution 1 and 2
"""

import argparse
import json
import os
import socket
import subprocess
import sys

WORKER = r"""
import json, os, sys
import numpy as np
import tensorflow as tf, keras
strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse", steps_per_execution=int(sys.argv[1]))
x = np.random.default_rng(0).random((64, 4), np.float32)
y = np.random.default_rng(1).random((64, 3), np.float32)
data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8)
try:
    history = model.fit(data, steps_per_epoch=4, epochs=2, verbose=0)
    print("RESULT ok", history.history["loss"])
except Exception as error:  # noqa: BLE001 -- the point is to see it
    print("RESULT", type(error).__name__, str(error).splitlines()[0][:120])
"""


def _port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run(per_execution):
    """Both workers' RESULT lines for one ``steps_per_execution``."""
    cluster = {"worker": [f"localhost:{_port()}" for _ in range(2)]}
    workers = []
    for index in range(2):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen([sys.executable, "-c", WORKER, str(per_execution)],
                                        env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True))
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    return [next((l[len("RESULT "):] for l in out.splitlines() if l.startswith("RESULT")),
                 "no result") for out in outputs]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-execution", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    import keras
    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}\n")
    print("| steps_per_execution | worker 0 | worker 1 |\n|---|---|---|")
    for n in args.per_execution:
        first, second = run(n)
        print(f"| {n} | {first} | {second} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
