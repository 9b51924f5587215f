"""tb_bnstats for TensorFlow 1-style graph code: ``tf.compat.v1.Session``
loops and ``MonitoredTrainingSession``.

Two ways in, on one monitor:

* a plain ``sess.run`` loop -- :class:`BNStatsFetches`: add its ``fetches``
  to the train call and hand what came back to :meth:`~BNStatsFetches.log`::

      monitor = BNStatsFetches("logs/run1", train_op, metrics={"loss": loss})
      for step in range(steps):
          _, got = sess.run([train_op, monitor.fetches], {x: xb, y: yb, is_training: True})
          monitor.log(got, step + 1)
      monitor.close()

* ``MonitoredTrainingSession`` (or ``tf.compat.v1.train.MonitoredSession``)
  -- :class:`BNStatsHook`, a ``tf.compat.v1.train.SessionRunHook``::

      hook = BNStatsHook("logs/run1", metrics={"loss": loss})
      with tf.compat.v1.train.MonitoredTrainingSession(hooks=[hook]) as sess:
          while not sess.should_stop():
              sess.run(train_op, {x: xb, y: yb, is_training: True})

The layers are found in the graph (:mod:`tb_bnstats.frameworks.tf1.graph`:
``tf.compat.v1.layers.batch_normalization``, ``tf.keras.layers.BatchNormalization``
called in a graph, ``tf.compat.v1.nn.fused_batch_norm`` with its own moving
statistics); a hand-written one (``tf.nn.moments`` + ``tf.nn.batch_normalization``
and assign-based moving averages) is named with :meth:`add_layer`. Each
train call logs every layer's batch moments, moving statistics after the
call, and whether its update ops ran in it: a train op built without
``tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS))``
becomes finding BN002 with that fix.
"""

from tb_bnstats.frameworks.tf1 import TF1
from tb_bnstats.frameworks.tf1 import graph as graph_capture
from tb_bnstats.loop import StepLoopMonitor
from tb_bnstats.options import GRAPH_OPTIONS, Options


