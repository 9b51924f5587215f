"""Every route of the plugin under random and hostile queries (Hypothesis):
never a 5xx, a 4xx is JSON with a reason, a 200 is strict JSON (no NaN) or
CSV, and nothing outside what the data provider serves is ever reached: a
bn_stats run that sits next to the logdir (``../outside``) and a secret file
never show up in any answer. A few of the same against the real
``tensorboard`` process."""

import json
import os
import socket
import urllib.parse

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_client, write_synthetic
from tb_bnstats.capture import ReplicaBlock
from tb_bnstats.format import metadata
from tb_bnstats.write import summary
from test_e2e_tab import tensorboard

P = "/data/plugin/bn_stats"
SECRET = "s3cr3t-7f1c2a"  # in a file and a run outside the logdir
HOSTILE_LAYER = '<img src=x onerror="window.__pwned=1">'

# Each route and the parameters it takes (format: those with a CSV download).
PARAMS = {
    "/index.js": (),
    "/runs": (),
    "/overview": ("run",),
    "/heatmap": ("run", "measure", "bins", "format"),
    "/series": ("run", "layer", "quantities", "points", "format"),
    "/snapshot": ("run", "layer", "step", "format"),
    "/bands": ("run", "layer", "format"),
    "/replicas": ("run", "layer", "step", "format"),
    "/loss": ("run", "points", "format"),
    "/compare": ("run", "layer", "quantity", "points", "format"),
    "/findings": ("run",),
}


@pytest.fixture(scope="module")
def logdirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    logdir = root / "logs"
    write_synthetic(str(logdir), "synth", seed=1, steps=12, layers=(("conv1_bn", 3, 0.9, 1e-3),
                                                                   ("dense_bn", 2, 0.99, 1e-3)))
    write_synthetic(str(logdir), "synth_b", seed=2, steps=8, layers=(("conv1_bn", 3, 0.9, 1e-3),))
    with summary.Writer(str(logdir / "odd")) as w:
        for step in (1, 2, 3):
            w.layer_moments(HOSTILE_LAYER, step, batch_mean=np.array([np.nan, 1.0]), batch_var=np.ones(2),
                            moving_mean=np.array([np.inf, 0.0]), moving_var=np.ones(2), updates=step,
                            momentum=0.9, epsilon=1e-3, snapshot=True)
    # A layer on 3 replicas, each with its own moving statistics (the /replicas route's data).
    rng = np.random.default_rng(4)
    replicas = ReplicaBlock(batch_mean=rng.normal(size=(4, 3, 2)), batch_var=rng.uniform(0.5, 2, (4, 3, 2)),
                            samples=np.full((4, 3), 8.0), moving_mean=rng.normal(size=(4, 3, 2)),
                            moving_var=rng.uniform(0.5, 2, (4, 3, 2)))
    with summary.Writer(str(logdir / "multi")) as w:
        w.layer_block(metadata.LayerInfo(name="bn", channels=2, momentum=0.9, epsilon=1e-3, replicas=3,
                                         moving_per_replica=True), [1, 2, 3, 4], replicas.batch_mean[:, 0],
                      replicas.batch_var[:, 0], replicas.moving_mean[:, 0], replicas.moving_var[:, 0], [1, 2, 3, 4],
                      snapshot_steps=[2, 4], replicas=replicas)
    # Outside the logdir: a run TensorBoard does not serve, and a file.
    write_synthetic(str(root / "outside"), "run", seed=3, steps=4, layers=((SECRET, 2, 0.9, 1e-3),))
    (root / "secret.txt").write_text(SECRET)
    return str(root), str(logdir)


@pytest.fixture(scope="module")
def client(logdirs):
    c, plugin = make_client(logdirs[1])
    assert set(plugin.get_plugin_apps()) == set(PARAMS), "a route without fuzzing: add it to PARAMS"
    return c


def strict_json(text):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def check_response(r, sent):
    """The contract of every answer."""
    text = r.get_data(as_text=True)
    assert r.status_code < 500, (sent, r.status_code, text[:300])
    assert SECRET not in text, sent
    assert "root:x:0:0" not in text, sent
    if r.status_code >= 400:
        assert r.mimetype == "application/json", (sent, r.mimetype)
        err = strict_json(text)["error"]
        assert isinstance(err, str) and len(err) > 5, (sent, err)
        return None
    assert r.status_code == 200, (sent, r.status_code)
    if r.mimetype == "text/csv":
        assert "attachment" in r.headers["Content-Disposition"]
        return None
    if r.mimetype == "text/javascript":
        return None
    assert r.mimetype == "application/json", (sent, r.mimetype)
    return strict_json(text)


