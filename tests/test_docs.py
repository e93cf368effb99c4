"""The documentation: the README stays a short guide, and every relative link (file and #anchor) resolves."""

from __future__ import annotations

import re
from pathlib import Path

from captioning.reports.results_page import END_MARKER, start_marker

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
README = REPOSITORY_ROOT / "README.md"
RESULTS_PAGE = REPOSITORY_ROOT / "docs" / "results.md"
MAX_README_LINES = 260
FIRST_SCREEN_LINES = 40

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def documentation_files() -> list[Path]:
    """README.md, models/README.md and every Markdown file under docs/."""
    return [README, REPOSITORY_ROOT / "models" / "README.md", *sorted((REPOSITORY_ROOT / "docs").rglob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (links and headings in code are not links or headings)."""
    lines, in_code = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        if not in_code:
            lines.append(line)
    return lines


def heading_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    text = text.lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 ... for repeated headings."""
    found, seen = set(), {}
    for line in prose_lines(path.read_text()):
        match = HEADING.match(line)
        if match:
            anchor = heading_anchor(match.group(2))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def broken_links(path: Path) -> list[str]:
    """``"file: target (why)"`` for each relative link of ``path`` whose file or #anchor does not exist."""
    problems = []
    for line in prose_lines(path.read_text()):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                problems.append(f"{path.relative_to(REPOSITORY_ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                problems.append(f"{path.relative_to(REPOSITORY_ROOT)}: {target} (no heading with that anchor)")
    return problems


def test_the_readme_is_a_short_guide():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/guide/"


def test_caption_your_photo_is_on_the_first_screen_with_a_real_output_line():
    first_screen = "\n".join(README.read_text().splitlines()[:FIRST_SCREEN_LINES])
    assert "make train" in first_screen and "make test" in first_screen
    assert "make caption IMG=photo.jpg" in first_screen and "models/flickr8k.keras" in first_screen
    # the output line printed under the command: one of the shipped model's captions in models/README.md
    captions = re.findall(r"^\| `\S+\.jpg` \| (.+?) \|$", (REPOSITORY_ROOT / "models" / "README.md").read_text(), re.M)
    assert captions and any(f"\n{caption}\n" in first_screen for caption in captions)


def test_every_relative_link_in_the_documentation_resolves():
    assert len(documentation_files()) > 10  # the README, the model card, the guides, notes and results
    problems = [problem for path in documentation_files() for problem in broken_links(path)]
    assert problems == []


def test_a_broken_link_or_anchor_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.REPOSITORY_ROOT", tmp_path)
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading: yes\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[fine](other.md#a-code-heading-yes) [self](#page) [web](https://example.com)\n"
                    "[gone](missing.md) [bad anchor](other.md#nothing)\n```\n[in code](ignored.md)\n```\n")
    assert broken_links(page) == ["page.md: missing.md (no such file)",
                                  "page.md: other.md#nothing (no heading with that anchor)"]


def test_the_results_page_has_the_sections_make_compare_writes():
    from captioning.cli import RESULTS_PAGE as cli_results_page

    assert cli_results_page == RESULTS_PAGE
    text = RESULTS_PAGE.read_text()
    names = re.findall(r"<!-- results:(\S+) -->", text)
    assert "shapes" in names and len(names) == len(set(names))
    assert text.count("<!-- /results -->") == len(names)


def test_experiment_files_and_config_comments_point_at_the_results_page_not_the_readme():
    """Measured numbers live in docs/results.md; no comment sends the reader to "the README" for them."""
    files = [REPOSITORY_ROOT / "captioning" / "config.py", *sorted((REPOSITORY_ROOT / "experiments").rglob("*.toml"))]
    assert len(files) > 20
    pointing_at_readme = [str(path.relative_to(REPOSITORY_ROOT)) for path in files
                          if re.search(r"\(README\b|README's|\bthe README\b", path.read_text())]
    assert pointing_at_readme == []


def results_rows(name: str) -> list[dict[str, str]]:
    """The rows of the table in the results page's section NAME, as {column: cell}."""
    text = RESULTS_PAGE.read_text()
    section = text.split(start_marker(name), 1)[1].split(END_MARKER, 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def mean(cell: str) -> float:
    """0.535 from "0.535 ± 0.008"."""
    return float(cell.split("±")[0])


def spread(cell: str) -> float:
    """0.008 from "0.535 ± 0.008"."""
    return float(cell.split("±")[1])


def interval(cell: str) -> tuple[float, float]:
    """(-0.031, 0.004) from "-0.013 [-0.031, +0.004]"."""
    low, high = cell.split("[", 1)[1].rstrip("]").split(",")
    return float(low), float(high)


def test_interval_reads_a_paired_cell():
    assert interval("-0.013 [-0.031, +0.004]") == (-0.031, 0.004)


def paired_interval(rows: dict[str, dict[str, str]], experiment: str, kept: str) -> tuple[float, float] | None:
    """The interval of ``experiment``'s train_tail CIDEr-D minus ``kept``'s, from the table's
    ``selection_cider_vs_chosen`` column (each row minus the chosen row); None when the table
    has no such column or neither of the two rows is the chosen one."""
    cells = {name: row.get("selection_cider_vs_chosen", "") for name, row in rows.items()}
    if rows[kept]["chosen"] == "yes" and cells[experiment]:
        return interval(cells[experiment])
    if rows[experiment]["chosen"] == "yes" and cells[kept]:
        low, high = interval(cells[kept])
        return -high, -low
    return None


def test_paired_interval_is_the_row_minus_the_kept_config_whichever_is_chosen():
    rows = {"kept": {"chosen": "yes", "selection_cider_vs_chosen": ""},
            "other": {"chosen": "", "selection_cider_vs_chosen": "-0.013 [-0.031, +0.004]"}}
    assert paired_interval(rows, "other", "kept") == (-0.031, 0.004)
    rows = {"kept": {"chosen": "", "selection_cider_vs_chosen": "-0.013 [-0.031, +0.004]"},
            "other": {"chosen": "yes", "selection_cider_vs_chosen": ""}}
    assert paired_interval(rows, "other", "kept") == (-0.004, 0.031)
    assert paired_interval({"kept": {"chosen": "yes"}, "other": {"chosen": ""}}, "other", "kept") is None


# The comparisons after the decoder table that could move flickr8k_best, in the order they
# were made, three seeds each against the config kept so far: lambda 0.01; mirrored images;
# mirrored images again, on a fresh machine, with make compare's paired intervals.
LATER_COMPARISONS = ["flickr8k_lambda_scst3", "flickr8k_mirror", "flickr8k_mirror_paired"]


def test_flickr8k_best_is_the_config_train_tail_chose():
    """experiments/flickr8k_best.toml trains the row the decoder table chose by its selection
    (train_tail) CIDEr-D (a row that beats every cross-entropy-only row on the same score),
    unless a later comparison resolved a lead over it. A lead moves the choice only when it is
    larger than the seed spread, since a smaller one is not a finding, and the table's paired
    interval over the images lies wholly above 0; a table without the paired column may hold
    no lead beyond the spread at all."""
    from captioning.config import load_config, to_dict

    with_self_critical = results_rows("flickr8k_decoders_scst3")
    cross_entropy_only = results_rows("flickr8k_decoders_ce")
    assert len(with_self_critical) == len(cross_entropy_only) == 3
    chosen = [row for row in with_self_critical if row["chosen"] == "yes"]
    assert len(chosen) == 1
    assert mean(chosen[0]["selection_cider"]) == max(mean(row["selection_cider"]) for row in with_self_critical)
    assert mean(chosen[0]["selection_cider"]) > max(mean(row["selection_cider"]) for row in cross_entropy_only)
    kept_experiment = chosen[0]["experiment"]
    for name in LATER_COMPARISONS:
        rows = {row["experiment"]: row for row in results_rows(name)}
        kept = rows[kept_experiment]["selection_cider"]
        resolved_leads = []
        for experiment, row in rows.items():
            lead = mean(row["selection_cider"]) - mean(kept)
            if lead > max(spread(row["selection_cider"]), spread(kept)):  # beyond the seed spread
                paired = paired_interval(rows, experiment, kept_experiment)
                assert paired is not None, (name, experiment, lead, "a lead beyond the spread needs the paired column")
                if paired[0] > 0:
                    resolved_leads.append(experiment)
        assert len(resolved_leads) <= 1, (name, resolved_leads)
        kept_experiment = resolved_leads[0] if resolved_leads else kept_experiment
    experiments = REPOSITORY_ROOT / "experiments"
    best = to_dict(load_config(experiments / "flickr8k_best.toml"))
    kept_config = to_dict(load_config(experiments / f"{kept_experiment}.toml"))
    assert {**best, "name": None} == {**kept_config, "name": None}, kept_experiment
