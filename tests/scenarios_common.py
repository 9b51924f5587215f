"""What the two scenario suites (Keras' tests/diagnosis_scenarios.py,
PyTorch's tests/pytorch/torch_scenarios.py) share: the data, the check that
needs the trained model, and the confusion table of docs/scenarios.md.
Imports no framework."""

import numpy as np

# Every probe and population measurement when due, whatever it costs: the scenarios' findings must not depend
# on this machine's speed (the default spaces them to 1% of the training time: measure_budget).
EVERY_MEASUREMENT = {"measure_budget": None}


def digits(n=None, sort=False):
    """scikit-learn's bundled digits (nothing downloaded) as float32 ``x``
    [N, 64] scaled to ``x / 16 * 4 + 1`` (far from the moving statistics'
    initial 0 / 1) and int64 labels; permuted with a fixed seed, or sorted by
    label (stable); the first ``n``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype("float32") * 4.0 + 1.0
    y = d.target.astype("int64")
    order = np.argsort(y, kind="stable") if sort else np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    if n is not None:
        x, y = x[:n], y[:n]
    return x.reshape(len(x), 64), y


def live_findings(name, model):
    """Findings that need the trained model, not the logs: S5 (dropout
    before BN) through :func:`tb_bnstats.diagnose_model`."""
    import tb_bnstats

    if name != "s5_dropout_before_bn":
        return []
    x, y = digits(n=896)
    return tb_bnstats.diagnose_model(model, (x, y), num_samples=512, run=name)


def scenario_of(name):
    """``"S3"`` for ``s3_lost_on_restore``, ``"healthy"``, or ``"-"``."""
    if name.startswith("healthy"):
        return "healthy"
    return name.split("_")[0].upper() if name[:1] == "s" and name[1:2].isdigit() else "-"


def confusion_table(logdir, scenarios, live=None):
    """Markdown: each run of ``scenarios`` (``{name: what}``) -> the findings
    ``diagnose()`` produced from the logs (codes, layers), plus ``live``
    ``{run: findings}`` from the models."""
    import tb_bnstats

    findings = tb_bnstats.diagnose(logdir)
    rows = ["| scenario | run | what | findings |", "|---|---|---|---|"]
    for name, what in scenarios.items():
        mine = [f"{f.code} {f.severity} ({', '.join(f.layers)})" for f in findings if f.run == name]
        mine += [f"{f.code} {f.severity} ({', '.join(f.layers)}; live model: diagnose_model)"
                 for f in (live or {}).get(name, [])]
        rows.append(f"| {scenario_of(name)} | `{name}` | {what} | {'; '.join(mine) or 'none'} |")
    return "\n".join(rows)