class _GraphMonitor(StepLoopMonitor):
    """What both ways share: the options, the graph's layers, the recorder
    and the capture (made at the first :meth:`_prepare`, so that
    :meth:`add_layer` can come first). The run begins at the first train
    call; the step rule and closing are
    :class:`tb_bnstats.loop.StepLoopMonitor`'s."""

    def __init__(self, log_dir, graph=None, metrics=None, owner="BNStatsFetches", **options):
        import tensorflow as tf

        super().__init__(Options.of(owner, log_dir, options, accepted=GRAPH_OPTIONS, default_probe=False))
        if graph is not None and not isinstance(graph, tf.Graph):
            raise ValueError(f"graph must be a tf.Graph, got {type(graph).__name__}")
        if metrics is not None and (not isinstance(metrics, dict) or not all(
                isinstance(k, str) and tf.is_tensor(v) for k, v in metrics.items())):
            raise ValueError(f"metrics must be a dict of names to scalar tensors of the graph, got {metrics!r}")
        self._graph = graph
        self._metrics = dict(metrics or {})
        self._hand_written = []
        self.capture = None
        self._capture_failed = False  # finding the layers failed (warned once): not tried again
        self._updates_run = None  # {layer: whether the train call runs its update ops}, of the last fetches

    def add_layer(self, name, moving_mean, moving_var, momentum, inputs=None, batch_mean=None, batch_var=None,
                  epsilon=1e-3, training=True, update_ops=None, channel_axis=-1, moving_var_unbiased=False):
        """Logs a BN layer written by hand, by naming its tensors and
        variables; call it once per layer, before the first train call.

        Args:
            name: the layer's name in the tab.
            moving_mean: the variable holding its moving mean.
            moving_var: the variable holding its moving variance.
            momentum: the weight the average keeps on its old value, TF1's
                ``decay``: ``moving = decay * moving + (1 - decay) * batch``.
            inputs: the tensor it normalizes (its batch moments are then
                taken here, per channel on ``channel_axis``); or
                ``batch_mean`` and ``batch_var``.
            batch_mean: the mean it normalizes with (``tf.nn.moments``'
                output), instead of ``inputs``.
            batch_var: the variance it normalizes with, with ``batch_mean``.
            epsilon: its epsilon.
            training: a boolean tensor (an ``is_training`` placeholder) or
                bool: whether a train call runs it in training mode.
            update_ops: the ops assigning its moving averages: the moving
                statistics are read after them, and the count ``t``
                advances in calls that run them. None: assumed to run in
                every train call, the read then unordered against them (it
                may see the value before this call's update).
            moving_var_unbiased: the moving variance averages
                Bessel-corrected batch variances (needs ``inputs``).

        Raises:
            ValueError: see :func:`tb_bnstats.frameworks.tf1.graph.hand_written`, or
                called after the first train call.
        """
        if self.capture is not None:
            raise ValueError("add_layer must come before the first train call (the fetches are built then)")
        self._hand_written.append(graph_capture.hand_written(
            name, moving_mean, moving_var, momentum, inputs=inputs, batch_mean=batch_mean, batch_var=batch_var,
            epsilon=epsilon, training=training, update_ops=update_ops, channel_axis=channel_axis,
            moving_var_unbiased=moving_var_unbiased))

    def _prepare(self, graph):
        """Finds the layers of ``graph`` and builds their fetches (once: a
        failure is warned about and not tried again)."""
        if self.capture is not None or self._capture_failed:
            return
        rec = self._recorder

        def make():
            for name, tensor in list(self._metrics.items()):
                if tensor.graph is not graph:
                    rec.warn_once(f"metric {name}", f"metric {name!r}: a tensor of another graph, not logged")
                    del self._metrics[name]
            found, skipped = graph_capture.find_layers(graph)
            # A layer named by hand is logged as the user named it, not also as found.
            mine = {layer.moving_mean.name for layer in self._hand_written}
            for name, why in skipped.items():
                if not self._named_by_hand(graph, name):
                    rec.warn_once(f"layer {name}", f"{name}: not logged, {why}")
            found = [layer for layer in found if layer.moving_mean.name not in mine]
            return graph_capture.GraphCapture(graph, found + self._hand_written, self._metrics)

        self.capture = rec.guard("finding the BatchNormalization layers of the graph", make)
        self._capture_failed = self.capture is None
        rec.attach(self.capture, "graph")

    def _named_by_hand(self, graph, name):
        """Whether the BN op or scope ``name`` that :func:`find_layers`
        could not log is one of the :meth:`add_layer` layers: its scope holds
        their moving mean, or the op normalizes their ``inputs`` or gives
        their ``batch_mean`` / ``batch_var``."""
        for layer in self._hand_written:
            if layer.moving_mean.name.rsplit("/", 1)[0] in (name, name.rsplit("/", 1)[0]):
                return True
            if layer.inputs is not None and any(op.name == name for op in layer.inputs.consumers()):
                return True
            if any(t is not None and t.op.name == name for t in (layer.batch_mean, layer.batch_var)):
                return True
        return False

    def _fetches_for(self, train_fetches, feed_dict=None):
        """``(fetches, updates_run)``; ``({}, None)`` when the capture failed
        (an empty fetch leaves the train call as it was)."""
        def fetches():
            fed = [getattr(key, "op", None) for key in (feed_dict or {})]
            return self.capture.fetches(train_fetches, fed=[op.name for op in fed if op is not None])

        got = self._recorder.guard("preparing the fetches", fetches)
        return got if got is not None else ({}, None)

    def _log(self, results, updates_run, step, values):
        if self.closed or self.capture is None or not results or updates_run is None:
            return
        rec = self._recorder
        step = self._next_step(step)
        changed = rec.guard("keeping the fetched statistics", self.capture.keep, step, results, updates_run, values)
        if changed and self.begun:
            rec.guard("describing the layers", rec.layers_changed)
        if not self.begun:  # the run begins at its first train call: a restored run is told by its values
            self._begin(step - 1)
            rec.epoch_begin()
        self._step_taken(step)

    def close(self, session=None, feed_dict=None):
        """Ends the run: everything written, the diagnosis made
        (:attr:`findings`, printed with ``verbose=1``), the event file
        closed. Idempotent.

        Args:
            session: optional, a session, with ``feed_dict``.
            feed_dict: optional, the feed of one batch of training-like data
                (the inputs only): with ``session``, the graph is then
                checked for dropout before BN (S5, BN004), which training
                logs cannot show: each layer's input variance with its
                ``training`` tensor fed True and fed False
                (:meth:`tb_bnstats.frameworks.tf1.graph.GraphCapture.variance_shift`).
        """
        if self.closed:
            return
        rec = self._recorder
        if self.begun and session is not None and feed_dict is not None and self.capture is not None:
            from tb_bnstats.diagnosis import live

            shifts = rec.guard("checking the graph for a variance shift", self.capture.variance_shift, session,
                               feed_dict)
            if shifts:
                rec.measure_with(live_findings=lambda run: live.variance_shift_findings(
                    shifts, TF1, run))
        super().close()


