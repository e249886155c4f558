"""The OHIF Viewer 3.13 (its production build, in Chromium) lists, filters and displays pacsbridge studies.

OHIF is served from another origin than pacsbridge and runs cross-origin isolated, so every QIDO-RS and
WADO-RS answer must also pass CORS and CORP. See: docs/ohif.md
"""

from __future__ import annotations

import re
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from ..support.ohif import Session, Stack

pytestmark = pytest.mark.browser

FRAMES_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
# Reads the viewport canvas (cornerstone draws its WebGL output into this 2D canvas) and summarises its
# luminance: a blank viewport is all one value.
CANVAS_STATS = """canvas => {
  const ctx = canvas.getContext('2d');
  if (!ctx || !canvas.width || !canvas.height) return null;
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0, lit = 0, sum = 0, sum2 = 0;
  for (let i = 0; i < data.length; i += 16) {
    const y = (data[i] + data[i + 1] + data[i + 2]) / 3;
    n++; sum += y; sum2 += y * y; if (y > 8) lit++;
  }
  const mean = sum / n;
  return {width: canvas.width, height: canvas.height, lit: lit / n, mean, std: Math.sqrt(sum2 / n - mean * mean)};
}"""


def rows(page: Any) -> Any:
    return page.locator("tbody tr:not([data-filter-row])")


def filter_box(page: Any, column: str) -> Any:
    """The study list's filter input under the column headed ``column`` (narrow windows hide some)."""
    headers = [text.strip() for text in page.locator("thead th").all_inner_texts()]
    index = next(i for i, text in enumerate(headers, 1) if text.startswith(column))
    return page.locator(f"tr[data-filter-row] > td:nth-child({index}) input").first


def search(page: Any, box: Any, text: str, query: str) -> list[dict[str, Any]]:
    """Types ``text`` into a study list filter and returns the QIDO answer whose URL contains ``query``."""
    with page.expect_response(lambda r: query in unquote(r.url), timeout=20_000) as answer:
        box.fill(text)
    response = answer.value
    assert response.status in (200, 204), f"{response.status} for {response.url}"
    return response.json() if response.status == 200 else []


def patient_name(study: dict[str, Any]) -> str:
    return str(study["00100010"]["Value"][0]["Alphabetic"])


def screenshot_stats(png: bytes) -> dict[str, float]:
    pixels = np.asarray(Image.open(BytesIO(png)).convert("L"), dtype=float)
    height, width = pixels.shape
    return {"width": width, "height": height, "lit": float((pixels > 8).mean()), "mean": float(pixels.mean()),
            "std": float(pixels.std())}


def wait_for_image(page: Any, timeout_s: float = 45) -> dict[str, float]:
    """Polls the viewport until it shows an image (not one flat colour); returns its luminance stats."""
    pane = page.locator('[data-cy="viewport-pane"]').first
    canvas = pane.locator("canvas.cornerstone-canvas").first
    canvas.wait_for(state="visible")
    stats = None
    for _ in range(int(timeout_s * 2)):
        # A canvas that cannot be read back (WebGL without preserveDrawingBuffer): use a screenshot.
        stats = canvas.evaluate(CANVAS_STATS) or screenshot_stats(pane.screenshot())
        if stats["std"] > 10 and stats["lit"] > 0.05:
            return stats
        page.wait_for_timeout(500)
    pytest.fail(f"the viewport stayed blank: {stats}")


def assert_clean(session: Session, stack: Stack) -> None:
    assert not stack.ohif.not_found, f"OHIF asked for missing files: {stack.ohif.not_found}"
    problems = session.traffic.problems()
    assert not problems, "failed DICOMweb requests:\n" + "\n".join(map(str, problems))
    assert not session.errors, f"uncaught script errors: {session.errors}"


