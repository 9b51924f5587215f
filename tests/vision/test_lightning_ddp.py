"""tb_bnstats.lightning.BNStatsCallback under Lightning's DDP on the CPU: a
``Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn")`` (gloo) started
from this pytest process. Rank 0 alone writes, into the logger's one run;
every logged step is ``trainer.global_step``; each step's batch moments are
numpy's of both ranks' real inputs together (the global batch), its moving
statistics rank 0's buffers."""

import glob
import os
import pickle
import types

import lightning.pytorch as L
import numpy as np
import torch
from loops_common import BNRecord, check_run
from test_lightning import Net, loader, trainer

import tb_bnstats
from tb_bnstats.format import metadata
from tb_bnstats.lightning import BNStatsCallback

torch.set_num_threads(1)


class RankRecord(L.Callback):
    """Each rank's own record (:class:`loops_common.BNRecord`, made in the
    rank's process), pickled to ``out/rank<r>.pkl`` when training ends."""

    def __init__(self, out):
        self.out = str(out)

    def on_train_start(self, trainer, pl_module):
        self.record, self.last = BNRecord(pl_module), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self.last:
            self.last = trainer.global_step
            self.record.step_done(trainer.global_step)

    def on_train_end(self, trainer, pl_module):
        kept = {"steps": self.record.steps, "inputs": self.record.inputs, "running": self.record.running,
                "pid": os.getpid(), "global_step": trainer.global_step}
        with open(os.path.join(self.out, f"rank{trainer.global_rank}.pkl"), "wb") as f:
            pickle.dump(kept, f)


def test_ddp_on_two_cpu_processes_rank_0_writes_the_global_batch(tmp_path, capfd):
    fit = trainer(tmp_path, [BNStatsCallback(snapshot_every_n_steps=1), RankRecord(tmp_path)],
                  max_epochs=2, devices=2, strategy="ddp_spawn")
    fit.fit(Net(), loader(n=32, batch=8))  # 16 samples a rank, 2 steps of 2 x 8 an epoch
    ranks = []
    for r in (0, 1):
        with open(tmp_path / f"rank{r}.pkl", "rb") as f:
            ranks.append(pickle.load(f))
    assert ranks[0]["steps"] == ranks[1]["steps"] == [1, 2, 3, 4] and ranks[0]["global_step"] == 4
    # One run, rank 0's: the logger's version_0; every event file in it written by rank 0's process.
    runs = tb_bnstats.load(tmp_path / "lightning_logs")
    assert list(runs) == ["version_0"]
    files = glob.glob(str(tmp_path / "**" / "events.out.tfevents.*"), recursive=True)
    assert files and {os.path.dirname(f) for f in files} == {str(tmp_path / "lightning_logs" / "version_0")}
    assert {int(os.path.basename(f).split(".")[-2]) for f in files} == {ranks[0]["pid"]} != {ranks[1]["pid"]}
    said = capfd.readouterr()
    said = said.out + said.err
    assert "other processes are writing event files" not in said
    assert said.count("tb_bnstats: monitoring 2 BatchNormalization") == 1  # rank 0's messages only
    assert "rank 1 of 2" not in said
    run = runs["version_0"]
    assert {run.layers[n].info.replicas for n in run.layers} == {2}
    assert run.train_begins[-1]["probe"] == metadata.PROBE_FIRST_TRAINING_BATCH
    steps, samples = run.metrics["probe_train/samples"]
    assert len(steps) >= 1 and set(samples) == {8.0}  # measured on rank 0, its own slice of the first batch
    names = sorted(ranks[0]["inputs"][0])
    both = types.SimpleNamespace(
        steps=ranks[0]["steps"],
        inputs=[{n: np.concatenate([r["inputs"][i][n] for r in ranks]) for n in names} for i in range(4)],
        running=ranks[0]["running"])  # DDP copies rank 0's buffers to every rank before each forward
    check_run(run, both, names)  # the global batch's moments, rank 0's buffers and update count
    assert not np.allclose(ranks[0]["running"][-1]["net.1"][0], ranks[1]["running"][-1]["net.1"][0])
