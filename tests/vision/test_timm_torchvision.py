"""Real timm and torchvision models (``pretrained=False`` / ``weights=None``:
nothing downloaded): a timm model under Lightning's ``Trainer.fit`` with the
callback, and torchvision's resnet18 in the loop of torchvision's reference
``train.py`` with the README's lines. Every BN module, every step: the
moments are numpy's of its real input, the moving statistics its buffers."""

import lightning.pytorch as L
import timm
import torch
import torchvision
from loops_common import BNRecord, check_run, images
from torch import nn

import tb_bnstats
from tb_bnstats.lightning import BNStatsCallback
from tb_bnstats.torch import BNStatsMonitor

torch.set_num_threads(1)


class Classifier(L.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Record(L.Callback):
    def __init__(self, model):
        self.record = BNRecord(model)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.record.step_done(trainer.global_step)


def test_a_timm_model_under_lightning(tmp_path):
    torch.manual_seed(0)
    module = Classifier(timm.create_model("resnet10t", pretrained=False, num_classes=3))
    record = Record(module)
    assert len(record.record.named) >= 10
    x, y = images(32, size=32)
    trainer = L.Trainer(default_root_dir=str(tmp_path), max_epochs=1, accelerator="cpu", log_every_n_steps=1,
                        callbacks=[BNStatsCallback(snapshot_every_n_steps=1), record], enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8))
    assert record.record.steps == [1, 2, 3, 4]
    check_run(tb_bnstats.load(trainer.logger.log_dir)["version_0"], record.record)


def test_torchvision_resnet18_in_the_reference_loop(tmp_path):
    """torchvision's references/classification/train.py, cut to its loop,
    with the README's three lines (marked)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    record = BNRecord(model)
    assert len(record.named) == 20
    x, y = images(32, size=32)
    data_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    criterion, optimizer = nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01)
    start_epoch, epochs = 0, 2
    bn_monitor = BNStatsMonitor(model, tmp_path / "bn", start_step=start_epoch * len(data_loader),  # README
                                snapshot_every_n_steps=1)
    for epoch in range(start_epoch, epochs):
        model.train()
        for i, (image, target) in enumerate(data_loader):
            output = model(image)
            loss = criterion(output, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bn_monitor.step(loss=loss, step=epoch * len(data_loader) + i + 1)  # README
            record.step_done(epoch * len(data_loader) + i + 1)
        model.eval()
        with torch.inference_mode():
            model(x[:8])  # evaluate(): not training, not logged
    bn_monitor.close()  # README
    assert record.steps == list(range(1, 9))
    check_run(tb_bnstats.load(tmp_path)["bn"], record)
