"""A real TensorBoard serving a real training run while it writes: every
route answers (no 5xx, no file problem) and the run's step grows. The
training child is Keras on TensorFlow; what is tested is the reader and the
routes on files being written, so it runs once, not per Keras backend."""

import time

import numpy as np

from tb_bnstats.write import summary
from test_e2e_tab import tensorboard
from test_training_faults import P, child, http_json, routes


def test_real_tensorboard_while_a_real_training_run_writes(tmp_path):
    logdir = tmp_path / "logs"
    for name in ("a", "b"):  # the tensorboard helper starts serving at 3 runs
        with summary.Writer(str(logdir / name)) as w:
            w.layer_moments("bn", 1, batch_mean=np.ones(2), batch_var=np.ones(2), moving_mean=np.zeros(2),
                            moving_var=np.ones(2), updates=1, momentum=0.9, epsilon=1e-3)
    proc = child(logdir / "live", epochs=100, sleep=0.1)
    seen, answers = [], 0
    try:
        with tensorboard(str(logdir), "--reload_interval=1") as base:
            deadline = time.time() + 120
            while len(set(seen)) < 4:
                assert time.time() < deadline, f"steps seen: {seen}"
                assert proc.poll() is None, proc.stderr.read()[-3000:]
                status, body = http_json(base + P + "/runs")
                assert status == 200
                assert [p for p in body["file_problems"] if p["run"] == "live"] == []
                live = {r["run"]: r for r in body["runs"]}["live"]
                if "bn1" not in [lay["name"] for lay in live["layers"]]:  # its first records are not read yet
                    time.sleep(0.3)
                    continue
                seen.append(live["max_step"])
                for url in routes("live", "bn1"):
                    status, body = http_json(base + P + url)
                    answers += 1
                    assert status == 200 or (status == 400 and "snapshot" in body["error"]), (url, status, body)
                time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait(30)
    assert seen == sorted(seen) and len(set(seen)) >= 4
    print(f"max_step seen while training: {sorted(set(seen))}; {answers} answers, none a 5xx")