def assert_viewer_shows(session: Session, stack: Stack, study_uid: str, shot: Path) -> None:
    page = session.page
    stats = wait_for_image(page)
    assert stats["width"] > 200 and stats["height"] > 200, stats
    # 10 slices in the stack, and the window from the instances' WindowCenter/WindowWidth (DS values
    # that went through DICOM JSON).
    expect(page.locator('[data-cy="viewport-overlay-bottom-right"]').first).to_contain_text("/10)")
    expect(page.locator('[data-cy="viewport-overlay-bottom-left"]').first).to_contain_text(
        re.compile(r"W:\s*400\s*L:\s*40\b"))
    assert page.evaluate("window.crossOriginIsolated") is True

    page.screenshot(path=str(shot))
    seen = screenshot_stats(page.locator('[data-cy="viewport-pane"]').first.screenshot())
    assert seen["std"] > 10 and seen["lit"] > 0.05, f"the viewport looks blank on screen: {seen}"

    frames = session.traffic.matching("/frames/")
    assert frames, "OHIF fetched no frames:\n" + session.traffic.report()
    for exchange in frames:
        assert f"/studies/{study_uid}/" in exchange.url, exchange
        assert exchange.accept.replace('"', "") == FRAMES_ACCEPT, exchange
        assert exchange.status is None or exchange.content_type.startswith("multipart/related"), exchange
    assert session.traffic.matching(f"/studies/{study_uid}/series/"), session.traffic.report()
    assert_clean(session, stack)


def test_study_list_shows_and_filters_studies(session: Session, stack: Stack, tmp_path: Path) -> None:
    page = session.page
    page.goto(stack.ohif.url + "/")
    expect(rows(page)).to_have_count(2, timeout=45_000)
    expect(page.get_by_text("Müller, Jürgen")).to_be_visible()
    expect(page.get_by_text("Doe, Jane")).to_be_visible()

    # OHIF narrows the table at once, then asks the server (PatientName=*müll*&fuzzymatching=true, from
    # supportsWildcard and supportsFuzzyMatching) and shows its answer: check both.
    found = search(page, filter_box(page, "Patient"), "müll", "PatientName=*müll*")
    assert [patient_name(study) for study in found] == ["Müller^Jürgen"]
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("Müller, Jürgen")
    page.screenshot(path=str(tmp_path / "study-list-filtered.png"))

    # No match: pacsbridge answers 204 No Content (PS3.18 §8.3.4.4.1); OHIF shows an empty list.
    assert search(page, filter_box(page, "Patient"), "zzz", "PatientName=*zzz*") == []
    expect(page.get_by_text("No studies available")).to_be_visible()

    search(page, filter_box(page, "Patient"), "", "/studies?limit=")
    expect(rows(page)).to_have_count(2)
    fragment = stack.studies[1].accession[-6:]
    found = search(page, filter_box(page, "Accession"), fragment, f"AccessionNumber=*{fragment}*")
    assert [patient_name(study) for study in found] == ["Doe^Jane"]
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("Doe, Jane")
    assert all("fuzzymatching=true" in e.url for e in session.traffic.matching("/studies?"))
    assert_clean(session, stack)


def test_opening_a_study_from_the_list_renders_it(session: Session, stack: Stack, tmp_path: Path) -> None:
    page = session.page
    study = stack.studies[0]
    page.goto(stack.ohif.url + "/")
    page.get_by_text("Müller, Jürgen").click()
    expect(page.get_by_text(study.patient_id)).to_be_visible()  # the preview panel, from QIDO
    page.get_by_role("button", name="Basic Viewer").click()
    page.wait_for_url(f"**/viewer?*StudyInstanceUIDs={study.study_uid}*")
    assert_viewer_shows(session, stack, study.study_uid, tmp_path / "ohif-viewer-from-list.png")


def test_viewer_url_renders_the_study(session: Session, stack: Stack, tmp_path: Path) -> None:
    study = stack.studies[1]
    session.page.goto(f"{stack.ohif.url}/viewer?StudyInstanceUIDs={study.study_uid}")
    assert_viewer_shows(session, stack, study.study_uid, tmp_path / "ohif-viewer.png")
