"""`localnet report` with several runs: the comparison table's numbers are those the run directories hold
(read back here from summary.json and metrics.jsonl by hand), in Markdown and HTML, with the curves plotted."""

import html
import json
import re
import shlex
import shutil
import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner

import localnet
from localnet.cli import main
from localnet.report import rule_cell
from localnet.training import train

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "specs" / "quickstart.yaml"
SMALL = ["backend=numpy", "train.epochs=3", "network.layers.h1.size=16", "network.layers.h2.size=16"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three real quick-start-sized runs: DTP with diagnostics, backprop without, and an auto-encoder."""
    root = tmp_path_factory.mktemp("runs")
    variants = {"dtp": ["diagnostics.every=10"], "bp": ["rule.name=bp", "name=baseline"],
                "ae": ["network.loss=reconstruction", "network.layers.out.size=64",
                       "network.layers.out.activation=sigmoid", "train.epochs=2"]}
    out = {}
    for name, extra in variants.items():
        _, run = train(localnet.load_spec(QUICKSTART, SMALL + extra), runs_root=root / name)
        out[name] = run.path
    return out


def table_rows(text):
    """{run directory name: {column: cell}} of a Markdown table."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "").split()) == {"---"}
    rows = {}
    for line in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split(" | "))))
        rows[cells["run"].split()[0]] = cells
    return rows


def read(path):
    summary = json.loads((path / "summary.json").read_text())
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return summary, records


def test_the_table_holds_each_runs_numbers(runs):
    result = CliRunner().invoke(main, ["report", str(runs["dtp"]), str(runs["bp"])])
    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)
    assert list(rows) == [runs["dtp"].name, runs["bp"].name]
    for name in ("dtp", "bp"):
        summary, records = read(runs[name])
        row = rows[runs[name].name]
        epochs = [r for r in records if r.get("kind") != "diagnostics"]
        best = max(epochs, key=lambda r: (r["val_accuracy"], -r["epoch"]))
        # the spec's name, and the --set overrides the run was made with (`name=` is the name itself)
        given = ", ".join(SMALL + (["diagnostics.every=10"] if name == "dtp" else ["rule.name=bp"]))
        assert row["spec"] == f"{'quickstart' if name == 'dtp' else 'baseline'} ({given})"
        assert row["data"] == "digits" and row["epochs"] == "3"
        assert row["rule"].startswith(name)
        assert row["train error"] == f"{100 - 100 * summary['train_accuracy']:.2f} %"
        assert row["test error"] == f"{100 - 100 * summary['test_accuracy']:.2f} %"
        assert row["best validation error (epoch)"] == f"{100 - 100 * best['val_accuracy']:.2f} % ({best['epoch']})"
        assert row["s, epoch 1"] == f"{epochs[0]['seconds']:.2f}"
        assert row["s / epoch from epoch 2 (median)"] == f"{statistics.median(r['seconds'] for r in epochs[1:]):.2f}"
    # the DTP run logged diagnostics: each layer's angle at the last record; the backprop run logged none
    _, records = read(runs["dtp"])
    last = [r for r in records if r.get("kind") == "diagnostics"][-1]
    angles = rows[runs["dtp"].name]["angle with backprop at the end"]
    for layer in ("h1", "h2", "out"):
        assert f"{layer} {last['layers'][layer]['angle_bp']:.1f}°" in angles
    assert rows[runs["bp"].name]["angle with backprop at the end"] == "–"


