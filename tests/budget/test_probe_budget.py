"""The probe pays for itself: its compiled passes are traced once per model,
not at every ``fit`` call, and the time budget (``measure_budget``) spaces
the measurements on the model."""

import keras
import numpy as np
import pytest

import diagnosis_scenarios as scenarios
import tb_bnstats
from tb_bnstats import BNStatsCallback, Options
from tb_bnstats.frameworks.keras import passes as keras_passes
from tb_bnstats.options import MEASURE_BUDGET
from tb_bnstats.recorder.state import TimeBudget, within_budget

BACKEND = keras.backend.backend()


# -- the rule, on the recorder's pure state -------------------------------------------------


def test_the_first_measurement_runs_at_once_and_none_means_no_budget():
    assert within_budget(spent=0.0, last=None, trained=0.0, fraction=0.01)
    assert within_budget(spent=50.0, last=None, trained=1.0, fraction=0.01)  # its cost is not known yet
    assert within_budget(spent=50.0, last=10.0, trained=1.0, fraction=None)


def test_a_due_measurement_runs_while_its_account_stays_within_the_share():
    # 1% of 1000 s: 10 s. Spent 7 s, last took 3 s: 10 s, allowed; 3.01 s: not.
    assert within_budget(spent=7.0, last=3.0, trained=1000.0, fraction=0.01)
    assert not within_budget(spent=7.0, last=3.01, trained=1000.0, fraction=0.01)
    assert not within_budget(spent=0.5, last=0.6, trained=100.0, fraction=0.01)


def test_the_ledger_counts_training_time_inside_runs_less_the_measurements():
    budget = TimeBudget(0.01)
    budget.start(100.0)
    assert budget.trained(130.0) == pytest.approx(30.0)
    budget.charge("probe", "probe", 2.0)
    assert budget.trained(130.0) == pytest.approx(28.0)
    budget.stop(150.0)
    budget.stop(999.0)  # no run open: nothing counted
    assert budget.trained(10_000.0) == pytest.approx(48.0)  # between runs: not training
    budget.start(10_000.0)
    assert budget.trained(10_010.0) == pytest.approx(58.0)
    assert budget.spent == {"probe": 2.0} and budget.last == {"probe": 2.0}
    # Kinds of one account share it; each kind's first run is at once.
    assert not budget.allows("probe", "probe", 10_010.0)
    assert budget.allows("model checks", "probe", 10_010.0)
    budget.charge("model checks", "probe", 1.0)
    assert budget.spent == {"probe": 3.0} and not budget.allows("model checks", "probe", 10_010.0)


@pytest.mark.parametrize("cost", [0.05, 0.5, 5.0])
def test_over_a_long_run_the_probes_take_at_most_the_share_and_are_spaced_evenly(cost):
    """Epochs of 10 s and a probe due at each epoch end costing ``cost``:
    after the first, the probes taken cost at most 1% of the training time
    (plus one probe), and as many are taken as the share allows."""
    budget, now, taken = TimeBudget(MEASURE_BUDGET), 0.0, []
    budget.start(now)
    for epoch in range(2000):
        now += 10.0
        if budget.allows("probe", "probe", now):
            budget.charge("probe", "probe", cost)
            now += cost
            taken.append(epoch)
    trained = budget.trained(now)
    assert trained == pytest.approx(20_000.0)
    spent = budget.spent["probe"]
    assert taken[0] == 0 and spent <= MEASURE_BUDGET * trained + cost
    # Not starved either: every due probe when they are cheap, else within one probe of the share.
    assert spent >= min(2000 * cost, MEASURE_BUDGET * trained - cost) - 1e-6
    gaps = np.diff(taken)
    assert gaps[1:].min() == gaps[1:].max()  # after the first, evenly spaced


def test_the_option_is_checked_and_defaults_to_one_percent(tmp_path):
    assert Options(tmp_path).measure_budget == MEASURE_BUDGET == 0.01
    assert Options(tmp_path, measure_budget=None).measure_budget is None
    assert Options(tmp_path, measure_budget=1).measure_budget == 1.0
    for bad in (0, -0.1, 1.5, True, "1%"):
        with pytest.raises(ValueError, match="measure_budget must be a share"):
            Options(tmp_path, measure_budget=bad)


# -- real Keras ------------------------------------------------------------------------------


def _stateless_calls(model):
    """Counts the model's ``stateless_call``s: the probe's and the checks'
    passes call it in their Python bodies, which a traced backend runs only
    when it traces (Keras' TensorFlow train step does not call it)."""
    counted = {"calls": 0}
    call = model.stateless_call

    def counting(*args, **kwargs):
        counted["calls"] += 1
        return call(*args, **kwargs)

    model.stateless_call = counting
    return counted


@pytest.mark.skipif(BACKEND != "tensorflow", reason="JAX's train step calls stateless_call itself; torch traces "
                    "nothing (its passes run eagerly)")
def test_a_second_fit_traces_neither_the_probe_nor_the_checks_on_the_model(tmp_path):
    """Three ``fit`` calls with every measurement run (no budget): the
    probe at each epoch end and the checks on the model (two population
    passes on the probe batch) at each fit's end. Only the first traces."""
    (x, y) = scenarios.digits(n=256)
    model = scenarios.dense_model(dropout_before="bn2")  # the checks find BN004's variance shift: they run
    cb = BNStatsCallback(tmp_path / "run", verbose=0, measure_budget=None)
    counted = _stateless_calls(model)
    per_fit = []
    for _ in range(3):
        before = counted["calls"]
        model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[cb])
        per_fit.append(counted["calls"] - before)
    assert per_fit[0] >= 2 + 2  # traced: the probe's two modes, the two checks' passes
    assert per_fit[1:] == [0, 0], per_fit
    assert cb._probe._fn.experimental_get_tracing_count() == 1
    kept = keras_passes._KEPT[model]
    assert len(kept) == 2  # the checks' passes: other layers in training mode, and in inference mode
    assert all(forward.experimental_get_tracing_count() == 1 for _, forward in kept.values())
    # Not vacuous: every fit probed at each epoch end and checked the model at its end.
    run = tb_bnstats.load(tmp_path)["run"]
    assert list(run.metrics["probe_train/accuracy"][0]) == [8, 16, 24, 32, 40, 48]
    assert [f.code for f in cb.findings].count("BN004") == 1
    assert cb._recorder.budget.last.keys() == {"probe", "model checks"}


def test_at_the_default_budget_the_probe_is_spaced_and_the_checks_repeat_their_findings(tmp_path):
    """Five short ``fit`` calls at the defaults: the first probes at once and
    checks the model, the later ones skip what the 1% share does not pay
    for, and each fit's diagnosis still holds the checks' BN004."""
    (x, y) = scenarios.digits(n=256)
    model = scenarios.dense_model(dropout_before="bn2")
    cb = BNStatsCallback(tmp_path / "run", verbose=0)
    findings = []
    for _ in range(5):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[cb])
        findings.append([f.code for f in cb.findings].count("BN004"))
    run = tb_bnstats.load(tmp_path)["run"]
    probed = list(run.metrics["probe_train/accuracy"][0])
    budget = cb._recorder.budget
    assert probed[0] == 8 and 1 <= len(probed) < 5, probed  # the first at once; a probe costs > 1% of 8 steps
    assert findings == [1] * 5
    assert budget.last.keys() == {"probe", "model checks"}
