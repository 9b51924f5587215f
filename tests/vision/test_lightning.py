"""tb_bnstats.lightning.BNStatsCallback in real ``Trainer.fit`` runs (CPU):
every logged step is ``trainer.global_step``, each step's moments are numpy's
of the module's real input (the last micro-batch's under accumulation), the
moving statistics are the buffers; validation is not logged; the run is the
TensorBoard logger's, beside the module's own scalars in the tab; resuming
from a checkpoint continues the step axis; the diagnosis."""

import logging

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from loops_common import BNRecord, check_run, check_tab, images, run_watching_imports
from torch import nn

import tb_bnstats
from tb_bnstats.format import metadata
from tb_bnstats.lightning import BNStatsCallback

torch.set_num_threads(1)


class Net(L.LightningModule):
    """conv-BN-ReLU, pooled, Linear-BN1d-ReLU-Linear; logs ``train_loss`` and ``val_loss``."""

    def __init__(self, momentum=0.1, lr=0.05):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6, momentum=momentum),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 8, bias=False),
                                 nn.BatchNorm1d(8, momentum=momentum), nn.ReLU(), nn.Linear(8, 3))
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", nn.functional.cross_entropy(self(x), y))

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Record(L.Callback):
    """Our own record of each optimizer step: the BN inputs of its last
    training forward and the buffers after it, at the global_step after it."""

    def __init__(self, model):
        self.record, self.last = BNRecord(model), None

    def on_train_start(self, trainer, pl_module):
        self.last = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self.last:
            self.last = trainer.global_step
            self.record.step_done(trainer.global_step)


def loader(n=64, batch=8, seed=0, size=16):
    x, y = images(n, size=size, seed=seed)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


def trainer(root, callbacks, **kwargs):
    return L.Trainer(default_root_dir=str(root), callbacks=callbacks, accelerator="cpu", enable_progress_bar=False,
                     enable_model_summary=False, log_every_n_steps=1, **kwargs)


def test_fit_with_gradient_accumulation_logs_optimizer_steps_exactly(tmp_path):
    model = Net()
    record = Record(model)
    callback = BNStatsCallback(snapshot_every_n_steps=1)
    fit = trainer(tmp_path, [callback, record], max_epochs=2, accumulate_grad_batches=2)
    fit.fit(model, loader(), loader(n=16, seed=1))
    assert fit.global_step == 8 and record.record.steps == list(range(1, 9))  # 2 epochs x 8 batches / 2
    log_dir = fit.logger.log_dir
    assert callback.monitor.log_dir == log_dir and log_dir.endswith("lightning_logs/version_0")
    runs = tb_bnstats.load(log_dir)
    run = runs["version_0"]
    check_run(run, record.record)  # validation forwards (sanity check, epoch ends) are not training: not logged
    assert [tracked for _, _, tracked in (record.record.running[-1]["net.1"],)] == [16]  # every micro-batch
    begin = run.train_begins[-1]
    assert begin["probe"] == metadata.PROBE_FIRST_TRAINING_BATCH
    check_tab(tmp_path / "lightning_logs", "version_0", "train_loss")


def test_diagnosis_momentum_0_01_is_bn001_and_healthy_is_silent(tmp_path, caplog):
    found = {}
    for label, momentum in (("slow", 0.01), ("healthy", 0.5)):
        callback = BNStatsCallback()  # the default probe: the first training batch
        with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
            trainer(tmp_path / label, [callback], max_epochs=4).fit(Net(momentum=momentum, lr=0.02),
                                                                    loader(n=128, batch=32))
        found[label] = [f.code for f in callback.findings]
        assert callback.findings == tb_bnstats.diagnose(tmp_path / label / "lightning_logs")  # as logged
    assert found == {"slow": ["BN001"], "healthy": []}
    said = [r.getMessage() for r in caplog.records if r.name == "lightning.pytorch"]
    assert any("BN001" in m for m in said) and any("no BatchNormalization problem found" in m for m in said), said


def test_resume_from_a_checkpoint_continues_the_step_axis(tmp_path):
    model = Net()
    first = trainer(tmp_path, [BNStatsCallback(snapshot_every_n_steps=1)], max_epochs=1,
                    logger=TensorBoardLogger(str(tmp_path), version="run"))
    first.fit(model, loader())
    checkpoint = tmp_path / "epoch1.ckpt"
    first.save_checkpoint(checkpoint)
    resumed = Net()
    record = Record(resumed)
    second = trainer(tmp_path, [BNStatsCallback(snapshot_every_n_steps=1), record], max_epochs=2,
                     logger=TensorBoardLogger(str(tmp_path), version="run"))
    second.fit(resumed, loader(), ckpt_path=str(checkpoint))
    run = tb_bnstats.load(tmp_path / "lightning_logs")["run"]
    assert list(run.layers["net.1"].steps) == list(range(1, 17))  # one axis: 8 steps, then 8 more from 8
    assert [b["step"] for b in run.train_begins] == [0, 8]
    assert record.record.steps == list(range(9, 17))
    i = list(run.layers["net.1"].snapshot_steps).index(16)
    mean, var, tracked = record.record.running[-1]["net.1"]
    assert run.layers["net.1"].series["updates"][i] == tracked == 16
    torch.testing.assert_close(torch.as_tensor(run.layers["net.1"].snapshots["moving_mean"][i]),
                               torch.as_tensor(mean), rtol=1e-6, atol=1e-7)


