"""A keras.applications model as users train it: real architecture, real
training, under TensorFlow (the Keras backends' captures are exercised on
the smaller models of tests/test_capture.py and tests/test_transfer_learning.py,
which run under every backend)."""

import keras
import numpy as np

import tb_bnstats


def test_mobilenetv2_from_scratch_gets_only_the_gap_that_recalibrating_closes(tmp_path):
    """keras.applications.MobileNetV2(alpha=0.35, weights=None): 52 BN layers
    with depthwise convolutions. Its BN momentum is 0.999, which needs ~3000
    updates (BN001 is right for a short run from scratch): set to 0.9, as
    for any run of a few hundred steps. No per-layer rule fires; the default
    probe still finds inference mode well below training mode after 64
    steps (BN012, on the layers whose output differs between the modes),
    and that is true: recalibrating raises inference-mode accuracy on the
    training data by 10 points or more (measured 20.5% -> 42.0%)."""
    from scenarios_common import digits

    x, y = digits(n=1024)
    x = np.repeat(np.repeat(np.repeat(x.reshape(-1, 8, 8, 1), 4, axis=1), 4, axis=2), 3, axis=-1)
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)
    bns = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 52
    for layer in bns:
        layer.momentum = 0.9
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    cb = tb_bnstats.BNStatsCallback(str(tmp_path / "mobilenetv2"), snapshot_every_n_steps=0, verbose=0)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[cb])
    runs = tb_bnstats.load(str(tmp_path))
    assert len(runs["mobilenetv2"].layers) == 52
    [gap] = tb_bnstats.diagnose(runs)
    assert (gap.code, gap.severity) == ("BN012", "warning") and gap.layers
    assert [(f.code, f.layers) for f in cb.findings] == [("BN012", gap.layers)]
    before = model.evaluate(x, y, verbose=0)[1]
    tb_bnstats.recalibrate(model, (x, y))
    assert model.evaluate(x, y, verbose=0)[1] >= before + 0.10
