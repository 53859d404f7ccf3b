from pathlib import Path

from streamlit.testing.v1 import AppTest

from busi import synth

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_overview_uses_demo_data_when_nothing_is_configured(monkeypatch):
    monkeypatch.delenv("BUSI_DATA", raising=False)
    app = AppTest.from_file(APP, default_timeout=60).run()
    assert not app.exception
    assert "synthetic demo data" in app.markdown[0].value
    assert [m.value for m in app.metric] == [str(3 * synth.DEMO_PER_CLASS)] + [str(synth.DEMO_PER_CLASS)] * 3
    assert "not a medical device" in app.warning[0].value


def test_overview_reports_a_wrong_folder_and_keeps_running(monkeypatch, tmp_path):
    monkeypatch.setenv("BUSI_DATA", str(tmp_path))
    app = AppTest.from_file(APP, default_timeout=60).run()
    assert not app.exception
    assert "not a BUSI dataset" in app.error[0].value


def test_overview_of_a_configured_folder_cites_the_dataset(monkeypatch, synthetic_dataset):
    monkeypatch.setenv("BUSI_DATA", str(synthetic_dataset))
    app = AppTest.from_file(APP, default_timeout=60).run()
    assert not app.exception
    assert [m.value for m in app.metric] == ["18", "6", "6", "6"]
    assert "Data in Brief" in app.caption[0].value