def test_validate_test_and_predict_are_not_logged(tmp_path):
    model = Net()
    fit = trainer(tmp_path, [BNStatsCallback()], max_epochs=1)
    fit.fit(model, loader())
    fit.validate(model, loader(n=16))
    fit.test(model, loader(n=16))
    fit.predict(model, loader(n=16))
    run = tb_bnstats.load(fit.logger.log_dir)["version_0"]
    assert list(run.layers["net.1"].steps) == list(range(1, 9))
    assert len(run.train_begins) == 1


def test_bad_arguments_fail_at_construction():
    with pytest.raises(TypeError, match="log_every"):
        BNStatsCallback(log_every=2)
    with pytest.raises(ValueError, match="log_every_n_steps"):
        BNStatsCallback(log_every_n_steps=0)
    with pytest.raises(ValueError, match="loss_fn"):
        BNStatsCallback(loss_fn=3)


def test_a_lightning_process_imports_no_tensorflow_keras_or_jax(tmp_path):
    """Not even an attempt (TensorFlow is not in this lane's venv). The
    trainer has no logger here: Lightning's TensorBoardLogger writes through
    torch.utils.tensorboard, which imports TensorFlow when it is installed."""
    attempted = run_watching_imports("""
        import torch, lightning.pytorch as L
        from test_lightning import Net, loader, trainer
        from tb_bnstats.lightning import BNStatsCallback
        callback = BNStatsCallback("logs/run")
        trainer(".", [callback], max_epochs=1, logger=False).fit(Net(), loader())
        assert callback.findings is not None
    """, cwd=tmp_path)
    assert attempted == []
    assert list(tb_bnstats.load(tmp_path / "logs")["run"].layers["net.1"].steps) == list(range(1, 9))


def test_the_watch_sees_an_import_attempt(tmp_path):
    attempted = run_watching_imports("""
        import importlib.util
        importlib.util.find_spec("jax")  # a look-up, not an import
        try:
            import tensorflow
        except ImportError:
            pass
    """, cwd=tmp_path)
    assert attempted == ["tensorflow"]


def test_the_older_pytorch_lightning_trainer_takes_it(tmp_path):
    import pytorch_lightning as PL

    class Old(PL.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = Net().net

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    fit = PL.Trainer(default_root_dir=str(tmp_path), max_epochs=1, accelerator="cpu", enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[BNStatsCallback(verbose=0)])
    fit.fit(Old(), loader())
    assert list(tb_bnstats.load(fit.logger.log_dir)["version_0"].layers["net.1"].steps) == list(range(1, 9))


class GAN(L.LightningModule):
    """Two optimizers under manual optimization, a BN module in each
    network: the discriminator steps on real and generated rows, then the
    generator through the discriminator (three training forwards of its BN
    per batch). ``every`` > 1: both step every ``every``-th batch, their
    gradients accumulated in between."""

    def __init__(self, every=1):
        super().__init__()
        torch.manual_seed(0)
        self.automatic_optimization = False
        self.gen = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 6))
        self.disc = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
        self.every = every

    def training_step(self, batch, batch_idx):
        real = batch[0].flatten(1)[:, :6]
        opt_g, opt_d = self.optimizers()
        ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
        bce = nn.functional.binary_cross_entropy_with_logits
        fake = self.gen(torch.randn(len(real), 4))
        d_loss = bce(self.disc(real), ones) + bce(self.disc(fake.detach()), zeros)
        self.manual_backward(d_loss / self.every)
        g_loss = bce(self.disc(fake), ones)
        self.manual_backward(g_loss / self.every)
        if (batch_idx + 1) % self.every == 0:
            opt_d.step()
            opt_g.step()
            opt_d.zero_grad()
            opt_g.zero_grad()
        self.log("g_loss", g_loss)
        return g_loss

    def configure_optimizers(self):
        return (torch.optim.SGD(self.gen.parameters(), lr=0.05), torch.optim.SGD(self.disc.parameters(), lr=0.05))


class Losses(L.Callback):
    """The loss of the batch that moved global_step to each count."""

    def __init__(self):
        self.at = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.at.setdefault(trainer.global_step, float(outputs["loss"]))


@pytest.mark.parametrize("every", [1, 2], ids=["every_batch", "accumulating_2"])
def test_two_optimizers_under_manual_optimization(tmp_path, every):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = GAN(every)
    record, losses = Record(model), Losses()
    fit = trainer(tmp_path, [BNStatsCallback(snapshot_every_n_steps=1, probe_data=False), record, losses],
                  max_epochs=2)
    fit.fit(model, loader(n=32, batch=8, size=4))  # 4 batches an epoch
    # Lightning counts each optimizer's step: two a stepping batch.
    assert fit.global_step == 2 * 8 // every
    assert record.record.steps == list(range(2, 2 * 8 // every + 1, 2))  # logged once a stepping batch
    run = tb_bnstats.load(fit.logger.log_dir)["version_0"]
    check_run(run, record.record)  # each module's last training forward of the batch, its buffers after it
    tracked = record.record.running[-1]
    assert tracked["gen.1"][2] == 8 and tracked["disc.1"][2] == 3 * 8  # every forward an update
    steps, values = run.metrics["train/loss"]
    assert list(steps) == record.record.steps
    np.testing.assert_allclose(values, [losses.at[s] for s in steps], rtol=1e-6)
    # Lightning's own scalars are at its count of batches (1..8), not of optimizer steps.
    own = EventAccumulator(fit.logger.log_dir)
    own.Reload()
    assert [e.step for e in own.Scalars("g_loss")] == list(range(8))
