"""The documentation: the MkDocs site builds with ``--strict`` (every page, link, anchor, the API reference
from the docstrings and the Diagnostics reference generated from ``tb_bnstats/diagnosis/codes.py``), every
relative link and image of README.md points to a file of the repository, and the README's diagnostics
table lists exactly the codes of ``CODES``."""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# [text](target) and ![alt](target); the target ends at whitespace or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _codes():
    """codes.py loaded from its path, as the docs hook does (it needs no framework)."""
    spec = importlib.util.spec_from_file_location("_codes_for_test_docs", ROOT / "tb_bnstats/diagnosis/codes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _outside_code(text):
    """The text without fenced code blocks and inline code spans."""
    text = re.sub(r"(?ms)^```.*?^```", "", text)
    return re.sub(r"`[^`\n]*`", "", text)


def test_mkdocs_build_strict(tmp_path):
    """The docs site builds with --strict (the docs extra: pip install -e ".[docs]")."""
    assert importlib.util.find_spec("mkdocs") is not None, 'the docs extra is not installed: pip install -e ".[docs]"'
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=600, env=env,
                          cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    site = tmp_path / "site"
    # The generated reference holds every code and threshold of codes.py, the API page the public API.
    codes_page = (site / "codes" / "index.html").read_text(encoding="utf-8")
    codes = _codes()
    for name in [*codes.CODES, *codes.SCENARIOS, *codes.THRESHOLDS]:
        assert name in codes_page, name
    assert "<!-- generated from" not in codes_page
    api_page = (site / "api" / "index.html").read_text(encoding="utf-8")
    for ident in ["tb_bnstats.frameworks.keras.callback.BNStatsCallback", "tb_bnstats.torch.BNStatsMonitor",
                  "tb_bnstats.compat.v1.BNStatsFetches", "tb_bnstats.compat.v1.BNStatsHook",
                  "tb_bnstats.read.reader.load", "tb_bnstats.diagnosis.diagnose",
                  "tb_bnstats.diagnosis.finding.Finding", "tb_bnstats.diagnosis.live.diagnose_model",
                  "tb_bnstats.measure.population.population_stats", "tb_bnstats.measure.population.recalibrate",
                  "tb_bnstats.measure.gap.gap_report", "tb_bnstats.write.summary.Writer"]:
        assert f'id="{ident}"' in api_page, ident


def test_readme_relative_links_point_to_files():
    targets = LINK.findall(_outside_code(README.read_text(encoding="utf-8")))
    relative = [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]
    assert relative, "no relative link found: the pattern is wrong"
    missing = [t for t in relative if not (ROOT / t.split("#")[0]).is_file()]
    assert missing == []
    # The images are the screenshots the tests write.
    assert any(t.startswith("docs/screenshots/") for t in relative)


def test_readme_diagnostics_table_lists_exactly_the_codes():
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Diagnostics\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"(?m)^\| (BN\d{3}) \| ([^|]+) \|", section)
    assert sorted(code for code, _ in rows) == sorted(_codes().CODES)
    assert len(rows) == len(set(code for code, _ in rows))
    # Each row names the code's default severity (and the other one where a rule changes it).
    codes = _codes().CODES
    for code, severity in rows:
        assert codes[code].severity in severity, (code, severity)
