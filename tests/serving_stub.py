"""A stand-in for TF Serving's REST predict API, for the tests of REST clients.

TF Serving cannot run here (no docker), so the notebook's REST client is checked against
this: ``POST /v1/models/<name>:predict`` with the row format (``{"signature_name":
"serve_bytes", "instances": [{"image_bytes": {"b64": ...}}, ...]}``) answers
``{"predictions": [[...], ...]}`` from the SavedModel's own signature, and a request the
model refuses (over ``max_batch``, an undecodable image) answers HTTP 400 with
``{"error": ...}``, as TF Serving does. The model directory is resolved at each request,
so the server can start before the model is exported.
"""

import base64
import http.server
import json
import threading

import tensorflow as tf

from hdml_tf import serving_tools


class ServingStub:
    """Serve ``model_dir`` on 127.0.0.1 in a background thread (use as a context manager).

    Attributes:
      url: the ``:predict`` URL of the model.
      request_sizes: the number of instances of every request answered or refused.
    """

    def __init__(self, model_dir, name="model"):
        self.model_dir, self.request_sizes, self._models = model_dir, [], {}
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, answer = stub.predict(body)
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):  # keep the test output clean
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/v1/models/{name}:predict"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def predict(self, body):
        """(HTTP status, JSON answer) for one request body."""
        instances = body["instances"]
        self.request_sizes.append(len(instances))
        contents = [base64.b64decode(row["image_bytes"]["b64"]) for row in instances]
        path = serving_tools.resolve_model_dir(self.model_dir)
        if path not in self._models:
            self._models[path] = serving_tools.load_model(path)
        model = self._models[path]
        function = model.signature(body.get("signature_name", "serving_default"))
        try:
            out = function(image_bytes=tf.constant(contents, tf.string))["embedding"]
        except tf.errors.InvalidArgumentError as error:
            return 400, {"error": error.message}
        return 200, {"predictions": out.numpy().tolist()}

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
