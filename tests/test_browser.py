"""The web demo in a real browser: Debian's chromium (never a downloaded one), driven by
Playwright, uploads a photo and sees its caption and attention, then a text file and sees
the error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from demo_server import running, shapes_photos

from captioning.apps import serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")


def test_the_page_captions_a_photo_shows_its_attention_and_reports_a_text_file(
        trained_attention_run, tiny_data_root, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    photo = shapes_photos(tiny_data_root, 1)[0]
    notes = tmp_path / "notes.txt"
    notes.write_text("a text file, not a photo\n")
    app = serve.create_app(serve.load_captioner(trained_attention_run))
    app.state.service.warm_up()  # compile the model's functions before the browser waits
    expected_caption = app.state.service.describe(photo.read_bytes(), photo.name)["caption"] or "(empty caption)"

    with running(app) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.set_input_files("#image", str(photo))
            expect(page.locator("#caption")).to_have_text(expected_caption, timeout=20_000)
            expect(page.locator("#beams li")).to_have_count(3)
            first_overlay = page.locator("#attention img.attention").first
            expect(first_overlay).to_be_visible()
            assert page.evaluate("image => image.naturalWidth", first_overlay.element_handle()) == serve.OVERLAY_SIDE
            first_overlay.click()  # the word's overlay takes the photo's place
            assert page.get_attribute("#shown", "src").startswith("data:image/png;base64,")
            page.screenshot(path=str(tmp_path / "caption.png"), full_page=True)

            page.set_input_files("#image", str(notes))
            expect(page.locator("#error")).to_have_text(
                "cannot load image notes.txt: not an image (Pillow cannot identify the format)", timeout=20_000)
            expect(page.locator("#result")).to_be_hidden()
            page.screenshot(path=str(tmp_path / "error.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "caption.png").stat().st_size > 0 and (tmp_path / "error.png").stat().st_size > 0
