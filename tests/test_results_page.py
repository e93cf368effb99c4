"""A section of the results page: replaced between its markers, everything else kept, errors naming what is missing."""

from __future__ import annotations

import pytest

from captioning.reports.results_page import (ResultsPageError, copy_plot, fill_results_section, machine_description,
                                             results_text)

PAGE = """# results

<!-- results:shapes -->
(run `make compare` to fill this in)
<!-- /results -->

## Other

<!-- results:flickr -->
old flickr table
<!-- /results -->
"""


@pytest.fixture
def page(tmp_path):
    path = tmp_path / "results.md"
    path.write_text(PAGE)
    return path


def test_the_named_section_is_replaced_and_the_rest_kept(page):
    fill_results_section(page, "shapes", "| a |\n|---|\n| 1 |\n")
    assert page.read_text() == PAGE.replace("(run `make compare` to fill this in)", "| a |\n|---|\n| 1 |")


def test_filling_again_replaces_the_previous_results(page):
    fill_results_section(page, "flickr", "first\n\n")
    fill_results_section(page, "flickr", "second")
    text = page.read_text()
    assert "<!-- results:flickr -->\nsecond\n<!-- /results -->\n" in text and "first" not in text
    assert "(run `make compare` to fill this in)" in text and text.count("<!-- /results -->") == 2


def test_a_missing_section_is_an_error_listing_the_sections_found(page):
    with pytest.raises(ResultsPageError, match=r"has no section marker '<!-- results:coco -->'; results sections found: shapes, flickr"):
        fill_results_section(page, "coco", "table")
    assert page.read_text() == PAGE


def test_a_section_without_its_end_marker_or_named_twice_is_an_error(tmp_path):
    path = tmp_path / "results.md"
    path.write_text("<!-- results:shapes -->\nno end\n")
    with pytest.raises(ResultsPageError, match="has no '<!-- /results -->' after it"):
        fill_results_section(path, "shapes", "table")
    path.write_text("<!-- results:shapes -->\n<!-- /results -->\n<!-- results:shapes -->\n<!-- /results -->\n")
    with pytest.raises(ResultsPageError, match="has 2 of the section marker"):
        fill_results_section(path, "shapes", "table")


def test_a_missing_page_is_an_error(tmp_path):
    with pytest.raises(ResultsPageError, match="no such file"):
        fill_results_section(tmp_path / "results.md", "shapes", "table")


def test_results_text_says_command_date_and_machine_before_the_table():
    text = results_text("| a |\n|---|\n", "make compare RESULTS=shapes", date="2026-11-27", machine="2 CPU cores (X), no GPU")
    assert text == "Made by `make compare RESULTS=shapes` on 2026-11-27, on 2 CPU cores (X), no GPU.\n\n| a |\n|---|\n"


def test_the_plot_is_copied_beside_the_page_and_shown_after_the_table(tmp_path):
    plot = tmp_path / "out" / "compare_metrics.png"
    plot.parent.mkdir()
    plot.write_bytes(b"png bytes")
    link = copy_plot(plot, tmp_path / "docs" / "results.md", "flickr")
    assert link == "images/results_flickr.png"
    assert (tmp_path / "docs" / link).read_bytes() == b"png bytes"
    text = results_text("| a |\n|---|\n", "make compare", date="2026-12-02", machine="2 CPU cores (X), no GPU", plot=link)
    assert text.endswith("| a |\n|---|\n\n![the table's scores, one bar per row and metric](images/results_flickr.png)\n")


def test_machine_description_names_cores_gpu_and_tensorflow():
    import os

    import tensorflow as tf

    description = machine_description()
    assert description.startswith(f"{len(os.sched_getaffinity(0))} CPU cores (")
    assert description.endswith(f", TensorFlow {tf.__version__}")
    assert ("no GPU" in description) == (not tf.config.list_physical_devices("GPU"))
