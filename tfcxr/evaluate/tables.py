"""Table 1 of the paper, in Markdown, with our columns beside the paper's."""

import math

from tfcxr.constants import LABELS, TABLE1, TABLE1_COLUMNS
from tfcxr.evaluate.metrics import MEAN


def _missing(value):
    return value is None or math.isnan(value)


def _cell(entry):
    """{"auc", "ci_low", "ci_high"} (any may be None/NaN, or no entry) -> "0.8123 [0.801, 0.824]"."""
    entry = entry or {}
    auc, low, high = entry.get("auc"), entry.get("ci_low"), entry.get("ci_high")
    if _missing(auc):
        return "n/a"
    if _missing(low) or _missing(high):
        return f"{auc:.4f}"
    return f"{auc:.4f} [{low:.3f}, {high:.3f}]"


def table1(columns, label_names=LABELS):
    """Markdown: the paper's five Table 1 columns, then one column per entry of `columns`.

    columns: {name: {label or "Mean": {"auc", "ci_low", "ci_high"}}}; label_names: the rows (the
    records' labels). The paper's columns print "n/a" for a label it did not have. The Mean row is
    bold as in the paper; an undefined AUC prints "n/a".
    """
    header = ["Labels", *TABLE1_COLUMNS, *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    paper_mean = tuple(label_names) == LABELS  # the paper's mean is over its 14 labels only
    for label in (*label_names, MEAN):
        paper = TABLE1.get(label) if label != MEAN or paper_mean else None
        cells = [label, *(f"{v:.4f}" for v in paper or ()), *(["n/a"] * len(TABLE1_COLUMNS) if paper is None else []),
                 *(_cell(run.get(label)) for run in columns.values())]
        if label == MEAN:
            cells = [f"**{cell}**" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare(summaries):
    """Markdown comparing runs: {name: auc.json dict} -> Table 1 with one column per run.

    Under the table, each run's split, images, label file and protocol; a warning when the
    runs were not evaluated alike: another split, label version, or test-time augmentation
    (resize vs ten crops). Sizes differ by design (D121 256, AECNN 896) and do not warn.
    """
    lines = [table1({name: summary["auc"] for name, summary in summaries.items()})]
    for name, summary in summaries.items():
        lines.append(f"- {name}: `{summary['split']}` split, {summary['images']} images, labels "
                     f"`{summary['label_file']}` ({summary['label_version']}), protocol: {summary['protocol']}")
    for key, what in (("split", "split"), ("label_version", "label version"), ("tta", "test-time protocol")):
        if len({summary.get(key) for summary in summaries.values()}) > 1:
            lines.append(f"\n**Warning:** the runs differ in {what}; their AUCs are not directly comparable.")
    return "\n".join(lines) + "\n"
