"""tb_bnstats at its defaults against no monitoring, on a GPU: ResNet-50 in
Keras (``keras.applications.ResNet50(weights=None)``, TensorFlow backend,
XLA: ``jit_compile=True``) and in PyTorch (torchvision's ``resnet50``, or a
hand-written one of the same layout when torchvision is not installed), eager
and under ``torch.compile``.

One framework per process (``--framework keras`` or ``--framework torch``;
the torch process imports neither TensorFlow nor Keras). In that process two
copies of the model train on the same random data on the device, one
monitored and one not; after a warm-up (tracing, XLA / inductor
compilation), they train alternately, one round of ``--steps`` steps each,
``--rounds`` times, so that anything else on the machine hits both alike.
A round is one ``fit`` call of ``--steps`` steps in Keras (the callback's
work at the start and end of ``fit``, the probe and the checks on the model
included), and ``--steps`` steps of a plain loop and an epoch end in
PyTorch; its wall time is taken with the device synchronized at its end.

Printed per model: the median round wall time of each variant and the ratio
of tb_bnstats' to the baseline's (the median of the rounds' ratios, and the
ratio of the totals), tb_bnstats' event-file bytes per BN layer per step
(snapshots and metrics included) and its device-to-host reads per 100 steps.
Not a pass/fail test: the figures go into docs/performance.md.

    bash bench/gpu.sh                                  # a fresh GPU machine: venvs, then both frameworks
    python bench/gpu.py --framework keras              # batch 64, 224x224, 8 rounds x 50 steps
    python bench/gpu.py --framework torch --compile off,on
    python bench/gpu.py --framework keras --smoke      # anywhere, CPU included: 32x32, batch 4, a few steps
"""

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

SMOKE = dict(image=32, batch=4, steps=3, rounds=2, classes=10)


def _ratios(seconds):
    """``(median of per-round ratios, ratio of totals)`` of tb_bnstats to none."""
    per_round = [a / b for a, b in zip(seconds["tb_bnstats"], seconds["none"])]
    return statistics.median(per_round), sum(seconds["tb_bnstats"]) / sum(seconds["none"])


def _report(title, seconds, log_dir, steps, layers, reads, ring, device):
    event_bytes = sum(p.stat().st_size for p in pathlib.Path(log_dir).glob("events.out.tfevents.*"))
    median_ratio, total_ratio = _ratios(seconds)
    print(f"\n{title} on {device}")
    print(f"  {'variant':12s} {'median round wall s':>20s}")
    for variant, values in seconds.items():
        print(f"  {variant:12s} {statistics.median(values):20.3f}")
    print(f"  wall-time ratio tb_bnstats / none: {median_ratio:.3f} (median of {len(seconds['none'])} rounds), "
          f"{total_ratio:.3f} (totals)")
    print(f"  tb_bnstats: {event_bytes / (steps * layers):.0f} event bytes per BN layer per step ({event_bytes} bytes, "
          f"{steps} steps x {layers} layers); {100.0 * reads / steps:.2f} device-to-host reads per 100 steps "
          f"({reads} reads, ring of {ring} steps)")


# -- Keras ---------------------------------------------------------------------------------


def keras_bench(args, root):
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    import tb_bnstats

    rng = np.random.default_rng(0)
    shape = (args.image, args.image, 3)
    x = rng.normal(size=(4 * args.batch, *shape)).astype("float32")
    y = rng.integers(0, args.classes, len(x))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch, drop_remainder=True).cache().repeat()
    runs = {}
    for variant in ("none", "tb_bnstats"):
        keras.utils.set_random_seed(0)
        model = keras.applications.ResNet50(weights=None, input_shape=shape, classes=args.classes)
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(), jit_compile=True)
        callbacks = [tb_bnstats.BNStatsCallback(root / "keras", verbose=0)] if variant == "tb_bnstats" else []
        runs[variant] = (model, callbacks)

    def fit(model, callbacks, steps):
        model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=callbacks)

    for model, callbacks in runs.values():  # warm-up: tracing and XLA compilation
        fit(model, callbacks, 2)
    seconds = {v: [] for v in runs}
    for _ in range(args.rounds):
        for variant, (model, callbacks) in runs.items():
            start = time.perf_counter()
            fit(model, callbacks, args.steps)  # fit returns once its last step's logs are on the host
            seconds[variant].append(time.perf_counter() - start)
    model, (cb,) = runs["tb_bnstats"]
    rec = cb._recorder
    devices = [d.device_type for d in tf.config.list_logical_devices()]
    _report(f"Keras ResNet50, batch {args.batch}, {args.image}x{args.image}, jit_compile=True, "
            f"{args.rounds} alternated rounds x {args.steps} steps", seconds, root / "keras",
            int(model.optimizer.iterations.numpy()), len(rec.layer_infos), rec.capture.reads,
            rec.capture.drain_every, "GPU" if "GPU" in devices else "CPU (no GPU found)")


