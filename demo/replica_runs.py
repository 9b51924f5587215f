"""The runs of ``demo/train_replicas.py`` and the findings each must show,
apart from the script (which sets TensorFlow's devices up when imported), so
that tests/test_demo.py reads them without starting TensorFlow's runtime."""

# name -> whether the BN layers are synchronized across the 4 replicas.
RUNS = {"mirrored_4x4": False, "mirrored_4x4_synced": True}
# name -> the finding codes the tab must show for it (tests/test_demo.py checks this in a browser).
EXPECTED = {
    # 4 samples per replica through dense_bn; and each replica's own moving statistics drift apart.
    "mirrored_4x4": {"BN013", "BN015"},
    # Synchronized: nothing of the replicas; as the one-device healthy run, dense_bn's averages lag (BN012).
    "mirrored_4x4_synced": {"BN012"},
}
