"""The link review pages in headless Debian Chromium, used with the keyboard alone: a built-in user
holding ``links.review`` signs in, tabs to a doubtful study, sees the differences marked in words (not
colour only), confirms the request (the order completes), then unlinks it with a reason (active again).

See: docs/matching.md "Reviewing links".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import anyio
import httpx
import pytest
from playwright.sync_api import expect

from pacsbridge.settings import Settings

from ..integration.test_fhir_door import PID_SYSTEM, unique
from ..integration.test_scored_matching import links_of, order_for, stow_study
from ..support.servers import RunningServer, serve

pytestmark = pytest.mark.browser

USER, PASSWORD = "rhea", "a long enough test password"
T = TypeVar("T")


def aside(work: Callable[[], T]) -> T:
    """Run ``work`` in another thread: Playwright's sync API keeps an event loop running in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("link-review") / "data", storage={"fsync": False},
                        dimse={"enabled": False}, auth={"open_routes": ["/fhir", "/dicomweb"]},
                        fhir={"patient_identifier_system": PID_SYSTEM}, orders={"stable_seconds": 0.5})
    with serve(settings) as running:
        passwords = running.app.state.services.passwords
        aside(lambda: anyio.run(lambda: passwords.add(USER, PASSWORD, ["links.review"], display_name="Rhea Reviewer")))
        yield running


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    context.set_default_timeout(30_000)
    tab = context.new_page()
    yield tab
    context.close()


def tab_to(page: Any, test: str, limit: int = 40) -> None:
    """Press Tab until ``test`` (a JS expression on ``el``, the focused element) holds."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(f"(() => {{ const el = document.activeElement; return !!({test}); }})()"):
            return
    raise AssertionError(f"Tab never reached an element where {test}")


def focus_is_visible(page: Any) -> bool:
    return bool(page.evaluate("getComputedStyle(document.activeElement).outlineStyle !== 'none'"))


def order_status(server: RunningServer, order: str) -> str:
    return str(httpx.get(f"{server.url}/fhir/ServiceRequest/{order}").json()["status"])


def test_a_reviewer_confirms_and_then_unlinks_an_unsure_study_with_the_keyboard(page: Any,
                                                                               server: RunningServer) -> None:
    pid = unique("PID-")
    order = order_for(server, pid, "Brandt", "1961-04-22")
    typed = "TYPO" + pid[-6:]
    study = stow_study(server, PatientID=pid, PatientName="Brandt^Jane", PatientBirthDate="19610422",
                       AccessionNumber=typed)
    assert [link.status for link in aside(lambda: links_of(server, study))] == ["auto-unsure"]

    page.goto(server.url + "/ui/links")
    page.wait_for_url("**/login?next=*")
    # autofocus lands at the browser's next rendering step, which may come after "load": wait for it, or the
    # first keystrokes go to the body and the form is sent with the password in the user name field
    expect(page.locator("input[name=username]")).to_be_focused()
    page.keyboard.type(USER)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(server.url + "/ui/links")
    expect(page.get_by_role("heading", name="Study links")).to_be_visible()
    expect(page.locator("select[name=status]")).to_have_value("auto-unsure")

    tab_to(page, f"el.tagName === 'A' && el.textContent.trim() === '{study}'")
    assert focus_is_visible(page)
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/ui/links/{study}?request={order}")

    accession = page.locator("table.compare tr[data-field=accession]")
    expect(accession).to_have_class("differs")
    expect(accession.get_by_text("differs")).to_be_visible()  # in words, not colour only
    expect(accession).to_contain_text(typed)
    expect(page.locator("table.compare tr[data-field=patient_id]")).to_have_class("same")
    expect(page.get_by_test_id("confidence")).to_have_text(re.compile(r"0\.\d\d"))

    tab_to(page, "el.labels && el.labels[0] && el.labels[0].textContent.includes('Reason (optional)')")
    page.keyboard.type("accession typed wrong at the CT")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Confirm this request"
    assert focus_is_visible(page)
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("now linked")
    assert order_status(server, order) == "completed"

    tab_to(page, "el.labels && el.labels[0] && el.labels[0].textContent.includes('Reason for unlinking')")
    page.keyboard.type("another patient's images")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Unlink"
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("undone")
    assert order_status(server, order) == "active"

    records = server.app.state.services.orders.records
    history = aside(lambda: anyio.run(lambda: records.link_history(study)))
    assert [(e.status, e.reason) for e in history][1:] == [
        ("manual", "accession typed wrong at the CT"), ("unlinked", "another patient's images")]
    assert {e.actor for e in history[1:]} == {history[1].actor} and USER in history[1].actor
    expect(page.locator("table.events").last).to_contain_text("another patient's images")
