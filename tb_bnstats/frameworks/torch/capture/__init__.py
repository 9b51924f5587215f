"""The PyTorch capture: ``torch.nn`` BatchNorm modules (``nn.BatchNorm1d/2d/3d``,
``nn.SyncBatchNorm``, ``nn.LazyBatchNorm*`` and any subclass of
``torch.nn.modules.batchnorm._BatchNorm``).

* :mod:`.modules` finds the BN modules of a model and describes each one in
  the log format's terms (PyTorch's conventions turned into Keras' where the
  format needs one, said where it differs);
* :mod:`.hooks` keeps each training forward's batch moments on the device
  (a forward hook per module) and the rows of each training step in a ring,
  drained in blocks (:class:`.hooks.TorchCapture`, a
  :class:`tb_bnstats.capture.Capture`).

The training loop's side is :class:`tb_bnstats.torch.BNStatsMonitor`.
"""
