"""Event files: where the summary writer's records go.

An event file is a TFRecord file of serialized ``Event`` protos. TensorBoard's
own :class:`EventFileWriter` frames each record with a CRC32C computed in pure
Python, about 0.3 ms per 1 kB record: with one record per layer per step that
is most of the callback's cost. When TensorFlow is already imported (the Keras
callback, a TensorFlow custom loop), records go through TensorFlow's C++
``tf.io.TFRecordWriter`` instead: the same bytes, written ~100x faster.
Otherwise (no TensorFlow in the process) TensorBoard's writer is used.
"""

import itertools
import logging
import os
import socket
import sys
import threading
import time

from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

logger = logging.getLogger("tb_bnstats")

_uid = itertools.count()


def open_event_file(logdir, flush_secs, max_queue=1000):
    """A new event file in ``logdir`` (created if missing).

    Args:
        logdir: the run's directory.
        flush_secs: records reach the disk at least this often.
        max_queue: records TensorBoard's writer holds before a write blocks.

    Returns:
        An object with ``add_event(event)``, ``flush()``, ``close()`` and
        ``path``.
    """
    if "tensorflow" in sys.modules:
        return TFRecordEventFile(logdir, flush_secs)
    writer = EventFileWriter(str(logdir), max_queue_size=max_queue, flush_secs=flush_secs)
    writer.path = writer._file_name
    return writer


class TFRecordEventFile:
    """Writes events with ``tf.io.TFRecordWriter``; a daemon thread flushes
    every ``flush_secs`` so that a quiet run still reaches the disk."""

    def __init__(self, logdir, flush_secs):
        import tensorflow as tf

        logdir = str(logdir)
        tf.io.gfile.makedirs(logdir)
        self.path = os.path.join(logdir, "events.out.tfevents.%010d.%s.%s.%s" % (
            time.time(), socket.gethostname(), os.getpid(), next(_uid)))
        self._records = tf.io.TFRecordWriter(self.path)
        self._lock = threading.Lock()
        self._closed = False
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()
        self._stop = threading.Event()
        threading.Thread(target=self._flush_every, args=(float(flush_secs),), daemon=True,
                         name="tb_bnstats-flush").start()

    def add_event(self, event):
        """Appends one ``Event``.

        Raises:
            IOError: the file is closed.
        """
        data = event.SerializeToString()
        with self._lock:
            if self._closed:
                raise IOError(f"event file {self.path} is closed")
            self._records.write(data)

    def flush(self):
        """Writes buffered records to disk."""
        with self._lock:
            if not self._closed:
                self._records.flush()

    def _flush_every(self, seconds):
        warned = False
        while not self._stop.wait(seconds):
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - a background thread has no caller to raise to
                if not warned:  # once: a full disk stays full, one line a second helps no one
                    warned = True
                    logger.warning("tb_bnstats: flushing %s failed (records are lost until it works "
                                   "again; said once): %s", self.path, exc)

    def close(self):
        """Stops the flush thread and closes the file."""
        self._stop.set()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._records.close()
