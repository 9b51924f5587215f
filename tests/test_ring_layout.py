"""The ring's row format alone (tb_bnstats.capture.ring), numpy only: a few
steps packed in each storage and unpacked give the same rows and the same
Block as the columns they were packed from; each storage's documented
ranges (int64 steps past 2**31, float64 values float32 cannot hold)."""

import dataclasses
import types

import numpy as np
import pytest

from tb_bnstats.capture import ring
from tb_bnstats.capture.rows import Layout, Rows, ring_steps

K = 5  # rows of the rings
CHANNELS = (3, 2)
LOGS, METRICS = ("loss", "lr"), ("accuracy",)


class _Layer:  # a stand-in for a BN layer (the layout keeps weak references)
    pass


LAYERS = [_Layer() for _ in CHANNELS]


def _layout(replicas=1, samples=False):
    return Layout.of(LAYERS, CHANNELS, (True, False), LOGS, METRICS, replicas=replicas,
                     moving_per_replica=replicas > 1, samples=samples)


STORAGES = {  # storage -> (replicas, samples, host_values) of a layout it can hold
    "float64": (ring.FLOAT64, 1, True, None),
    "float64 on 2 replicas": (ring.FLOAT64, 2, True, None),
    "int32": (ring.INT32, 1, False, None),
    "int32 on 2 replicas": (ring.INT32, 2, True, None),
    "step on device": (ring.STEP_ON_DEVICE, 1, False, None),
    "counts on device": (ring.COUNTS_ON_DEVICE, 1, True, (False, True, False, True)),
    "gathered": (ring.GATHERED, 3, True, (True, False, False, False)),
}


def _columns(layout, rng, step0=100):
    """K steps' logical columns (values every storage holds exactly)."""
    steps = np.arange(K)
    return {
        ring.N: steps + 1,
        ring.STEP: steps + step0,
        ring.COUNTS: np.stack([steps + 1, np.full(K, 7)], axis=1),
        "values": rng.normal(size=[K, layout.num_values]).astype(np.float32),
        ring.MOMENTS: rng.normal(size=[K, layout.num_moments]).astype(np.float32),
        ring.SAMPLES: np.tile(np.arange(1.0, 1 + layout.num_samples), [K, 1]) * 8,
    }


def _pack(fmt, columns, order=None):
    """Every step's row written into every array of ``fmt`` with numpy, at
    row ``(n - 1) % K``; a per-replica array gets each replica's part."""
    layout, replicas = fmt.layout, fmt.layout.replicas
    arrays = {a.name: np.zeros(fmt.shape(a.name, K), a.dtype) for a in fmt.storage.arrays}
    host = np.array(fmt.host_values, bool)
    for i in (range(K) if order is None else order):
        at = (int(columns[ring.N][i]) - 1) % K
        given = {ring.N: [columns[ring.N][i]], ring.STEP: [columns[ring.STEP][i]],
                 ring.COUNTS: list(columns[ring.COUNTS][i]),
                 ring.VALUES: list(columns["values"][i][~host]) if len(host) else [],
                 ring.HOST_VALUES: [float(v) for v in columns["values"][i][host]] if len(host) else [],
                 ring.MOMENTS: [columns[ring.MOMENTS][i]], ring.SAMPLES: [columns[ring.SAMPLES][i]]}
        for array in fmt.storage.arrays:
            if not array.per_replica:
                fmt.row(array.name, ring.NUMPY, given, out=arrays[array.name][at])
                continue
            for r in range(replicas):  # what a gather does: replica r's own part at [at, r]
                own = {ring.MOMENTS: [np.split(columns[ring.MOMENTS][i], replicas)[r]],
                       ring.SAMPLES: [np.split(columns[ring.SAMPLES][i], replicas)[r]]}
                arrays[array.name][at, r] = fmt.row(array.name, ring.NUMPY, own)
    del layout
    return arrays


