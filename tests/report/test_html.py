"""The HTML report: self-contained, rules table first, every rule linked to its evidence."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import pytest

from pytest_modelrules.report import describe_evidence, evidence_anchor, evidence_files
from pytest_modelrules.report import html as report_html
from pytest_modelrules.report.mapping import PLOTS, RULE_PLOTS, evidence_plots, snake_name
from pytest_modelrules.rules.result import RuleResult, TriggerStep


class Page(HTMLParser):
    """What the tests look at in a page: tags with attributes, ids, links, images, rows."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def all(self, tag: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag]

    @property
    def ids(self) -> list[str]:
        return [a["id"] for _, a in self.tags if "id" in a]


def test_report_is_one_self_contained_page(demo_report):
    text = demo_report.read_text(encoding="utf-8")
    page = Page(text)
    assert demo_report.name == "report.html"
    imgs = page.all("img")
    assert sorted(i["data-plot"] for i in imgs) == sorted(PLOTS)
    for img in imgs:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        assert base64.b64decode(img["src"][len(prefix) :])[:8] == b"\x89PNG\r\n\x1a\n"
    # nothing to fetch: no stylesheet or script files, no remote URLs, a CSP that forbids them
    assert not page.all("link")
    assert all("src" not in s for s in page.all("script"))
    assert "http://" not in text and "https://" not in text
    csp = [m for m in page.all("meta") if m.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in csp[0]["content"]
    # each plot is also a PNG beside the page
    for spec in PLOTS.values():
        assert (demo_report.parent / spec.filename).read_bytes()[:4] == b"\x89PNG"


def test_rules_table_comes_first_and_links_to_evidence(demo_report):
    text = demo_report.read_text(encoding="utf-8")
    page = Page(text)
    assert text.index("<table class='rules'>") < text.index("<img")
    rows = [a["data-rule"] for a in page.all("tr") if "data-rule" in a]
    from pytest_modelrules.rules.registry import default_profile

    assert sorted(rows) == sorted(snake_name(n) for n in default_profile())
    ids = set(page.ids)
    assert len(page.ids) == len(ids), "duplicate ids"
    links = [a["href"] for a in page.all("a") if a.get("href", "").startswith("#")]
    assert links and all(link[1:] in ids for link in links)
    # the plain anchors that assertion messages name exist for every known rule
    for rule in RULE_PLOTS:
        assert evidence_anchor(rule)[1:] in ids
    # a rule's anchor sits in the section of its first evidence plot
    for rule in ("dead_relu", "class_imbalance", "direction_confusion", "loss_not_decreasing"):
        pos = text.index(f"id='{evidence_anchor(rule)[1:]}'")
        section = text.rindex("<div class='plot' id='plot-", 0, pos)
        assert text[section:].startswith(f"<div class='plot' id='plot-{evidence_plots(rule)[0]}--")


def test_verdicts_match_the_results(demo_run_dir, tmp_path):
    results = [
        RuleResult(
            "DeadRelu", "dead_relu", True, explanation="layer2 died", figure=71.9,
            figure_name="largest dead unit percent", limit=50.0,
            first_trigger=TriggerStep(22, "TRAIN", 16),
        ),
        RuleResult("ClassImbalance", "class_imbalance", False, explanation="balanced").to_dict(),
        RuleResult("MyCheck", "my_check", False, skipped=True, explanation="nothing to look at"),
    ]  # fmt: skip
    page_path = report_html.write_report(demo_run_dir, tmp_path, results=results, plots=())
    text = page_path.read_text(encoding="utf-8")
    assert "<td class='v-TRIGGERED'>TRIGGERED</td><td>22 (TRAIN step 16)</td>" in text
    assert "<td>largest dead unit percent = 71.9 (limit 50)</td><td>layer2 died</td>" in text
    assert "<td class='v-ok'>ok</td>" in text and "<td class='v-skipped'>skipped</td>" in text
    ids = set(Page(text).ids)
    # a rule with no plot of its own still gets its anchor, under "Other rules"
    assert "rule-my_check" in ids and text.index("Other rules") < text.index("id='rule-my_check'")


def test_rules_argument_picks_what_is_evaluated(demo_run_dir, tmp_path):
    page = report_html.write_report(
        demo_run_dir, tmp_path, rules=["class_imbalance", "dead_relu"], plots=()
    )
    rows = [a["data-rule"] for a in Page(page.read_text()).all("tr") if "data-rule" in a]
    assert rows == ["class_imbalance", "dead_relu"]


def test_report_degrades_when_rules_or_tensors_are_missing(fixture_run, tmp_path, monkeypatch):
    def broken(run):
        raise ImportError("no registry")

    monkeypatch.setattr(report_html, "_default_rule_set", broken)
    page = report_html.write_report(fixture_run, tmp_path, plots=["gradient_norms", "dead_relu"])
    text = page.read_text(encoding="utf-8")
    assert "could not list the rules: no registry" in text
    # the fixture has no gradients: that plot says why, the other is drawn
    assert "Not drawn: MissingTensorError" in text and "no gradients" in text
    assert [i["data-plot"] for i in Page(text).all("img")] == ["dead_relu"]
    assert text.count("Not drawn: left out of this report") == len(PLOTS) - 2


def test_a_failing_rule_becomes_an_error_row(demo_run_dir, tmp_path):
    class Boom:
        name = "boom"

        def evaluate(self, run):
            raise RuntimeError("kaput")

    page = report_html.write_report(demo_run_dir, tmp_path, rules=[Boom(), "dead_relu"], plots=())
    text = page.read_text(encoding="utf-8")
    assert "<td class='v-error'>error</td>" in text and "RuntimeError: kaput" in text
    assert "<tr data-rule='dead_relu'>" in text


def test_report_from_plugin_verdicts(demo_run_dir, truth_copy_dir, tmp_path):
    dead = RuleResult("DeadRelu", "dead_relu", True, run_name="demo", explanation="died")
    cm = RuleResult("Confusion", "confusion", False, run_name="x", run_path=str(truth_copy_dir))
    lost = RuleResult("Overfit", "overfit", False, run_name="elsewhere", run_path="/nowhere")
    results = [
        {**r.to_dict(include_evidence=False), "nodeid": f"tests/test_model.py::test_{r.name}"}
        for r in (dead, cm, lost)
    ]
    verdicts = tmp_path / "verdicts.json"
    runs = {"demo": str(demo_run_dir), "sample": str(truth_copy_dir), "gone": str(tmp_path / "no")}
    verdicts.write_text(json.dumps({"version": 1, "runs": runs, "results": results}))
    page_path = report_html.write_report_from_verdicts(
        verdicts, tmp_path / "out", plots=["dead_relu", "confusion_matrix"]
    )
    text = page_path.read_text(encoding="utf-8")
    page = Page(text)
    sections = [a["id"] for a in page.all("section")]
    assert sections == ["run-demo", "run-sample", "run-gone", "run-unattributed"]
    # results land in their run's section (by name, else by path), with their test's node id
    demo_part = text[text.index("id='run-demo'") : text.index("id='run-sample'")]
    assert "tests/test_model.py::test_dead_relu" in demo_part
    sample_part = text[text.index("id='run-sample'") : text.index("id='run-gone'")]
    assert "tests/test_model.py::test_confusion" in sample_part
    assert "could not be opened" in text[text.index("id='run-gone'") :]
    assert "tests/test_model.py::test_overfit" in text[text.index("id='run-unattributed'") :]
    ids = set(page.ids)
    assert len(ids) == len(page.ids)
    assert {"rule-dead_relu--demo", "rule-confusion--sample", "rule-dead_relu"} <= ids
    assert all(a["href"][1:] in ids for a in page.all("a") if a.get("href", "").startswith("#"))
    # plots per run (the two asked for), each saved as PNG too
    plots_of = [a["data-plot"] for a in page.all("img")]
    assert plots_of == ["confusion_matrix", "dead_relu"] * 2
    assert (tmp_path / "out" / "demo" / "dead_relu.png").is_file()
    assert (tmp_path / "out" / "sample" / "confusion_matrix.png").is_file()


def test_unknown_plot_names_are_refused(demo_run_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown plot"):
        report_html.write_report(demo_run_dir, tmp_path, results=[], plots=["histogram"])


def test_verdicts_of_an_unknown_version_are_refused(tmp_path):
    bad = tmp_path / "verdicts.json"
    bad.write_text(json.dumps({"version": 2, "runs": {}, "results": []}))
    with pytest.raises(ValueError, match="version 1"):
        report_html.write_report_from_verdicts(bad, tmp_path)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the verdicts"):
        report_html.write_report_from_verdicts(bad, tmp_path)


@pytest.mark.parametrize(
    ("rule", "plots"),
    [
        ("loss_not_decreasing", ("loss",)),
        ("LossNotDecreasing", ("loss",)),
        ("class_imbalance", ("label_counts", "confusion_matrix")),
        ("confusion", ("confusion_matrix", "misclassified")),
        ("direction_confusion", ("confusion_matrix", "misclassified")),
        ("recall_floor", ("confusion_matrix", "misclassified")),
        ("DeadRelu", ("dead_relu",)),
        ("vanishing_gradient", ("gradient_norms",)),
        ("stalled_training_rule", ()),
    ],
)
def test_rule_to_plot_mapping(rule, plots):
    assert evidence_plots(rule) == plots
    assert evidence_files(rule) == [f"{p}.png" for p in plots]


def test_evidence_anchor_and_description():
    assert evidence_anchor("DeadRelu") == "#rule-dead_relu"
    assert evidence_anchor("dead_relu", run_name="my run") == "#rule-dead_relu--my-run"
    assert describe_evidence("dead_relu", "out/") == (
        "evidence: out/report.html#rule-dead_relu (dead relu units per layer: dead_relu.png)"
    )
    assert (
        describe_evidence("stalled_training_rule")
        == "evidence: report.html#rule-stalled_training_rule"
    )


def test_verdicts_baseline_is_drawn_beside_each_run(demo_run_dir, baseline_run_dir, tmp_path):
    on_run = RuleResult(
        "ClassImbalance", "class_imbalance", True, run_name="demo", evidence_text="counts: ▁▇█"
    )
    on_base = RuleResult("ClassImbalance", "class_imbalance", False, run_name="fixed")
    verdicts = tmp_path / "verdicts.json"
    verdicts.write_text(
        json.dumps(
            {
                "version": 1,
                "runs": {"demo": str(demo_run_dir)},
                "baselines": {"fixed": str(baseline_run_dir)},
                "results": [
                    {**r.to_dict(include_evidence=False), "nodeid": "t.py::test_balance"}
                    for r in (on_run, on_base)
                ],
            }
        )
    )
    text = report_html.write_report_from_verdicts(
        verdicts, tmp_path / "out", plots=["label_counts"]
    ).read_text(encoding="utf-8")
    page = Page(text)
    assert [a["id"] for a in page.all("section")] == ["run-demo", "run-fixed"]
    demo_part = text[text.index("id='run-demo'") : text.index("id='run-fixed'")]
    assert "baseline <b>fixed</b>" in demo_part
    # the text evidence of CI logs is folded under the explanation
    assert "<details><summary>evidence</summary><pre>counts: ▁▇█</pre></details>" in demo_part
    assert "baseline" not in text[text.index("id='run-fixed'") :].split("<h3")[0]


def test_labels_left_out_of_the_plots_are_named_under_them(tmp_path):
    """A run whose labels hold -100, -1 and 7 with 5 logits: each plot that reads labels says
    under it which it left out, and the gallery is drawn (it failed on -100 before)."""
    from report_synthetic import write_out_of_range_run

    run = write_out_of_range_run(tmp_path / "run")
    text = report_html.write_report(run, tmp_path / "out", rules=[]).read_text(encoding="utf-8")
    note = "6 labels outside classes 0-4 left out"
    for key in ("label_counts", "confusion_matrix", "misclassified"):
        start = text.index(f"id='plot-{key}--run'")
        block = text[start : text.index("</div>", start)]
        assert f"<p class='note left-out'>{note}" in block, key
        assert "-100 ×2, -1 ×2, 7 ×2</p>" in block, key
        assert f"data-plot='{key}'" in block, key
    loss = text[text.index("id='plot-loss--run'") :]
    assert "left-out" not in loss[: loss.index("</div>")]
