"""tb_bnstats.transformers.BNStatsCallback in real ``Trainer.train()`` runs
of ``ResNetForImageClassification`` built from a ``ResNetConfig`` (CPU,
nothing downloaded): the run is the directory of the trainer's
``TensorBoardCallback``, every logged step is ``state.global_step``, each
step's moments are numpy's of the module's real input (the last
micro-batch's under gradient accumulation), the moving statistics are the
buffers; the diagnosis; the tab beside the trainer's own scalars."""

import os

import pytest
import torch
from loops_common import BNRecord, check_run, check_tab, images, run_watching_imports
from transformers import ResNetConfig, ResNetForImageClassification, Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import TensorBoardCallback

import tb_bnstats
from tb_bnstats.frameworks.transformers.callback import tensorboard_dir
from tb_bnstats.transformers import BNStatsCallback

torch.set_num_threads(1)


def resnet(momentum=None):
    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
                                                      depths=[1, 1], layer_type="basic", num_labels=3))
    for module in model.modules():
        if momentum is not None and isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = momentum
    return model


class Images(torch.utils.data.Dataset):
    def __init__(self, n=64, size=32, seed=0):
        self.x, self.y = images(n, size=size, seed=seed)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


class Record(TrainerCallback):
    """Our own record of each optimizer step (the BN inputs of its last
    training forward, the buffers after it) at the global_step after it."""

    def __init__(self, model):
        self.record = BNRecord(model)

    def on_step_end(self, args, state, control, **kwargs):
        self.record.step_done(state.global_step)


def arguments(out, **kwargs):
    return TrainingArguments(str(out), per_device_train_batch_size=8, use_cpu=True, save_strategy="no",
                             logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, **kwargs)


def test_train_with_gradient_accumulation_logs_optimizer_steps_exactly(tmp_path):
    model = resnet()
    record, callback = Record(model), BNStatsCallback(snapshot_every_n_steps=1)
    trainer = Trainer(model=model, args=arguments(tmp_path, num_train_epochs=2, gradient_accumulation_steps=2,
                                                  report_to="tensorboard"),
                      train_dataset=Images(), callbacks=[callback, record])
    trainer.train()
    assert trainer.state.global_step == 8 and record.record.steps == list(range(1, 9))
    board = next(c for c in trainer.callback_handler.callbacks if isinstance(c, TensorBoardCallback))
    assert callback.monitor.log_dir == board.logging_dir  # the trainer's TensorBoard run
    run_name = os.path.basename(board.logging_dir)
    run = tb_bnstats.load(tmp_path / "runs")[run_name]
    check_run(run, record.record)
    assert record.record.running[-1]["resnet.embedder.embedder.normalization"][2] == 16  # every micro-batch
    check_tab(tmp_path / "runs", run_name, "train/loss")


def test_tensorboard_logging_dir_is_followed(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "board"))
    callback = BNStatsCallback()
    Trainer(model=resnet(), args=arguments(tmp_path / "out", max_steps=3, report_to="tensorboard"),
            train_dataset=Images(), callbacks=[callback]).train()
    run = tb_bnstats.load(tmp_path)["board"]
    assert list(run.layers["resnet.embedder.embedder.normalization"].steps) == [1, 2, 3]
    assert not (tmp_path / "out" / "runs").exists()


def test_the_directory_named_a_second_before_is_found(tmp_path):
    """TensorBoardCallback names its directory by the second; this callback
    runs a moment later and finds the one it made, across a second's turn."""
    import datetime
    import socket
    import types

    args = types.SimpleNamespace(output_dir=str(tmp_path))
    state = types.SimpleNamespace(is_hyper_param_search=False, trial_name=None)
    now = datetime.datetime(2026, 3, 1, 12, 0, 0)
    made = tmp_path / "runs" / f"Mar01_11-59-59_{socket.gethostname()}"  # a second before now
    assert tensorboard_dir(args, state, now) == str(tmp_path / "runs" / f"Mar01_12-00-00_{socket.gethostname()}")
    made.mkdir(parents=True)
    assert tensorboard_dir(args, state, now) == str(made)


def test_diagnosis_momentum_0_01_is_bn001_and_healthy_is_silent(tmp_path):
    found = {}
    for label, momentum in (("slow", 0.01), ("healthy", 0.5)):
        callback = BNStatsCallback(log_dir=tmp_path / label)
        Trainer(model=resnet(momentum), args=arguments(tmp_path / "out", num_train_epochs=2, report_to="none"),
                train_dataset=Images(), callbacks=[callback]).train()
        found[label] = sorted({f.code for f in callback.findings})
        assert callback.findings == tb_bnstats.diagnose(tmp_path / label)
    assert found == {"slow": ["BN001"], "healthy": []}


def test_bad_arguments_fail_at_construction():
    with pytest.raises(TypeError, match="log_every"):
        BNStatsCallback(log_every=2)
    with pytest.raises(ValueError, match="flush_secs"):
        BNStatsCallback(flush_secs=0)


def test_a_transformers_process_imports_no_tensorflow_keras_or_jax(tmp_path):
    """Not even an attempt. ``report_to="none"``: transformers'
    TensorBoardCallback writes through torch.utils.tensorboard, which imports
    TensorFlow when it is installed."""
    attempted = run_watching_imports("""
        from test_transformers import resnet, Images, arguments
        from transformers import Trainer
        from tb_bnstats.transformers import BNStatsCallback
        callback = BNStatsCallback("logs/run")
        Trainer(model=resnet(), args=arguments("out", max_steps=3, report_to="none"), train_dataset=Images(),
                callbacks=[callback]).train()
        assert callback.findings is not None
    """, cwd=tmp_path)
    assert attempted == []
    assert list(tb_bnstats.load(tmp_path / "logs")["run"].layers["resnet.embedder.embedder.normalization"].steps) \
        == [1, 2, 3]