def _reference_rows(layout, columns):
    return Rows(layout, n=columns[ring.N], step=columns[ring.STEP], counts=columns[ring.COUNTS],
                values=columns["values"], moments=columns[ring.MOMENTS],
                samples=columns[ring.SAMPLES] if layout.samples else None)


def _block(rows):
    slots = {name: types.SimpleNamespace(init_mean=np.zeros(c), init_var=np.ones(c))
             for name, c in zip(("bn1", "bn2"), CHANNELS)}
    return rows.block({id(LAYERS[0]): "bn1", id(LAYERS[1]): "bn2"}, slots)


def _assert_same_block(got, want):
    np.testing.assert_array_equal(got.steps, want.steps)
    assert got.steps.dtype == np.int64
    assert list(got.logs) == list(want.logs) and list(got.metric_totals) == list(want.metric_totals)
    for name in want.logs:
        np.testing.assert_array_equal(got.logs[name], want.logs[name])
    for name in want.metric_totals:
        np.testing.assert_array_equal(np.array(got.metric_totals[name]), np.array(want.metric_totals[name]))
    assert list(got.layers) == list(want.layers)
    for name, layer in want.layers.items():
        for field in dataclasses.fields(layer):
            a, b = getattr(got.layers[name], field.name), getattr(layer, field.name)
            if dataclasses.is_dataclass(b):
                for sub in dataclasses.fields(b):
                    np.testing.assert_array_equal(getattr(a, sub.name), getattr(b, sub.name))
            elif b is None:
                assert a is None, field.name
            else:
                np.testing.assert_array_equal(a, b, err_msg=field.name)


@pytest.mark.parametrize("case", list(STORAGES))
def test_every_storage_round_trips_a_few_steps_into_the_same_block(case):
    storage, replicas, samples, host_values = STORAGES[case]
    layout = _layout(replicas, samples)
    fmt = ring.RingFormat(layout, storage, host_values)
    columns = _columns(layout, np.random.default_rng(0))
    rows = fmt.rows(_pack(fmt, columns, order=[3, 4, 0, 1, 2]))  # rows in any order: n says which is which
    want = _reference_rows(layout, columns)
    for field in ("n", "step", "counts", "values", "moments", "samples"):
        got, ref = getattr(rows, field), getattr(want, field)
        assert (got is None) == (ref is None), field
        if ref is not None:
            np.testing.assert_array_equal(got, ref, err_msg=field)
    _assert_same_block(_block(rows), _block(want))


