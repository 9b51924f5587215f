"""The newcomer's path, end to end: ``demo/train.py`` (Keras) and
``demo/train_torch.py`` (PyTorch), ``demo/train_replicas.py`` (Keras over 4
devices) and ``demo/train_tf1.py`` (TensorFlow 1-style graphs) train the
demo runs in subprocesses, a real ``tensorboard --logdir`` serves them, and Debian's
chromium opens the BN Convergence tab: every demo run is listed with exactly
the findings ``demo/train.py`` promises (``EXPECTED``). The overview of each
run is saved as ``docs/screenshots/demo-<run>.png`` for the walkthrough
(docs/demo.md), so those pictures are remade from the demo's data by every
test run."""

import pathlib
import subprocess
import sys

import pytest

import tb_bnstats
from test_e2e_tab import SHOTS, browser, open_tab, tensorboard  # noqa: F401 - browser is a fixture

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "demo"))
import replica_runs  # noqa: E402 - demo/train_replicas.py's runs (that script sets devices up on import)
import tf1_runs  # noqa: E402 - demo/train_tf1.py's runs (that script sets TF_USE_LEGACY_KERAS on import)
import train as demo  # noqa: E402
import train_torch as torch_demo  # noqa: E402

EXPECTED = {**demo.EXPECTED, **torch_demo.EXPECTED, **replica_runs.EXPECTED, **tf1_runs.EXPECTED}
SCRIPTS = {"train.py": demo.RUNS, "train_torch.py": torch_demo.RUNS, "train_replicas.py": replica_runs.RUNS,
           "train_tf1.py": tf1_runs.RUNS}


@pytest.fixture(scope="module")
def demo_logdir(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("demo_logs")
    for script, runs in SCRIPTS.items():
        done = subprocess.run([sys.executable, str(ROOT / "demo" / script), "--logdir", str(logdir)],
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        # The printed summary names every run with its findings.
        for run in runs:
            line = next(ln for ln in done.stdout.splitlines() if ln.startswith(run + " "))
            assert f"findings: {', '.join(sorted(EXPECTED[run])) or 'none'} " in line, line
        # A second call skips what is there (demo/demo_runs.py's train_missing, shared by every script:
        # checked once).
        if script != "train.py":
            continue
        again = subprocess.run([sys.executable, str(ROOT / "demo" / script), "--logdir", str(logdir)],
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and again.stdout.count("already written, skipping") == len(runs)
    return str(logdir)


def test_demo_runs_have_their_findings_in_the_logs(demo_logdir):
    # From the logged quantities, plus what the callback measured on the model at the end of fit (stored).
    found = {}
    for f in tb_bnstats.diagnose(demo_logdir):
        found.setdefault(f.run, set()).add(f.code)
    assert {run: found.get(run, set()) for run in EXPECTED} == EXPECTED


def test_tab_lists_each_demo_run_with_its_findings(demo_logdir, browser):  # noqa: F811 - the fixture
    SHOTS.mkdir(parents=True, exist_ok=True)
    layers = {run: len(data.layers) for run, data in tb_bnstats.load(demo_logdir).items()}
    findings = {run: [f for f in tb_bnstats.diagnose(demo_logdir) if f.run == run] for run in EXPECTED}
    rank = ("error", "warning", "info", "ok")
    worst = {run: next((sev for sev in rank if any(f.severity == sev for f in fs)), "ok")
             for run, fs in findings.items()}
    with tensorboard(demo_logdir) as base:
        page, frame, errors, _ = open_tab(browser, base)
        chips = frame.locator("button.bn-chip")
        assert sorted(chips.nth(i).get_attribute("data-run") for i in range(chips.count())) == sorted(EXPECTED)
        # Every run's severity in the selector, as text; the tab opens on the first of the worst ones.
        shown = {chips.nth(i).get_attribute("data-run"): chips.nth(i).locator("[data-severity]").text_content()
                 for i in range(chips.count())}
        assert shown == worst
        first_worst = min(sorted(EXPECTED), key=lambda run: rank.index(worst[run]))
        assert frame.locator("button.bn-chip[aria-pressed=true]").get_attribute("data-run") == first_worst
        for run, codes in EXPECTED.items():
            frame.click(f"button.bn-chip[data-run='{run}']")
            banner = frame.locator("[data-role=findings-banner]")
            banner.wait_for(state="visible")
            frame.wait_for_function(
                "run => document.querySelector('[data-role=findings]')?.dataset.run === run", arg=run)
            shown = set(frame.locator("[data-role=findings-list] li").evaluate_all(
                "els => els.map(e => e.dataset.code)"))
            assert shown == codes, run
            if not codes:
                assert banner.get_attribute("data-level") == "ok"
            frame.wait_for_selector("[data-role=heatmap] canvas")
            # The badges are the findings: each layer a finding names has its badge, with its own message.
            for f in findings[run]:
                for layer in f.layers:
                    badge = frame.locator(f"tr[data-layer='{layer}'] [data-badge='finding-{f.code}']")
                    assert badge.count() == 1, (run, layer, f.code)
                    assert badge.get_attribute("title") == f.message_of(layer)
            badged = frame.locator("[data-role=layers] [data-badge^='finding-']").count()
            assert badged == sum(len(f.layers) for f in findings[run]), run
            # Population statistics measured at each epoch end: a "vs population" cell per layer (the runs over
            # several devices and the TF1 graphs measure none).
            populated = 0 if run in replica_runs.RUNS or run in tf1_runs.RUNS else layers[run]
            summary = frame.locator("[data-role=replicas-summary]")
            assert summary.count() == (run in replica_runs.RUNS), run
            if run in replica_runs.RUNS:
                synced = "BN synchronized" if replica_runs.RUNS[run] else "BN not synchronized"
                assert summary.text_content().startswith(f"4 replicas · {synced}"), run
            assert frame.locator("[data-role=layers] tbody tr [data-role=population-gap]").count() == populated, run
            page.screenshot(path=str(SHOTS / f"demo-{run}.png"))
        assert errors == []