VALID = {
    "run": ["synth", "synth_b", "odd", "multi"],
    "layer": ["conv1_bn", "dense_bn", "bn", HOSTILE_LAYER],
    "quantities": list(metadata.LAYER_SERIES[:4]) + ["batch_mean,mean_gap/max", "convergence"],
    "quantity": list(metadata.LAYER_SERIES),
    "measure": list(metadata.GAP_SERIES),
    "points": ["2", "3", "1000", "20000"],
    "bins": ["1", "2", "200", "2000"],
    "step": ["0", "5", "12", "4611686018427387904"],
    "format": ["json", "csv"],
}
HOSTILE = [
    "", " ", "../../etc/passwd", "../outside/run", "..", ".", "/", "/etc/passwd", "..%2Foutside%2Frun",
    "synth/../synth", "synth\x00", "\x00", "a\x00b", "synth/", "./synth", "file:///etc/passwd",
    "NaN", "nan", "inf", "-inf", "Infinity", "-1", "-0", "+5", "0x10", "1e3", "1.5", " 5", "5 ", "٣",
    "9" * 16, "9" * 400, str(2**63), str(-(2**63)), "<script>window.__pwned=1</script>",
    "\u202eevil", "🙂", "e\u0301", "x" * 10000, "'\"`", "%", "%00", "%FF", "\ud7ff", "\uffff",
    "mean_gap/max,../../x", ",", ",,,", "batch_mean," * 50,
]
values = st.one_of(
    st.sampled_from(sorted({v for vs in VALID.values() for v in vs})),
    st.sampled_from(HOSTILE),
    st.text(max_size=40),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@st.composite
def queries(draw):
    route = draw(st.sampled_from(sorted(PARAMS)))
    known = list(PARAMS[route])
    names = st.one_of(st.sampled_from(known or ["run"]), st.sampled_from(["run", "layer", "format", "bogus"]),
                      st.text(max_size=8))
    pairs = []
    for name in known:  # mostly well-formed, so that the deep paths are reached
        if draw(st.integers(0, 3)):
            pairs.append((name, draw(st.sampled_from(VALID.get(name, ["x"])))))
    for _ in range(draw(st.integers(0, 4))):  # then hostile additions and repeats
        pairs.append((draw(names), draw(values)))
    order = draw(st.permutations(pairs))
    return route, list(order)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=queries())
def test_every_route_under_random_queries(client, query):
    route, pairs = query
    qs = urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)
    r = client.get(P + route, query_string=qs)
    check_response(r, (route, pairs))


@settings(max_examples=150, deadline=None)
@given(route=st.sampled_from(sorted(PARAMS)), raw=st.binary(max_size=60))
def test_every_route_under_raw_query_bytes(client, route, raw):
    """Bytes as the query string: invalid UTF-8, bare %, NUL, & and = anywhere."""
    r = client.get(P + route, environ_overrides={"QUERY_STRING": raw.decode("latin-1")})
    check_response(r, (route, raw))


@pytest.mark.parametrize("route", sorted(set(PARAMS) - {"/index.js", "/runs"}))
@pytest.mark.parametrize("run", ["../outside/run", "../../outside/run", "outside/run", "../outside",
                                 os.sep + "outside" + os.sep + "run", "run"])
def test_runs_outside_the_logdir_are_unknown(client, logdirs, route, run):
    root, _ = logdirs
    absolute = os.path.join(root, "outside", "run")
    for name in (run, absolute):
        pairs = [("run", name), ("layer", SECRET)] if "layer" in PARAMS[route] else [("run", name)]
        r = client.get(P + route, query_string=urllib.parse.urlencode(pairs))
        assert r.status_code == 400, (route, name, r.get_data(as_text=True))
        assert "unknown run" in strict_json(r.get_data(as_text=True))["error"]


def test_query_string_that_is_not_utf8_is_a_400(client):
    """Raw bytes in QUERY_STRING that are not UTF-8 (a WSGI server may pass
    them as is): werkzeug raises UnicodeDecodeError on request.args, which was
    a 500 before the routes caught it."""
    for route in sorted(set(PARAMS) - {"/index.js"}):
        r = client.get(P + route, environ_overrides={"QUERY_STRING": "run=\x80\xff"})
        assert r.status_code == 400, route
        assert strict_json(r.get_data(as_text=True))["error"] == "the query string is not valid UTF-8"


