"""The app's Streamlit settings that safety depends on."""

import tomllib
from pathlib import Path

SETTINGS = tomllib.loads((Path(__file__).resolve().parents[1] / ".streamlit" / "config.toml").read_text())


def test_uploads_are_limited_and_forms_protected():
    assert SETTINGS["server"]["enableXsrfProtection"] is True
    assert 1 <= SETTINGS["server"]["maxUploadSize"] <= 50  # MB: scans are well under this


def test_no_usage_statistics_no_prompt_and_no_developer_menu():
    assert SETTINGS["browser"]["gatherUsageStats"] is False
    assert SETTINGS["server"]["headless"] is True  # also skips the first-run e-mail prompt
    assert SETTINGS["client"]["toolbarMode"] == "viewer"
    assert SETTINGS["client"]["showSidebarNavigation"] is False


def test_the_app_listens_on_this_machine_only_and_checks_the_host_it_is_called_by():
    assert SETTINGS["server"]["address"] == "localhost"
    assert set(SETTINGS["server"]["allowedHosts"]) == {"localhost", "127.0.0.1"}
