"""LitServe: one LitAPI per model (/predict/cnn, /predict/mlp), batching up to 16 with a small
batch_timeout, the ORT session in LitServe's inference worker.  LitServe parses every request body
as JSON (a ``Request``-annotated decode_request gets ``await request.json()``), so the "binary"
variant is the raw float32 bytes base64-encoded inside JSON: {"b64": "...", "shape": [...]}.
argv: port batch_timeout_s"""

import base64
import sys

import litserve as ls
import numpy as np
from common import model_paths, session


class OrtAPI(ls.LitAPI):
    def __init__(self, path: str, **kw):
        super().__init__(**kw)
        self.path = path

    def setup(self, device):
        self.sess = session(self.path)

    def decode_request(self, request):
        if "b64" in request:
            return np.frombuffer(base64.b64decode(request["b64"]), dtype=np.float32).reshape(request["shape"])
        return np.asarray(request["x"], dtype=np.float32)

    def batch(self, inputs):
        return np.concatenate(inputs, axis=0)

    def predict(self, x):
        return self.sess.run(["y"], {"x": x})[0]

    def unbatch(self, output):
        return [output[i:i + 1] for i in range(output.shape[0])]

    def encode_response(self, output):
        return {"y": output.tolist()}


def main() -> None:
    port, timeout = int(sys.argv[1]), float(sys.argv[2])
    apis = [OrtAPI(p, max_batch_size=16, batch_timeout=timeout, api_path=f"/predict/{n}")
            for n, p in model_paths().items()]
    server = ls.LitServer(apis, accelerator="cpu", workers_per_device=1, fast_queue=True, timeout=60)
    server.run(host="127.0.0.1", port=port, num_api_servers=1, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
