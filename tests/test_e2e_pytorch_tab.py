"""End to end for PyTorch: a real training run (a small ResNet-style net on
sklearn's digits, ``BNStatsMonitor`` and a ``torch.utils.tensorboard``
``SummaryWriter`` in the same run directory), written in a subprocess, served
by a real ``tensorboard --logdir`` and opened in chromium: module paths in
forward (depth) order, momentum in PyTorch's convention, the SummaryWriter's
loss on the loss chart, the layer view; screenshot docs/screenshots/pytorch.png."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from test_e2e_tab import CHROMIUM, SHOTS, browser, open_tab, points, tensorboard  # noqa: F401 (browser: the fixture)

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium not installed")

STEPS = 40
# Forward order; the head is registered first, so module order is not depth order.
LAYERS = ["bn1", "layer1.0.bn1", "layer1.0.bn2", "layer2.0.bn1", "layer2.0.bn2", "layer2.0.downsample.1", "fc.1"]
# As built: PyTorch's momentum (the weight of the new batch); the log keeps 1 - m.
MOMENTUM = {name: "momentum=0.1" for name in LAYERS} | {"fc.1": "momentum=0.01"}

TRAIN = textwrap.dedent("""
    import json, sys
    import torch
    from torch import nn
    from torch.utils.tensorboard import SummaryWriter
    from sklearn.datasets import load_digits
    from tb_bnstats.torch import BNStatsMonitor

    torch.manual_seed(0)
    torch.set_num_threads(1)

    class BasicBlock(nn.Module):  # torchvision's: conv-BN-ReLU-conv-BN + identity (or downsample)
        def __init__(self, cin, cout, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                               if stride != 1 or cin != cout else None)

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + (x if self.downsample is None else self.downsample(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            # The head first: registration order is not the forward order.
            self.fc = nn.Sequential(nn.Linear(16, 32, bias=False), nn.BatchNorm1d(32, momentum=0.01), nn.ReLU(),
                                    nn.Linear(32, 10))
            self.conv1 = nn.Conv2d(1, 8, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.layer1 = nn.Sequential(BasicBlock(8, 8))
            self.layer2 = nn.Sequential(BasicBlock(8, 16, stride=2))

        def forward(self, x):
            x = self.layer2(self.layer1(torch.relu(self.bn1(self.conv1(x)))))
            return self.fc(x.mean((2, 3)))

    run_dir, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    tb = SummaryWriter(run_dir)
    logged = {"loss/train": [], "loss/val": []}
    g = torch.Generator().manual_seed(0)
    with BNStatsMonitor(model, run_dir, snapshot_every_n_steps=20, verbose=0) as monitor:
        model.train()
        for step in range(1, steps + 1):
            idx = torch.randint(0, 1500, (32,), generator=g)
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss=loss)
            tb.add_scalar("loss/train", loss.item(), step)
            logged["loss/train"].append([step, loss.item()])
            if step % 20 == 0:
                model.eval()
                with torch.no_grad():
                    val = loss_fn(model(x[1500:]), y[1500:]).item()
                model.train()
                tb.add_scalar("loss/val", val, step)
                logged["loss/val"].append([step, val])
    tb.close()
    with open(out, "w") as f:
        json.dump(logged, f)
""")


def test_pytorch_run_in_the_tab(tmp_path, browser):  # noqa: F811 (the fixture imported above)
    logdir = tmp_path / "logs"
    run_dir, logged_path = logdir / "pytorch_resnet", tmp_path / "logged.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", TRAIN, str(run_dir), str(STEPS), str(logged_path)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    logged = json.loads(logged_path.read_text())
    assert len(os.listdir(run_dir)) == 2  # the monitor's event file and the SummaryWriter's: one run

    with tensorboard(str(logdir), min_runs=1) as base:
        page, frame, errors, _ = open_tab(browser, base)
        frame.wait_for_selector("tr[data-layer='fc.1']")
        rows = frame.locator("[data-role=layers] tbody tr")
        assert [rows.nth(i).get_attribute("data-layer") for i in range(rows.count())] == LAYERS
        # Momentum as the modules were built (PyTorch's 0.1, not the logged 0.9), the convention in the tooltip.
        for name in LAYERS:
            cell = frame.locator(f"tr[data-layer='{name}'] [data-role=momentum]")
            assert cell.text_content() == MOMENTUM[name], name
            assert cell.get_attribute("title").startswith("PyTorch: the weight of the new batch"), name
        assert "0.9" not in frame.locator("[data-role=layers] [data-role=momentum]").all_text_contents()
        # fc.1 (momentum=0.01) has not converged in 40 steps: BN001 in PyTorch's words.
        assert frame.locator("tr[data-layer='fc.1'] [data-badge=not_converged]").count() == 1
        finding = frame.locator("[data-role=findings-list] li[data-code=BN001]")
        finding.wait_for(state="visible")
        assert "momentum=0.01" in finding.text_content()

        # The loss chart: the monitor's train/loss and the SummaryWriter's scalars, on one step axis.
        frame.wait_for_selector("[data-role=loss] canvas")
        assert points(frame, "[data-role=heatmap]") > 0 and points(frame, "[data-role=loss]") > 0
        legend = frame.locator("[data-role=loss] .u-legend").text_content()
        assert "train/loss" in legend and "loss/train (run's own scalars)" in legend
        for label, tag in (("loss/train (run's own scalars)", "loss/train"),
                           ("loss/val (run's own scalars)", "loss/val")):
            shown = frame.evaluate("(label) => { const u = document.querySelector('[data-role=loss]').__uplot;"
                                   " const k = u.series.findIndex((s) => s.label === label);"
                                   " return k < 0 ? null : [u.data[0], u.data[k]]; }", label)
            assert shown is not None, label
            got = [[int(s), v] for s, v in zip(*shown) if v is not None]
            assert [s for s, _ in got] == [s for s, _ in logged[tag]], label
            assert [v for _, v in got] == pytest.approx([v for _, v in logged[tag]], rel=1e-6), label
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "pytorch.png"))

        # The layer view of a residual block's BN.
        frame.click("tr[data-layer='layer1.0.bn1']")
        frame.wait_for_selector("[data-role=chart-convergence] canvas")
        assert frame.locator("[data-role=layer-select]").input_value() == "layer1.0.bn1"
        assert points(frame, "[data-role=chart-mean]") > 0 and points(frame, "[data-role=chart-convergence]") > 0
        facts = frame.locator("[data-role=facts]").text_content()
        assert "momentum=0.1" in facts and "effective window 1/momentum: 10 steps" in facts
        assert "BatchNorm2d (pytorch)" in facts
        note = frame.locator("[data-role=convergence-note]").text_content()
        assert note.startswith("momentum=0.1 · effective window 10 steps · 95% after 29 updates")
        assert errors == []