def test_the_first_epoch_with_its_compile_time_is_kept_apart_from_the_median(runs, tmp_path):
    copy = shutil.copytree(runs["bp"], tmp_path / runs["bp"].name)
    _, records = read(copy)
    records[0]["seconds"], records[1]["seconds"], records[2]["seconds"] = 100.0, 2.0, 4.0
    (copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    row = table_rows(CliRunner().invoke(main, ["report", "--table", str(copy)]).output)[copy.name]
    assert (row["s, epoch 1"], row["s / epoch from epoch 2 (median)"]) == ("100.00", "3.00")


def test_the_columns_group_the_errors_with_no_accuracy_among_them():
    from localnet.report import COLUMNS
    errors = [i for i, c in enumerate(COLUMNS) if "error" in c]
    assert errors == list(range(errors[0], errors[0] + 4)) and not any("accuracy" in c for c in COLUMNS)
    assert COLUMNS.index("s, epoch 1") + 1 == COLUMNS.index("s / epoch from epoch 2 (median)")


@pytest.mark.parametrize("spec, rule", [
    ("fashion-mnist-fwdtp", "dtp, first target on h_L, fixed feedback on h2, h3, h4, h5, out"),
    ("fashion-mnist-7x240-dtp", "dtp, first target on h_{L-1}"),
    ("fashion-mnist-ddtp-linear", "ddtp_linear"),
])
def test_the_rule_cell_tells_variants_of_a_rule_apart(spec, rule):
    assert rule_cell(localnet.load_spec(ROOT / "specs" / f"{spec}.yaml")) == rule


def test_plot_legends_name_runs_as_the_table_does(runs):
    from localnet.plot import RunCurves
    rows = table_rows(CliRunner().invoke(main, ["report", str(runs["dtp"]), str(runs["bp"])]).output)
    for name in ("dtp", "bp"):
        assert RunCurves(runs[name]).name == rows[runs[name].name]["spec"]


def test_an_auto_encoder_reports_its_loss_not_an_error_rate(runs):
    result = CliRunner().invoke(main, ["report", "--table", str(runs["ae"])])
    assert result.exit_code == 0, result.output
    row = table_rows(result.output)[runs["ae"].name]
    summary, records = read(runs["ae"])
    assert row["test error"] == f"loss {summary['test_loss']:.4g}"
    best = min(records, key=lambda r: (r["val_loss"], r["epoch"]))
    assert row["best validation error (epoch)"] == f"loss {best['val_loss']:.4g} ({best['epoch']})"


def test_html_and_plot(runs, tmp_path):
    pytest.importorskip("matplotlib")
    page, png = tmp_path / "new" / "runs.html", tmp_path / "curves.png"  # a missing folder is made
    result = CliRunner().invoke(main, ["report", str(runs["dtp"]), str(runs["bp"]), "--html", str(page),
                                       "--plot", str(png)])
    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)
    cells = re.findall(r"<td>(.*?)</td>", page.read_text())
    for row in rows.values():
        for value in row.values():
            assert html.escape(value) in cells
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_one_run_keeps_the_per_run_report(runs):
    result = CliRunner().invoke(main, ["report", str(runs["bp"])])
    assert result.exit_code == 0, result.output
    assert "status: completed" in result.output and "| run |" not in result.output
    # what it was made from, as `localnet run` arguments that make it again
    made_from = next(line for line in result.output.splitlines() if "made from:" in line).split("made from: ")[1]
    args = shlex.split(made_from)
    assert args[0] == str(QUICKSTART) and args[1::2] == ["--set"] * 6
    assert localnet.load_spec(args[0], args[2::2]) == localnet.load_spec(runs["bp"] / "spec.yaml")


def test_a_directory_that_is_not_a_run_is_one_error_line(runs, tmp_path):
    result = CliRunner().invoke(main, ["report", str(runs["bp"]), str(tmp_path)])
    assert result.exit_code == 1
    assert str(tmp_path) in result.output and "Traceback" not in result.output


def test_plot_panels_with_nothing_to_draw_say_na(runs):
    pytest.importorskip("matplotlib")
    from localnet.plot import RunCurves, figure

    def said(ax):
        return [t.get_text() for t in ax.texts if t.get_text().startswith("n/a")]

    loss, accuracy = figure([RunCurves(runs["ae"])]).axes[:2]
    assert said(accuracy) == ["n/a\nan auto-encoder has no accuracy"] and not any(line.get_xdata().size
                                                                                 for line in accuracy.lines)
    assert loss.lines and not said(loss)
    panels = {ax.get_title().split(":")[0]: ax for ax in figure([RunCurves(runs["dtp"])], "reconstruction_error").axes}
    assert said(panels["layer h1"]) == ["n/a\nlayer h1 logged no reconstruction_error"]  # h1 has no feedback map
    assert panels["layer h2"].lines and not said(panels["layer h2"])


def test_plot_titles_and_legend_fit(runs):
    pytest.importorskip("matplotlib")
    from localnet.plot import RunCurves, figure
    fig = figure([RunCurves(runs[name]) for name in ("dtp", "bp", "ae")], "jfjg_positive")  # the longest title
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        box = ax.get_window_extent(renderer)
        assert ax.title.get_window_extent(renderer).width <= box.width, ax.get_title()
    width = fig.bbox.width
    for text in fig.legends[0].get_texts():
        extent = text.get_window_extent(renderer)
        assert 0 <= extent.x0 and extent.x1 <= width, text.get_text()
