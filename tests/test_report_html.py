"""The HTML report is self-contained (no external assets) and opens in headless Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from epsl.analysis.figures import fig_eps_l_panels, fig_logits, save_figure
from epsl.analysis.folders import load_runs
from epsl.analysis.paired import paired_tests
from epsl.analysis.report import audit_notes, write_report
from epsl.analysis.synthetic import write_synthetic_run
from epsl.analysis.tables import comparison_table
from tests.system import CHROMIUM, needs_chromium


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    runs = load_runs([write_synthetic_run(root / k, k, n=60, seed=i,
                                          tables=("diagnostics", "attack", "audit"))
                      for i, k in enumerate(["natural", "ls+noise"])])
    out = root / "out"
    paths = save_figure(fig_eps_l_panels(runs, eps=0.3), out, "fig1_eps_l_panels")
    entries = [
        {"name": "fig1_eps_l_panels", "caption": "Figure 1 <test>",
         "png": paths["png"].name},
        {"name": "fig2_logits", "caption": "Figure 2", "figure": fig_logits(runs)},
        {"name": "fig1_svg", "caption": "Figure 1 as SVG", "svg": paths["svg"].name},
    ]
    table = comparison_table(runs)
    return write_report(out, table, entries, notes=audit_notes(runs), config={"eps": 0.3})


def test_report_is_self_contained(report: Path) -> None:
    text = report.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", text), "external asset"
    assert "<script" not in text and "<link" not in text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 2
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert text.count("<svg") >= 1
    assert "Figure 1 &lt;test&gt;" in text  # captions are escaped
    assert "LS α=0.75 + σ=0.5" in text and "worst-case robust accuracy" in text


@needs_chromium
def test_report_opens_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or str(CHROMIUM)
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
               "--enable-logging=stderr", "--v=0", "--dump-dom", report.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert '<table class="comparison">' in dom
    comparison = dom[dom.index('<table class="comparison">'):]
    comparison = comparison[:comparison.index("</table>")]
    assert comparison.count("<tr>") == 1 + 2  # header + one row per model
    assert dom.count('src="data:image/png;base64,') == 2
    assert "<svg" in dom and "epsl comparison" in dom
    console = [line for line in result.stderr.splitlines()
               if "CONSOLE" in line or "Uncaught" in line or "Failed to load" in line]
    assert not console, console


@pytest.fixture(scope="module")
def study_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report of four defenses with audits and paired tests, as compare writes it."""
    root = tmp_path_factory.mktemp("study")
    runs = load_runs([write_synthetic_run(root / k, k, n=200, seed=i,
                                          tables=("diagnostics", "attack", "audit"))
                      for i, k in enumerate(["natural", "ls+noise", "lsq+noise", "pgd"])])
    table = comparison_table(runs, eps=0.3)
    return write_report(root / "out", table, [], notes=audit_notes(runs),
                        paired=paired_tests(runs, eps=0.3), title="The digits study")


def test_report_leads_with_the_answer(study_report: Path) -> None:
    text = study_report.read_text()
    assert "<title>The digits study</title>" in text
    lead = text[:text.index("<h2>")]  # everything before the first section heading
    assert "a replacement for adversarial training" in lead
    assert '<table class="headline">' in lead and lead.count("<li><b>") == 4
    assert "all attacks (worst)" in lead and "vs adversarial training" in lead
    assert "<td>reference</td>" in lead  # the adversarially trained model itself
    # every number of the first screen carries its interval
    for cell in re.findall(r"<td>(\d+\.\d%[^<]*)</td>", lead):
        assert re.fullmatch(r"\d+\.\d% \[\d+\.\d, \d+\.\d\]", cell), cell
    assert lead.index('<table class="headline">') < text.index('<table class="comparison">')


@needs_chromium
def test_first_screen_shows_the_headline_without_scrolling_sideways(study_report: Path,
                                                                    tmp_path: Path) -> None:
    """At 1400x900 in headless Chromium: no horizontal scroll, the headline table (with the
    verdicts in its last column) inside the first screen."""
    page = tmp_path / "measure.html"
    page.write_text(f"""<!DOCTYPE html><html><body style="margin:0">
<iframe id="r" src="{study_report.as_uri()}" width="1400" height="900" style="border:0"></iframe>
<pre id="out">pending</pre><script>
document.getElementById("r").addEventListener("load", () => {{
  const doc = document.getElementById("r").contentDocument;
  const box = doc.querySelector("table.headline").getBoundingClientRect();
  document.getElementById("out").textContent = JSON.stringify({{
    width: doc.documentElement.scrollWidth, right: box.right, bottom: box.bottom}});
}});</script></body></html>""")
    chromium = shutil.which("chromium") or str(CHROMIUM)
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
               "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom",
               page.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="out">(\{[^<]*\})</pre>', result.stdout)
    assert found, result.stdout[-2000:] + result.stderr[-2000:]
    box = json.loads(found.group(1))
    assert box["width"] <= 1400 and box["right"] <= 1400 and box["bottom"] <= 900, box


def test_the_report_names_its_threat_model(tmp_path: Path) -> None:
    from epsl.analysis.report import render_report

    l2 = load_runs([write_synthetic_run(tmp_path / k, k, n=40, seed=i, norm="l2",
                                        tables=("diagnostics", "attack", "eps_star"))
                    for i, k in enumerate(["natural", "pgd"])])
    text = render_report(comparison_table(l2), [], title="The digits study")
    assert "<title>The digits study (ℓ2)</title>" in text and "<h1>The digits study (ℓ2)</h1>" in text
    assert "Threat model: ℓ2 (l2). Every ε, ε_L and ε* is an ℓ2 distance" in text
    assert "gradient gap in the dual norm ℓ2" in text
    # a title that names the norm already is left alone; ℓ∞ keeps its title, the notes say ℓ∞
    assert "<title>An ℓ2 study</title>" in render_report(comparison_table(l2), [],
                                                          title="An ℓ2 study")
    linf = load_runs([write_synthetic_run(tmp_path / "linf", "natural", n=40,
                                          tables=("diagnostics",))])
    text = render_report(comparison_table(linf), [], title="The digits study")
    assert "<title>The digits study</title>" in text
    assert "Threat model: ℓ∞ (linf)." in text and "dual norm ℓ1" in text