def test_the_row_bytes_are_the_device_arrays_and_size_the_ring():
    layout = _layout()
    moments, values, layers = layout.num_moments, layout.num_values, len(layout.layers)
    f64 = ring.RingFormat(layout, ring.FLOAT64)
    assert f64.shape("rows", K) == [K, 2 + layers + values + moments // 2]  # float32 moments, two to an element
    assert f64.row_bytes == 8 * (2 + layers + values + moments // 2)
    assert ring.RingFormat(layout, ring.INT32).row_bytes == 4 * (2 + layers) + 4 * (values + moments)
    assert ring.RingFormat(layout, ring.STEP_ON_DEVICE).row_bytes == 4 * (values + moments) + 8  # n, counts on host
    gathered = ring.RingFormat(_layout(replicas=3), ring.GATHERED, (True, False, False, False))
    assert gathered.shape("gathered", K) == [K, 3, moments + layers]
    assert gathered.row_bytes == 4 * (values - 1) + 4 * 3 * (moments + layers) + 8 * layers
    assert ring_steps(f64.row_bytes) == 256  # a small row: RING_MAX_STEPS
    assert set(ring.RingFormat(layout, ring.COUNTS_ON_DEVICE).host_arrays(K)) == {"ints", "host_values", "samples"}


def _one_step(storage, step=0, value=0.0, moment=0.0, layout=None):
    layout = layout or _layout(samples=storage is not ring.STEP_ON_DEVICE)
    fmt = ring.RingFormat(layout, storage)
    columns = _columns(layout, np.random.default_rng(1))
    columns[ring.STEP] = np.full(K, step, np.int64)
    columns["values"] = np.full([K, layout.num_values], value, np.float64)
    columns[ring.MOMENTS] = np.full([K, layout.num_moments], moment, np.float64)
    with np.errstate(over="ignore"):
        rows = fmt.rows(_pack(fmt, columns))
    return rows


@pytest.mark.parametrize("step", [2**31 + 5, 2**40 + 3, 2**53])
def test_int64_steps_past_2_31_are_exact_in_float64_and_int64_storage(step):
    for storage in (ring.FLOAT64, ring.STEP_ON_DEVICE, ring.COUNTS_ON_DEVICE):
        rows = _one_step(storage, step=step)
        assert [int(s) for s in rows.step] == [step] * K, storage.name
        assert _block(rows).steps.tolist() == [step] * K


def test_past_2_53_float64_storage_rounds_the_step_and_int64_storage_does_not():
    step = 2**53 + 1
    assert int(_one_step(ring.FLOAT64, step=step).step[0]) == 2**53  # the nearest float64
    assert int(_one_step(ring.STEP_ON_DEVICE, step=step).step[0]) == step
    assert int(_one_step(ring.COUNTS_ON_DEVICE, step=2**62 + 1).step[0]) == 2**62 + 1


def test_int32_storage_keeps_integers_modulo_2_32():
    assert int(_one_step(ring.INT32, step=2**31 - 1).step[0]) == 2**31 - 1
    assert int(_one_step(ring.INT32, step=2**31 + 5).step[0]) == -(2**31) + 5  # wrapped, as an int32 counter
    assert int(_one_step(ring.INT32, step=2**32 + 7).step[0]) == 7


def test_float64_values_are_exact_in_float64_storage_and_float32_elsewhere():
    for value in (0.1, 1e300, 1 + 2**-40):
        assert _one_step(ring.FLOAT64, value=value).values[0].tolist() == [value] * 4
        for storage in (ring.INT32, ring.STEP_ON_DEVICE, ring.COUNTS_ON_DEVICE):
            got = _one_step(storage, value=value).values[0]
            assert got.dtype == np.float32
            with np.errstate(over="ignore"):
                assert got.tolist() == [float(np.float32(value))] * 4, storage.name
    assert np.isinf(_one_step(ring.INT32, value=1e300).values).all()  # float32 cannot hold it


def test_moments_are_float32_in_every_storage():
    for storage in ring.STORAGES[:4]:
        moments = _one_step(storage, moment=0.1).moments
        assert moments.dtype == np.float32 and (moments == np.float32(0.1)).all(), storage.name


def test_an_odd_count_of_packed_float32_is_padded_and_read_back():
    storage = ring.Storage("values packed", (ring.Array("rows", "float64", (ring.N, ring.STEP, ring.COUNTS,
                                                                            ring.MOMENTS, ring.VALUES),
                                                        packed=(ring.MOMENTS, ring.VALUES)),))
    layout = Layout.of(LAYERS, CHANNELS, (True, True), ("loss", "lr", "x"), ())  # 3 values
    fmt = ring.RingFormat(layout, storage)
    assert fmt.widths["rows"] == 2 + 2 + layout.num_moments // 2 + 2
    columns = _columns(layout, np.random.default_rng(2))
    rows = fmt.rows(_pack(fmt, columns))
    np.testing.assert_array_equal(rows.values, columns["values"])
    np.testing.assert_array_equal(rows.moments, columns[ring.MOMENTS])


def test_a_storage_without_a_column_the_layout_needs_is_refused():
    with pytest.raises(ValueError, match="samples"):
        ring.RingFormat(_layout(samples=True), ring.STEP_ON_DEVICE)
    with pytest.raises(ValueError, match="host_values"):
        ring.RingFormat(_layout(), ring.FLOAT64, (True, False, False, False))
    assert _layout(replicas=2).samples  # several replicas: always the values per channel
