"""The recorder's pure parts, without a framework: which steps of a drained
block are logged (choose_rows), the options (Options), a run's state and the
step-loop adapters' step rule (StepLoopMonitor)."""

import dataclasses
import warnings

import numpy as np
import pytest

import tb_bnstats
from tb_bnstats.format import metadata
from tb_bnstats.loop import StepLoopMonitor
from tb_bnstats.options import GRAPH_OPTIONS, PROBE_OFF, USER_OPTIONS, Options
from tb_bnstats.recorder import Capabilities, Recorder
from tb_bnstats.recorder.state import choose_rows, stride_due, stride_starts
from tb_bnstats.write import background


def _choose(steps, every=1, snapshot=0, last=None, last_snapshot=None, **kw):
    choice = choose_rows(np.array(steps), every, snapshot, last, last_snapshot, **kw)
    return list(choice.rows), list(choice.snapshot_steps), choice.newest_unlogged


def test_every_step_is_logged_once():
    assert _choose([1, 2, 3]) == ([0, 1, 2], [], False)


def test_a_repeated_step_is_logged_at_its_last_row():
    assert _choose([1, 2, 2, 3]) == ([0, 2, 3], [], False)
    # The stride counts kept steps, not rows: a repeated step does not push the next one out (before the
    # recorder's state was written down, [5, 5, 6] after step 4 logged step 6 alone).
    assert _choose([5, 5, 6], last=4) == ([1, 2], [], False)


def test_steps_logged_before_are_not_logged_again():
    assert _choose([3, 4, 5], last=4) == ([2], [], False)
    assert _choose([3, 4], last=4) == ([], [], False)


def test_the_logging_stride_counts_from_the_last_logged_step():
    assert _choose(range(1, 11), every=4) == ([0, 3, 7], [], True)  # steps 1 (the first), 4, 8; 10 kept
    assert _choose([9, 10, 11, 12], every=4, last=8) == ([3], [], False)  # 12 begins a new stride


def test_log_last_and_final_log_the_last_step_off_the_stride():
    assert _choose([1, 2, 3], every=4, last=0, log_last=True) == ([2], [], False)
    rows, snapshots, newest = _choose([5, 6], every=4, last=4, final=True)
    assert (rows, snapshots, newest) == ([1], [6], False)  # the final step gets a snapshot


def test_snapshots_take_the_snapshot_stride_of_the_logged_steps():
    assert _choose(range(1, 8), snapshot=3) == (list(range(7)), [1, 3, 6], False)
    assert _choose([4, 5, 6], snapshot=3, last=3, last_snapshot=3) == ([0, 1, 2], [6], False)


def test_an_empty_block_logs_nothing():
    assert _choose([]) == ([], [], False)


def test_strides():
    assert stride_due(5, 5, None) and not stride_due(6, 5, 5) and stride_due(10, 5, 9)
    assert not stride_due(10, 0, None)
    assert list(stride_starts([1, 2, 5, 6, 10], 5, 1)) == [False, False, True, False, True]


def test_options_are_checked_with_the_messages_of_before():
    with pytest.raises(ValueError, match="log_every_n_steps must be an integer >= 1, got 0"):
        Options("logs", log_every_n_steps=0)
    with pytest.raises(ValueError, match="log_dir must be a non-empty path"):
        Options("")
    with pytest.raises(ValueError, match="flush_secs must be a number > 0"):
        Options("logs", flush_secs=True)
    with pytest.raises(ValueError, match="layers must be a list"):
        Options("logs", layers="block1/*")
    with pytest.raises(ValueError, match="probe_every_n_steps needs probe_data"):
        Options("logs", probe_every_n_steps=5, default_probe=False)
    with pytest.raises(ValueError, match="probe_data=False turns the probe off"):
        Options("logs", probe_data=False, probe_every_n_steps=5)
    with pytest.raises(ValueError, match="population_every_n_steps needs population_data"):
        Options("logs", population_every_n_steps=5)


def test_options_are_normalized_and_frozen():
    options = Options("logs", layers=["a*"], probe_every_n_steps=None)
    assert options.layers == ("a*",) and options.probe_every_n_steps == 0 and options.flush_secs == 30.0
    assert options.selected("ab") and not options.selected("b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.verbose = 0  # type: ignore[misc]
    assert tb_bnstats.Options is Options


def test_where_the_probe_batch_comes_from():
    assert Options("logs").probe_source == metadata.PROBE_FIRST_TRAINING_BATCH
    assert Options("logs", default_probe=False).probe_source is PROBE_OFF
    assert Options("logs", probe_data=False).probe_source is PROBE_OFF
    assert Options("logs", probe_data=np.zeros((4, 2))).probe_source == metadata.PROBE_GIVEN


def test_an_unknown_keyword_names_the_valid_ones():
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) 'log_every'.*log_every_n_steps"):
        Options.of("BNStatsMonitor", "logs", {"log_every": 2})
    with pytest.raises(TypeError, match="'probe_data'"):
        Options.of("BNStatsFetches", "logs", {"probe_data": np.zeros(2)}, accepted=GRAPH_OPTIONS)
    assert Options.of("x", "logs", {"verbose": 0}).verbose == 0
    assert USER_OPTIONS[0] == "log_every_n_steps" and "default_probe" not in USER_OPTIONS


def test_a_recorder_that_has_not_begun_writes_nothing(tmp_path):
    rec = Recorder(Options(tmp_path, verbose=0))
    assert rec.writer is None and rec.run.capabilities.writes is False
    rec.steps_done(3)
    rec.epoch_end({"loss": 1.0}, lambda: 3)
    rec.end()
    rec.abandon()
    assert not list(tmp_path.iterdir())


def test_capabilities_decide_what_a_run_does(tmp_path):
    rec = Recorder(Options(tmp_path, verbose=0))
    run = rec.begin(lambda: 0, capabilities=Capabilities(probe=False))
    assert run is rec.run and run.probe_source is PROBE_OFF and run.writer is None  # no capture: nothing opened
    rec.measure_with(population=lambda: {})
    assert rec.run.measure.population is None


def test_the_writer_queue_takes_typed_jobs():
    queue, ran = background.JobQueue(), []
    queue.put(background.Job(lambda: ran.append(1), what="one"))
    queue.submit(ran.append, 2)
    queue.close()
    assert ran == [1, 2]


class _Loop(StepLoopMonitor):
    released = 0

    def _release(self):
        self.released += 1


def test_the_step_rule_of_the_step_loop_adapters(tmp_path):
    loop = _Loop(Options(tmp_path, verbose=0))
    loop._begin(10)
    assert loop._next_step(None) == 11
    assert loop._next_step(10) == 10  # a repeated step stands
    assert loop._next_step(12) == 12
    with pytest.warns(RuntimeWarning, match="never smaller than the last one"):
        assert loop._next_step(9) == 11  # going back: counted on
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loop._next_step(2.5) == 11  # warned once already
    loop.close()
    loop.close()
    assert loop.closed and loop.released == 1


def test_leaving_a_with_block_by_an_exception_releases_without_a_diagnosis(tmp_path):
    with pytest.raises(KeyError), _Loop(Options(tmp_path, verbose=0)) as loop:
        loop._begin(0)
        raise KeyError
    assert loop.closed and loop.released == 1 and loop.findings is None
