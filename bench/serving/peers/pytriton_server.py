"""nvidia-pytriton: Triton's HTTP front end + dynamic batcher (max_batch_size 16, no queue delay),
the ORT session inside a @batch infer function.  argv: http_port grpc_port metrics_port"""

import sys

import numpy as np
from common import model_paths, session
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

SHAPES = {"cnn": ((3, 64, 64), (10,)), "mlp": ((16,), (4,))}


def make_infer(sess):
    @batch
    def infer(x):
        return {"y": sess.run(["y"], {"x": x})[0]}

    return infer


def main() -> None:
    http, grpc, metrics = (int(a) for a in sys.argv[1:4])
    cfg = TritonConfig(http_port=http, grpc_port=grpc, metrics_port=metrics, log_verbose=0)
    with Triton(config=cfg) as triton:
        for name, path in model_paths().items():
            ins, outs = SHAPES[name]
            triton.bind(model_name=name, infer_func=make_infer(session(path)),
                        inputs=[Tensor(name="x", dtype=np.float32, shape=ins)],
                        outputs=[Tensor(name="y", dtype=np.float32, shape=outs)],
                        config=ModelConfig(max_batch_size=16, batcher=DynamicBatcher(max_queue_delay_microseconds=0)))
        triton.serve()


if __name__ == "__main__":
    main()