# -- PyTorch -------------------------------------------------------------------------------


def torch_resnet50(classes):
    """torchvision's ``resnet50(weights=None)`` when torchvision imports, else
    the same layout written out here (bottleneck blocks 3, 4, 6, 3; 53 BN
    modules); a subclass with a ``forward`` of its own, so that
    ``torch.compile`` traces each copy anew (it caches graphs by code object
    and does not guard on module hooks by default)."""
    import torch
    from torch import nn

    try:
        from torchvision.models import ResNet, resnet50

        class Own(ResNet):
            def forward(self, x):
                return super().forward(x)

        model = resnet50(weights=None, num_classes=classes)
        model.__class__ = Own
        return model, "torchvision resnet50"
    except ImportError:
        pass

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            cout = width * 4
            self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
            self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
            self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = torch.relu(self.bn1(self.conv1(x)))
            out = torch.relu(self.bn2(self.conv2(out)))
            return torch.relu(self.bn3(self.conv3(out)) + identity)

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            layers, cin = [], 64
            for i, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
                stage = []
                for b in range(blocks):
                    stage.append(Bottleneck(cin, width, 2 if b == 0 and i > 0 else 1))
                    cin = width * 4
                layers.append(nn.Sequential(*stage))
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.fc = nn.Linear(2048, classes)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    class Own(ResNet50):
        def forward(self, x):
            return super().forward(x)

    return Own(), "hand-written ResNet-50 (no torchvision)"


def torch_bench(args, root, compiled):
    import torch
    from torch import nn

    from tb_bnstats.torch import BNStatsMonitor

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    x = torch.randn(4, args.batch, 3, args.image, args.image, device=device)
    y = torch.randint(0, args.classes, (4, args.batch), device=device)
    runs = {}
    for variant in ("none", "tb_bnstats"):
        torch.manual_seed(0)
        model, built = torch_resnet50(args.classes)
        model = model.to(device).train()
        log_dir = root / f"torch-compile-{compiled}"
        monitor = BNStatsMonitor(model, log_dir, verbose=0) if variant == "tb_bnstats" else None
        forward = torch.compile(model) if compiled else model
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        runs[variant] = (model, forward, opt, monitor)

    def train(model, forward, opt, monitor, steps):
        for i in range(steps):
            loss = nn.functional.cross_entropy(forward(x[i % 4]), y[i % 4])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if monitor is not None:
                monitor.step(loss=loss)
        if monitor is not None:
            monitor.epoch_end()
        if device.type == "cuda":
            torch.cuda.synchronize()

    for run in runs.values():  # warm-up (compilation)
        train(*run, 3)
    seconds = {v: [] for v in runs}
    for _ in range(args.rounds):
        for variant, run in runs.items():
            start = time.perf_counter()
            train(*run, args.steps)
            seconds[variant].append(time.perf_counter() - start)
    model, _, _, monitor = runs["tb_bnstats"]
    monitor.close()
    layers = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    _report(f"PyTorch {built}, batch {args.batch}, {args.image}x{args.image}, torch.compile={compiled}, "
            f"{args.rounds} alternated rounds x {args.steps} steps", seconds, log_dir, monitor._step, layers,
            monitor.capture.reads, monitor.capture.drain_every,
            torch.cuda.get_device_name() if device.type == "cuda" else "CPU (no GPU found)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=["keras", "torch"], required=True,
                        help="one framework per process")
    parser.add_argument("--compile", default="off,on", help="PyTorch: torch.compile off, on or off,on")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50, help="steps per round")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image", type=int, default=224, help="image side (ResNet50 takes 32 and up)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--smoke", action="store_true",
                        help=f"a run that works anywhere in a minute or two: {SMOKE}")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    root = pathlib.Path(tempfile.mkdtemp(prefix="tb_bnstats_gpu_"))
    if args.framework == "keras":
        keras_bench(args, root)
    else:
        for setting in args.compile.split(","):
            torch_bench(args, root, {"off": False, "on": True}[setting])
        leaked = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
        if leaked:
            print(f"  note: this PyTorch process imported {leaked}")


if __name__ == "__main__":
    main()
