"""The confusion table of a scenario suite (Keras' tests/diagnosis_scenarios.py,
PyTorch's tests/pytorch/torch_scenarios.py), as the README prints it.
Imports no framework."""


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