class BNStatsFetches(_GraphMonitor):
    """Logs a graph's BN layers from a plain ``sess.run`` loop (module
    docstring).

    Args:
        log_dir: directory of this run's event files (TensorBoard's run).
        train_op: what the train call runs besides :attr:`fetches` (the
            train op, or the list of everything it fetches): it tells which
            layers' update ops run.
        graph: the graph (default: ``train_op``'s).
        metrics: ``{name: scalar tensor}`` to log with them (the loss...);
            or pass numbers to :meth:`log`.
        **options: ``log_every_n_steps``, ``snapshot_every_n_steps``,
            ``layers`` (scope names or glob patterns), ``log_metrics``,
            ``flush_secs``, ``verbose``: fields of :class:`tb_bnstats.Options`.

    Raises:
        TypeError: an unknown keyword argument.
        ValueError: an argument out of its range, or ``train_op`` is None.
    """

    def __init__(self, log_dir, train_op, graph=None, metrics=None, **options):
        import tensorflow as tf

        if train_op is None:
            raise ValueError("train_op is needed: it tells whether each layer's update ops run in the train call")
        graph = graph or next((getattr(t, "graph", None) for t in tf.nest.flatten(train_op)), None)
        super().__init__(log_dir, graph=graph, metrics=metrics, owner="BNStatsFetches", **options)
        self._train_op = train_op

    @property
    def fetches(self):
        """Add this to the train call's fetches (``sess.run([train_op,
        monitor.fetches], ...)``) and hand what it returns to :meth:`log`."""
        self._prepare(self._graph)
        fetches, self._updates_run = self._fetches_for(self._train_op) if self.capture is not None else ({}, None)
        return fetches

    def log(self, results, step=None, **values):
        """Logs one train call.

        Args:
            results: what ``sess.run`` returned for :attr:`fetches`.
            step: the global step after this call (default: one more than
                the last).
            **values: other numbers of the step, e.g. ``loss=loss_value``.
        """
        self._log(results, self._updates_run, step, values)


def _hook_base():
    import tensorflow as tf

    return tf.compat.v1.train.SessionRunHook


class BNStatsHook(_GraphMonitor, _hook_base()):
    """Logs a graph's BN layers from ``MonitoredTrainingSession`` (module
    docstring), at the global step (``tf.compat.v1.train.get_global_step()``,
    read after each train call; counted from 0 without one). With a global
    step, the train calls are the ``sess.run`` calls that increment it
    (``minimize(global_step=...)``): an evaluation run through the same
    session is not logged. Without one, every ``sess.run`` through the
    session that runs a BN layer is a train call.

    Args:
        log_dir: as in :class:`BNStatsFetches`.
        metrics: as in :class:`BNStatsFetches`.
        check_feed_dict: optional, the feed of one batch of training-like
            inputs: at the end the graph is checked for dropout before BN
            (BN004, :meth:`BNStatsFetches.close`).
        **options: ``log_every_n_steps``, ``snapshot_every_n_steps``,
            ``layers``, ``log_metrics``, ``flush_secs``, ``verbose``: as in
            :class:`BNStatsFetches`.

    Raises:
        TypeError: an unknown keyword argument.
        ValueError: an argument out of its range.
    """

    def __init__(self, log_dir, metrics=None, check_feed_dict=None, **options):
        super().__init__(log_dir, metrics=metrics, owner="BNStatsHook", **options)
        self._global_step = None  # a read of the graph's global step, made at begin()
        self._increments = None  # the names of the ops that increment the global step (None: no global step)
        self._trains = {}  # fetch key -> whether a sess.run of those fetches increments the global step
        self._check_feed_dict = check_feed_dict

    def begin(self):
        import tensorflow as tf

        graph = tf.compat.v1.get_default_graph()
        self._prepare(graph)
        step = tf.compat.v1.train.get_global_step(graph)
        if step is not None:
            with graph.as_default():
                self._global_step = tf.identity(step)
            self._increments = {op.name for op in graph.get_operations()
                                if op.type in ("AssignAddVariableOp", "AssignAdd") and op.inputs
                                and op.inputs[0].op.name == step.op.name}

    def before_run(self, run_context):
        import tensorflow as tf

        self._updates_run = None  # after_run logs nothing unless this call gets the fetches
        if self.closed or self.capture is None or not self._recorder.guard(
                "telling a train call", self._is_train_call, run_context.original_args.fetches):
            return None
        args = run_context.original_args
        fetches, self._updates_run = self._fetches_for(args.fetches, args.feed_dict)
        return tf.compat.v1.train.SessionRunArgs(fetches) if fetches else None

    def _is_train_call(self, fetches):
        """Whether a ``sess.run`` of ``fetches`` increments the global step
        (any call without a global step)."""
        if not self._increments:
            return True
        key = graph_capture.fetch_key(fetches)
        if key not in self._trains:
            graph = self.capture.model
            self._trains[key] = bool(self._increments & graph_capture.ops_needed(fetches, graph))
        return self._trains[key]

    def after_run(self, run_context, run_values):
        if self._updates_run is None:
            return
        step = None
        if self._global_step is not None:
            # Read after the call: a read fetched with it could come before or after the increment.
            step = self._recorder.guard("reading the global step", run_context.session.run, self._global_step)
            step = None if step is None else int(step)
        self._log(run_values.results, self._updates_run, step, None)

    def end(self, session):
        self.close(session, self._check_feed_dict)