def test_valid_queries_of_every_route_answer_200(client):
    """The fuzzing above reaches the real work: each route answers 200 to a
    well-formed query, the hostile layer name (NaN and inf moments) included."""
    urls = ["/runs", "/overview?run=odd", "/heatmap?run=odd", "/findings?run=odd",
            "/loss?run=synth&points=5", "/compare?run=synth&run=synth_b&layer=conv1_bn&quantity=batch_mean"]
    layer = urllib.parse.quote(HOSTILE_LAYER)
    urls += [f"/series?run=odd&layer={layer}", f"/snapshot?run=odd&layer={layer}&step=2",
             f"/bands?run=odd&layer={layer}", f"/series?run=odd&layer={layer}&format=csv"]
    for url in urls:
        r = client.get(P + url)
        assert r.status_code == 200, (url, r.get_data(as_text=True)[:300])
        check_response(r, url)
    body = strict_json(client.get(P + "/runs").get_data(as_text=True))
    odd = [r for r in body["runs"] if r["run"] == "odd"][0]
    assert [lay["name"] for lay in odd["layers"]] == [HOSTILE_LAYER]
    snap = strict_json(client.get(P + f"/snapshot?run=odd&layer={layer}").get_data(as_text=True))
    assert snap["rows"]["batch_mean"] == [None, 1.0] and snap["rows"]["moving_mean"] == [None, 0.0]


def raw_http(host, port, target):
    """One GET with ``target`` (str or bytes) sent byte for byte: no quoting,
    no check that it is ASCII."""
    if isinstance(target, str):
        target = target.encode("utf-8")
    with socket.create_connection((host, port), timeout=15) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers.get("Content-Type", ""), body.decode("utf-8", "replace")


def test_real_tensorboard_under_hostile_requests(logdirs):
    _, logdir = logdirs
    targets = [
        P + "/series?run=..%2Foutside%2Frun&layer=" + SECRET,
        P + "/series?run=../outside/run&layer=" + SECRET,
        P + "/overview?run=%00",
        P + "/overview?run=synth%00",
        P + "/overview?run=%FF%FE",
        P + "/snapshot?run=synth&layer=conv1_bn&step=" + "9" * 300,
        P + "/snapshot?run=synth&layer=conv1_bn&step=NaN",
        P + "/heatmap?run=synth&bins=-1",
        P + "/series?run=synth&layer=conv1_bn&points=1e309",
        P + "/compare?" + "&".join(["run=synth"] * 500) + "&layer=conv1_bn",
        P + "/loss?run=" + "x" * 10000,
        P + "/runs?%",
        P + "/../../../../etc/passwd",
        P + "/..%2F..%2F..%2Fetc%2Fpasswd",
        P + "/%2e%2e/%2e%2e/secret.txt",
        "/data/plugin/bn_stats%2F..%2F..%2F..%2Fsecret.txt",
        P + "/runs/../../../../../secret.txt",
        (P + "/overview?run=").encode() + b"\x80\xff",  # raw bytes, not UTF-8
        (P + "/series?run=synth&layer=").encode() + "é".encode("latin-1"),
    ]
    with tensorboard(logdir) as base:
        host, port = base.rsplit("//", 1)[1].split(":")
        for target in targets:
            status, ctype, body = raw_http(host, int(port), target)
            assert status < 500, (target, status, body[:300])
            assert SECRET not in body and "root:x:0:0" not in body, target
            text = target if isinstance(target, str) else target.decode("latin-1")
            if text.startswith(P + "/") and "?" in text and status == 400:
                assert ctype.startswith("application/json") and strict_json(body)["error"], target
        status, _, body = raw_http(host, int(port), P + "/series?run=..%2Foutside%2Frun&layer=" + SECRET)
        assert status == 400 and "unknown run" in strict_json(body)["error"]
        # TensorBoard's server re-encodes raw bytes (run='\x80' here): a 400 like
        # any unknown run. A WSGI server passing them raw meets the UTF-8 check.
        status, _, body = raw_http(host, int(port), (P + "/overview?run=").encode() + b"\x80")
        assert status == 400 and "unknown run" in strict_json(body)["error"]
        status, _, body = raw_http(host, int(port), P + "/runs")
        assert status == 200 and {r["run"] for r in strict_json(body)["runs"]} == {"synth", "synth_b", "odd",
                                                                                            "multi"}
