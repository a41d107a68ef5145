"""Run one loop config with dotted overrides, in fp32, and print its paired round 0 -> last and
round 0 -> 1 changes on one line: for sweeping sampling seeds and settings on a GPU, where several
of these run side by side. On a GPU it turns off bf16 and TF32 so the arithmetic is the CPU's
(fp32); the sampled tokens still differ from a CPU run's, so a seed here is another draw, not a
copy of the CPU run with that seed.

    python docs/scripts/loop_seeds.py configs/demo.yaml RUN_DIR '{"eval.n": 800, "seed": 3}'

Up to 8 of these ran at once on one H100 (each `OMP_NUM_THREADS=2`).
"""

import json
import sys
import time

import torch

import sharpen.backends.hf as hf
from sharpen.loop.config import load_config
from sharpen.loop.runner import LoopRunner

if torch.cuda.is_available():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.cuda.is_bf16_supported = lambda *a, **k: False  # the trainer then keeps fp32
    _init = hf.HFBackend.__init__

    def _fp32_init(self, *args, dtype=None, **kwargs):
        _init(self, *args, dtype=torch.float32, **kwargs)

    hf.HFBackend.__init__ = _fp32_init


def main() -> None:
    cfg_path, out = sys.argv[1], sys.argv[2]
    over = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    cfg = load_config(cfg_path, over)
    t = time.time()
    runner = LoopRunner(cfg, out, say=lambda s: print(s, flush=True))
    res = runner.run_all()
    first = runner.paired(0, 1)
    print("RESULT", cfg_path, json.dumps(over), json.dumps(res["paired"]), "r0->r1", json.dumps(first),
          f"{time.time() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
