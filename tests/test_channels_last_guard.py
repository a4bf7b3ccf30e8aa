"""Regression guard: training defaults to NCHW because torch's NHWC conv backward can corrupt the heap.

Run in a subprocess: if the default ever flips back to channels_last, the abort kills only the child.
"""

import subprocess
import sys

CODE = """
import torch
from metaedge.compress.train import TrainConfig, fit
from metaedge.data import DataConfig, load_data, make_loader
from metaedge.zoo import create_model
torch.manual_seed(0)
data = load_data(DataConfig(input_size=16))
model = create_model("resnet20", num_classes=10, in_chans=1, input_size=16, width_mult=0.5)
# 1259 training images in batches of 64 leave a last batch of 43: the shape that aborted in NHWC.
fit(model, make_loader(data.train, 64, True), make_loader(data.val, 256, False), TrainConfig(epochs=1), quiet=True)
print("survived")
"""


def test_default_training_layout_survives_odd_last_batch():
    assert TrainConfigDefault() is False
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "survived" in proc.stdout, proc.stderr[-2000:]


def TrainConfigDefault():
    from metaedge.compress.train import TrainConfig

    return TrainConfig().channels_last
