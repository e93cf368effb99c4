"""Fills a section of the results page (docs/results.md) with a comparison table, its command, date and machine.

A section is the text between two markers, which stay in place, so a result is regenerated,
never edited by hand:

    <!-- results:shapes -->
    (run `make compare RESULTS=shapes` to fill this in)
    <!-- /results -->

    fill_results_section(Path("docs/results.md"), "shapes",
                         results_text(Path("runs/compare/compare.md").read_text(), "make compare RESULTS=shapes"))
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import time
from pathlib import Path

from captioning.files import atomic_path, write_text

END_MARKER = "<!-- /results -->"
START_PATTERN = re.compile(r"<!-- results:(\S+) -->")


class ResultsPageError(ValueError):
    """The results page is missing, or has no (or more than one) section of the requested name."""


def start_marker(name: str) -> str:
    return f"<!-- results:{name} -->"


def fill_results_section(page: Path, name: str, text: str) -> None:
    """Replaces what stands between ``<!-- results:name -->`` and the next ``<!-- /results -->`` in ``page``."""
    page = Path(page)
    if not page.is_file():
        raise ResultsPageError(f"{page}: no such file to write the results into")
    content = page.read_text()
    marker = start_marker(name)
    count = content.count(marker)
    if count != 1:
        found = ", ".join(START_PATTERN.findall(content)) or "none"
        problem = "has no" if count == 0 else f"has {count} of the"
        raise ResultsPageError(f"{page} {problem} section marker '{marker}'; results sections found: {found}")
    start = content.index(marker) + len(marker)
    end = content.find(END_MARKER, start)
    if end < 0:
        raise ResultsPageError(f"{page}: '{marker}' has no '{END_MARKER}' after it")
    write_text(page, content[:start] + "\n" + text.strip("\n") + "\n" + content[end:])


def results_text(table_markdown: str, command: str, date: str | None = None, machine: str | None = None,
                 plot: str | None = None) -> str:
    """The section's text: which command made the table, when and on what machine, the table,
    then the picture at ``plot`` (a link relative to the page) when one is given."""
    date = date or time.strftime("%Y-%m-%d")
    machine = machine or machine_description()
    picture = f"\n![the table's scores, one bar per row and metric]({plot})\n" if plot else ""
    return f"Made by `{command}` on {date}, on {machine}.\n\n{table_markdown.strip()}\n{picture}"


def copy_plot(plot: Path, page: Path, name: str) -> str:
    """Copies ``plot`` (compare_metrics.png) to ``images/results_NAME.png`` beside ``page``,
    atomically; returns the link to it relative to the page."""
    relative = Path("images") / f"results_{name}{Path(plot).suffix}"
    destination = Path(page).parent / relative
    destination.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(destination) as temporary:
        shutil.copyfile(plot, temporary)
    return relative.as_posix()


def machine_description() -> str:
    """``"2 CPU cores (Intel Xeon ...), no GPU, TensorFlow 2.21.0"``: what the times in the table depend on."""
    import tensorflow as tf

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")]
    return (f"{cores} CPU cores ({cpu_model()}), " + (", ".join(gpus) if gpus else "no GPU")
            + f", TensorFlow {tf.__version__}")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"
