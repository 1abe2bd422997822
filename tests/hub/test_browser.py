"""Chromium (Debian's, driven by playwright): log in, fill the form, land in JupyterLab."""

from __future__ import annotations

import pytest

from harness.hub import Hub, browser_login, chromium

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def demo_hub(tmp_path_factory):
    hub = Hub(tmp_path_factory.mktemp("demo-hub")).start()  # the built-in default catalog
    yield hub
    hub.request("DELETE", "/hub/api/users/nora/server")
    hub.stop()


def test_login_fill_form_and_land_in_jupyterlab(browser, demo_hub, artifacts_dir):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    browser_login(page, demo_hub, "nora")
    page.wait_for_selector("#hpcgate-sessions")  # the home page of session cards
    page.goto(demo_hub.url + "/hub/spawn")
    page.wait_for_selector("#hpcgate-form")
    # the dependent fields follow the partition without a page reload
    assert page.input_value("select[name=system]") == "local"
    assert page.get_attribute("input[name=memory]", "max") == "4"
    page.select_option("select[name=partition]", "long")
    assert page.get_attribute("input[name=memory]", "max") == "8"
    assert "from 1 to 8 GiB" in page.text_content(".hpcgate-limit-memory")
    page.fill("input[name=memory]", "3")
    page.screenshot(path=str(artifacts_dir / "browser-spawn-form.png"), full_page=True)
    page.click("#spawn_form input[type=submit], #spawn_form button[type=submit]")
    page.wait_for_url("**/user/nora/lab**", timeout=120_000)
    page.wait_for_selector(".jp-LauncherCard", timeout=120_000)
    page.screenshot(path=str(artifacts_dir / "browser-jupyterlab.png"))
    options = demo_hub.user_model("nora")["servers"][""]["user_options"]
    assert options["partition"] == "long" and options["memory"] == 3
    page.close()
