"""MkDocs hook: the Diagnostics reference (docs/codes.md) generated at build time from
tb_bnstats/diagnosis/codes.py -- CODES, SCENARIOS and THRESHOLDS with the reasoning written as comments
above each threshold.

A hook rather than mkdocs-gen-files: no plugin to install, and docs/codes.md stays a real file (its
intro and the marker the tables replace), so relative links to it from the README and from the other
pages resolve on GitHub as on the site. codes.py is loaded from its path, not imported through the
package: the build needs neither an installed tb_bnstats nor any framework (codes.py imports only
dataclasses).
"""

import html
import importlib.util
import pathlib
import re

MARKER = "<!-- generated from tb_bnstats/diagnosis/codes.py -->"
PAGE = "codes.md"
SOURCE = pathlib.Path(__file__).resolve().parents[2] / "tb_bnstats" / "diagnosis" / "codes.py"


def _load_codes():
    spec = importlib.util.spec_from_file_location("_tb_bnstats_codes", SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def threshold_groups(source_text):
    """[(keys, reasoning)] in source order: the comment lines above a run of keys of THRESHOLDS are the
    reasoning of every key of that run."""
    lines = source_text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("THRESHOLDS = {"))
    groups, comment, keys = [], [], []
    for ln in lines[start + 1:]:
        stripped = ln.strip()
        if stripped == "}":
            break
        if stripped.startswith("#"):
            if keys:
                groups.append((keys, " ".join(comment)))
                comment, keys = [], []
            comment.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r'"(\w+)"\s*:', stripped)
        if match:
            keys.append(match.group(1))
    if keys:
        groups.append((keys, " ".join(comment)))
    return groups


def _cell(text):
    """Plain text as a Markdown table cell: no emphasis, no HTML, no column breaks."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def _code(text):
    return "`" + text + "`"


def render(codes=None, source_text=None):
    codes = codes or _load_codes()
    source_text = source_text if source_text is not None else SOURCE.read_text(encoding="utf-8")
    out = ["## Codes", "",
           f"Severities: {', '.join(_code(s) for s in codes.SEVERITIES)}. The severity below is the code's "
           "default (some rules lower or raise it: [Diagnostics, Rules](diagnostics.md#rules)).", "",
           "| code | severity | scenario | what it means | fix |", "|---|---|---|---|---|"]
    for name in sorted(codes.CODES):
        c = codes.CODES[name]
        scenario = c.scenario if c.scenario in codes.SCENARIOS else "–"
        out.append(f"| {_code(c.code)} | {c.severity} | {scenario} | {_cell(c.title)} | {_cell(c.fix)} |")
    out += ["", "## Scenarios", "", "| scenario | what goes wrong | codes |", "|---|---|---|"]
    for key, text in codes.SCENARIOS.items():
        raised = ", ".join(_code(c.code) for c in sorted(codes.CODES.values(), key=lambda c: c.code)
                           if c.scenario == key)
        out.append(f"| {key} | {_cell(text)} | {raised} |")
    groups = threshold_groups(source_text)
    listed = [k for keys, _ in groups for k in keys]
    if sorted(listed) != sorted(codes.THRESHOLDS):
        raise ValueError(f"codes.py's THRESHOLDS could not be read with their comments: {listed}")
    out += ["", "## Thresholds", "",
            "Every threshold of the rules, with its reasoning (the comments above it in `codes.py`).", "",
            "| threshold | value | reasoning |", "|---|---|---|"]
    for keys, reasoning in groups:
        names = "<br>".join(_code(k) for k in keys)
        values = "<br>".join(repr(codes.THRESHOLDS[k]) for k in keys)
        out.append(f"| {names} | {values} | {_cell(reasoning)} |")
    return "\n".join(out) + "\n"


def on_page_markdown(markdown, page, config, files, **kwargs):
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/{PAGE} has lost its marker {MARKER!r}")
    return markdown.replace(MARKER, render())
