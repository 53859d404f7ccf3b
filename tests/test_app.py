"""Every page through Streamlit's AppTest on the demo or synthetic data."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from busi import synth
from busi.data import CLASSES
from busi.evaluate import REPORT_COLUMNS, evaluate_run, report_rows
from busi.figures import cell_from_selection, confusion_matrix
from busi.jobs import active_run
from busi.predict import load_classifier
from busi.recipes import RECIPES
from busi.runs import RunFolder
from tests.helpers import open_page, png_bytes, set_validation_predictions, shown, widget

# -- overview --------------------------------------------------------------------------------

def test_overview_uses_demo_data_when_nothing_is_configured(monkeypatch, runs):
    monkeypatch.delenv("BUSI_DATA", raising=False)
    app = open_page("overview")
    assert "Synthetic phantoms, not scans of patients." in app.markdown[1].value
    per_class = str(synth.DEMO_PER_CLASS)
    assert [m.value for m in app.metric][:4] == [str(3 * synth.DEMO_PER_CLASS), per_class, per_class, per_class]
    assert "not a medical device" in app.warning[0].value
    assert any("CPU" in m.value or "GPU" in m.value for m in app.markdown)


def test_overview_reports_a_wrong_folder_and_keeps_running(monkeypatch, tmp_path, runs):
    monkeypatch.setenv("BUSI_DATA", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    app = open_page("overview")
    assert "not a BUSI dataset" in shown(app.error[0].value) and "sidebar" in app.error[0].value


def test_overview_of_a_configured_folder_cites_the_dataset_and_lists_runs(monkeypatch, synthetic_dataset, runs_with_model,
                                                                          tmp_path):
    monkeypatch.setenv("BUSI_DATA", str(_real_scans(synthetic_dataset, tmp_path)))
    app = open_page("overview")
    assert [m.value for m in app.metric][:4] == ["18", "6", "6", "6"]
    assert "Real breast ultrasound scans." in [m.value for m in app.markdown] and "Data in Brief" in app.caption[0].value
    runs_table = app.dataframe[0].value
    assert runs_table["model"].tolist() == ["20260101-000000-resnet18"]
    assert runs_table["state"].tolist() == ["finished"] and runs_table["trained on"][0].startswith("18 synthetic phantoms (")
    assert not any(str(tmp_path) in m.value for m in app.markdown)  # no server paths on screen, only in the expander
    done = RunFolder(runs_with_model / "20260101-000000-resnet18").read_events()[-1]
    assert (runs_table["kept epoch"].tolist(), runs_table["its validation macro-F1"].tolist()) == \
        ([done.model_epoch], [done.model_val_macro_f1])


def test_a_folder_outside_the_allowed_roots_is_refused(monkeypatch, tmp_path, runs):
    monkeypatch.delenv("BUSI_DATA", raising=False)
    monkeypatch.delenv("BUSI_ROOTS", raising=False)
    app = open_page("overview")
    widget(app, "data_source").select("Another folder…").run()
    widget(app, "data_folder_text").input("/etc").run()
    assert not app.exception
    assert any("outside the folders this app may read" in e.value for e in app.sidebar.error)
    assert "Synthetic phantoms" in app.markdown[1].value  # still serving the demo data


def _on_screen(node) -> list[str]:
    """The text a visitor reads on a page, but for what expanders keep folded away for engineers."""
    from streamlit.testing.v1.element_tree import Block, Expander

    if isinstance(node, Expander):
        return []
    if isinstance(node, Block):
        return [text for child in node.children.values() for text in _on_screen(child)]
    texts = [getattr(node, attribute, None) for attribute in ("label", "value", "placeholder", "help")]
    texts += list(getattr(node, "captions", []) or []) + list(getattr(node, "options", []) or [])
    if node.type == "dataframe":
        texts.append(node.value.to_string())
    return [str(text) for text in texts if text is not None]


@pytest.mark.parametrize("page", ["overview", "dataset", "playground", "training", "evaluation", "compare", "prediction"])
def test_no_page_shows_a_server_path_or_a_setting_name(page, runs_with_model, synthetic_dataset, monkeypatch):
    shutil.copytree(runs_with_model / "20260101-000000-resnet18", runs_with_model / "20260102-000000-resnet18")
    monkeypatch.setenv("BUSI_DATA", str(synthetic_dataset))
    app = open_page(page)
    text = "\n".join(_on_screen(app.main) + _on_screen(app.sidebar))
    assert len(text) > 200  # the page said something
    for secret in (str(runs_with_model.parent), str(synthetic_dataset), str(Path.home()), "BUSI_"):
        assert secret not in text, (secret, [line for line in text.splitlines() if secret in line])


# -- dataset ---------------------------------------------------------------------------------

def test_dataset_filters_and_details(monkeypatch, synthetic_dataset, runs):
    monkeypatch.setenv("BUSI_DATA", str(synthetic_dataset))
    app = open_page("dataset")
    assert "18 of 18 scans match" in app.caption[0].value
    widget(app, "dataset_classes").set_value(["malignant"]).run()
    assert "6 of 18 scans match" in app.caption[0].value
    assert all(name.startswith("malignant/") for name in widget(app, "dataset_detail_scan").options)
    widget(app, "dataset_detail_scan").select("malignant/malignant (2).png").run()
    table = app.dataframe[0].value
    assert table["value"].tolist()[0] == "malignant"
    widget(app, "dataset_overlay_opacity").set_value(0.8).run()
    widget(app, "dataset_shared_only").set_value(True).run()  # phantoms are all distinct
    assert "0 of 18 scans match" in app.caption[0].value and "No scan matches" in app.info[-1].value
    assert not app.exception


def test_dataset_scans_come_in_counting_order_and_open_in_detail_with_the_models_view(monkeypatch, tmp_path, runs_with_model):
    data = synth.write_dataset(tmp_path / "eleven", per_class=11, seed=5, size=(96, 96))
    monkeypatch.setenv("BUSI_DATA", str(data))
    app = open_page("dataset")
    names = widget(app, "dataset_detail_scan").options
    assert names.index("benign/benign (2).png") < names.index("benign/benign (10).png") < names.index("malignant/malignant (1).png")
    grid = [shown(c).split(" · group ")[0] for image in app.image for c in image.captions if " · group " in c]
    assert grid[:3] == ["benign (1)", "benign (2)", "benign (3)"] and grid.index("benign (10)") == 9
    [b for b in app.button if b.key.startswith("dataset_open_")][3].click().run()  # under the fourth thumbnail
    assert widget(app, "dataset_detail_scan").value == "benign/benign (4).png"
    assert app.dataframe[0].value["value"].tolist()[:2] == ["benign", "96 × 96"]
    looked = next(c for image in app.image for c in image.captions if c.startswith("the model calls it "))
    assert "p(malignant) 0." in looked and "Grad-CAM" in looked
    assert any(c.value.startswith("Model: ") for c in app.caption)
    assert not app.exception


def test_dataset_report_names_files_inside_the_dataset_and_opens_the_scan_a_problem_is_about(monkeypatch, tmp_path, runs):
    data = synth.write_dataset(tmp_path / "flawed", per_class=4, seed=5, size=(96, 96))
    (data / "malignant" / "malignant (3)_mask.png").unlink()
    (data / "benign" / "benign (9)_mask.png").write_bytes((data / "benign" / "benign (1)_mask.png").read_bytes())
    monkeypatch.setenv("BUSI_DATA", str(data))
    app = open_page("dataset")
    report = app.dataframe[-1].value
    assert set(report["file"]) == {"malignant/malignant (3).png", "benign/benign (9)_mask.png"}
    assert not report["message"].str.contains(str(tmp_path)).any()
    widget(app, "dataset_classes").set_value(["normal"]).run()  # the scan to open is filtered out
    assert widget(app, "dataset_finding_scan").options == ["malignant/malignant (3).png"]  # an orphan mask has no scan
    widget(app, "dataset_finding_scan").set_value("malignant/malignant (3).png").run()
    assert widget(app, "dataset_detail_scan").value == "malignant/malignant (3).png"
    assert widget(app, "dataset_classes").value == list(CLASSES)  # the filters cleared so that it shows
    assert any("No usable mask" in i.value for i in app.info)
    assert not app.exception


def test_the_models_view_of_a_scan_in_detail_is_computed_once_not_on_every_rerun(monkeypatch, synthetic_dataset,
                                                                                runs_with_model):
    from busi.predict import Classifier

    calls = []
    explain = Classifier.explain
    monkeypatch.setattr(Classifier, "explain", lambda self, image, class_name=None: calls.append(class_name)
                        or explain(self, image, class_name))
    monkeypatch.setenv("BUSI_DATA", str(synthetic_dataset))
    app = open_page("dataset")
    widget(app, "dataset_overlay_opacity").set_value(0.8).run()
    widget(app, "dataset_overlay_opacity").set_value(0.2).run()
    assert len(calls) == 1 and not app.exception  # one Grad-CAM, for the class the model calls the scan


def test_on_the_real_scans_a_label_conflict_opens_beside_its_twin_filed_elsewhere(monkeypatch, real_busi, runs):
    monkeypatch.setenv("BUSI_DATA", str(real_busi))
    app = open_page("dataset")
    assert "663 of 663 scans match" in app.caption[0].value
    widget(app, "dataset_flags").set_value(["label_conflict"]).run()
    widget(app, "dataset_classes").set_value(["malignant"]).run()
    assert "malignant/malignant (51).png" in widget(app, "dataset_detail_scan").options
    widget(app, "dataset_detail_scan").select("malignant/malignant (51).png").run()
    assert any("filed under another class (label conflict)" in e.value for e in app.error)
    twin = next(b for b in app.button if b.key.startswith("dataset_twin_") and "benign (131)" in b.key)
    twin.click().run()  # the twin is benign: the malignant filter is cleared so that it can be shown
    assert widget(app, "dataset_detail_scan").value == "benign/benign (131).png"
    assert app.dataframe[0].value["value"].tolist()[0] == "benign" and not app.exception


# -- playground ------------------------------------------------------------------------------

def test_playground_updates_resets_and_hands_settings_to_training(runs):
    app = open_page("playground")
    assert app.session_state["playground_config"].size == 224
    widget(app, "pg_size").set_value(128).run()
    widget(app, "pg_clahe").set_value(False).run()
    config = app.session_state["playground_config"]
    assert config.size == 128 and not config.clahe
    widget(app, "pg_canny_low").set_value(300).run()
    widget(app, "pg_canny_high").set_value(100).run()
    assert "canny_high" in shown(app.error[0].value)  # bad combination explained, page still up
    widget(app, "pg_canny_low").set_value(50).run()
    widget(app, "pg_channels").set_value("stacked").run()
    assert not app.exception and app.session_state["playground_config"].channels == "stacked"
    widget(app, "pg_reset").click().run()
    config = app.session_state["playground_config"]
    assert config.size == 224 and config.clahe and config.channels == "grey"
    widget(app, "pg_size").set_value(96).run()
    widget(app, "pg_use_for_training").click().run()
    assert app.session_state["training_preprocess"].size == 96
    app.switch_page("pages/training.py").run()
    assert widget(app, "tr_image_size").value == 96


def test_playground_takes_an_upload_and_refuses_a_broken_one(runs):
    app = open_page("playground")
    widget(app, "pg_source").set_value("Upload a scan").run()
    uploader = widget(app, "pg_upload")
    uploader.set_value(("scan.png", png_bytes(synth.make_phantom("benign", 1)[0]), "image/png")).run()
    assert not app.error and not app.exception
    widget(app, "pg_upload").set_value(("broken.png", b"\x89PNG not really", "image/png")).run()
    assert app.error and not app.exception


# -- training --------------------------------------------------------------------------------

def _followed(app) -> str:
    """The run the Follow run picker shows, checked against the choice the page keeps."""
    (picker,) = [box for box in app.selectbox if box.label == "Follow run"]
    assert picker.value == app.session_state["tr_follow"]
    return picker.value


def test_a_tiny_training_run_is_started_and_followed_to_the_end(runs, synthetic_dataset):
    from busi.config import TrainConfig
    from busi.preprocess import PreprocessConfig
    from busi.train import train

    list(train(synthetic_dataset, runs / "20260101-000000-earlier", TrainConfig(arch="resnet18", epochs=1, batch_size=4),
               PreprocessConfig(size=32)))
    app = open_page("training")
    assert _followed(app) == "20260101-000000-earlier"
    widget(app, "tr_arch").select("resnet18")
    widget(app, "tr_epochs").set_value(1)
    widget(app, "tr_batch_size").set_value(16)
    widget(app, "tr_image_size").set_value(32)
    widget(app, "tr_device").select("cpu")
    widget(app, "tr_start").click().run()
    assert not app.exception and not app.error
    run = active_run(runs)
    assert run is not None and "is running" in app.info[0].value
    # The run just started is followed at once, and Start is disabled while it runs.
    assert _followed(app) == run.name and widget(app, "tr_start").disabled
    assert json.loads((run / "request.json").read_text())["preprocess"]["size"] == 32
    deadline = time.monotonic() + 120
    while active_run(runs) and time.monotonic() < deadline:
        time.sleep(0.5)
    app = open_page("training")
    status = {m.label: m.value for m in app.metric}
    assert status["Status"] == "finished" and status["Epochs finished"] == "1/1"
    done = RunFolder(run).read_events()[-1]
    assert done.kind == "done"
    assert app.success[0].value == f"Finished: the model is epoch {done.model_epoch}'s (validation macro-F1 " \
        f"{done.model_val_macro_f1:.3f}). See the Evaluation page."


def test_choosing_a_recipe_fills_the_form(runs):
    app = open_page("training")
    assert widget(app, "tr_recipe").value == "quick"  # on the demo phantoms, the demo model first
    assert widget(app, "tr_arch").value == "resnet18" and widget(app, "tr_epochs").value == 12
    widget(app, "tr_recipe").select("scratch").run()
    assert widget(app, "tr_arch").value == "resnet18" and widget(app, "tr_image_size").value == 128
    assert any(caption.value == RECIPES["scratch"].summary for caption in app.caption)
    assert widget(app, "tr_optimizer").value == "adamw" and not app.exception


def test_on_real_scans_the_pretrained_recipe_is_offered_first(monkeypatch, synthetic_dataset, tmp_path, runs):
    monkeypatch.setenv("BUSI_DATA", str(_real_scans(synthetic_dataset, tmp_path)))
    app = open_page("training")
    assert widget(app, "tr_recipe").value == "best" and widget(app, "tr_recipe").options[0] == RECIPES["best"].title
    assert widget(app, "tr_arch").value == "efficientnet_lite0" and widget(app, "tr_pretrained").value == "imagenet"
    assert any(caption.value == RECIPES["best"].summary for caption in app.caption)


def test_a_second_start_while_training_is_refused(runs, synthetic_dataset, monkeypatch):
    from busi.config import TrainConfig
    from busi.jobs import start_training
    from busi.preprocess import PreprocessConfig

    run = start_training(synthetic_dataset, TrainConfig(arch="resnet18", epochs=30, batch_size=2),
                         PreprocessConfig(size=32), runs, threads=1)
    try:
        app = open_page("training")
        assert widget(app, "tr_start").disabled
        assert f"Training **{run.name}** is running" in shown(app.info[0].value)
    finally:
        (run / "STOP").touch()
        deadline = time.monotonic() + 60
        while active_run(runs) and time.monotonic() < deadline:
            time.sleep(0.3)


# -- evaluation ------------------------------------------------------------------------------

def test_evaluation_report_threshold_and_confusion_cell_gallery(runs_with_model):
    app = open_page("evaluation")
    labels = [m.label.split(" (95 % CI")[0] for m in app.metric]
    assert labels[:4] == ["Accuracy", "Macro-F1", "Sensitivity for malignant", "Specificity for malignant"]
    table = app.dataframe[0].value
    assert table["class"].tolist() == [*CLASSES, "macro avg", "weighted avg"]
    _, result = evaluate_run(runs_with_model / "20260101-000000-resnet18")  # the CLI's table, row for row
    assert table.to_dict("records") == report_rows(result) and list(table.columns) == list(REPORT_COLUMNS)
    assert not table.isin(["None", "nan"]).any().any()
    assert any("Click a square to see those scans below" in m.value for m in app.markdown)
    assert any("Trained on** 18 synthetic phantoms" in m.value and "its 3 test scans" in m.value for m in app.markdown)
    widget(app, "ev_use_threshold").set_value(True).run()
    widget(app, "ev_threshold").set_value(0.0).run()
    assert next(m.value for m in app.metric if m.label.startswith("Sensitivity")) == "1.00"
    assert next(m.value for m in app.metric if m.label.startswith("Specificity")) == "0.00"
    # The table above follows the same rule as the operating point: every cancer called malignant.
    assert app.dataframe[0].value.set_index("class").loc["malignant", "recall"] == "1.00"
    assert any("called malignant when p(malignant) ≥ 0.000" in s.value for s in app.subheader)
    app.session_state["ev_cell"] = (1, 1)  # what a click on the malignant/malignant square stores
    app.run()
    assert not app.exception
    assert any("true malignant, predicted malignant" in m.value for m in app.markdown)
    widget(app, "ev_threshold").set_value(1.0).run()  # nothing reaches 1.0: every malignant scan is missed
    assert not app.exception
    assert any("false negative, p(malignant)" in m.value for m in app.markdown)
    # A page switch and back keeps the decision rule and the cell.
    app.switch_page("pages/overview.py").run()
    app.switch_page("pages/evaluation.py").run()
    assert widget(app, "ev_use_threshold").value is True and widget(app, "ev_threshold").value == 1.0
    assert app.session_state["ev_cell"] == (1, 1) and not app.exception


def test_evaluation_applies_the_screening_threshold_on_request(runs_with_model):
    set_validation_predictions(runs_with_model / "20260101-000000-resnet18", [("malignant", 0.1237)] * 10 + [("benign", 0.0)])
    app = open_page("evaluation")
    assert any("Screening threshold: p(malignant) ≥ 0.12," in caption.value for caption in app.caption)
    assert widget(app, "ev_use_threshold").value is False
    widget(app, "ev_screening").click().run()
    assert not app.exception
    assert widget(app, "ev_use_threshold").value is True
    assert widget(app, "ev_threshold").value == pytest.approx(0.123)


def test_confusion_matrix_clicks_map_back_to_cells():
    figure = confusion_matrix([[5, 1, 0], [2, 7, 0], [0, 0, 3]], CLASSES)
    trace = figure.data[0]
    assert [int(t) for t in trace.text] == [5, 1, 0, 2, 7, 0, 0, 0, 3]
    # What Streamlit reports for a click on the square in row "malignant", column "benign".
    point = {"curve_number": 0, "point_number": 3, "point_index": 3, "x": trace.x[3], "y": trace.y[3]}
    assert cell_from_selection([point], CLASSES) == (1, 0)
    assert cell_from_selection([], CLASSES) is None and cell_from_selection([{"x": 1}], CLASSES) is None


# -- prediction ------------------------------------------------------------------------------

def test_prediction_without_a_model_offers_a_quick_one(runs):
    app = open_page("prediction")
    assert "no trained model yet" in app.info[0].value
    assert widget(app, "pr_quick_train").label == "Train a quick demo model"


def _real_scans(synthetic_dataset, tmp_path):
    """The phantoms without their marker: as far as the app can tell, scans of patients."""
    import shutil

    real = tmp_path / "scans"
    shutil.copytree(synthetic_dataset, real)
    (real / "SYNTHETIC-PHANTOMS.txt").unlink()
    return real


def test_prediction_without_a_model_on_real_scans_trains_the_pretrained_recipe_on_them(runs, synthetic_dataset, tmp_path,
                                                                                      monkeypatch):
    real = _real_scans(synthetic_dataset, tmp_path)
    monkeypatch.setenv("BUSI_DATA", str(real))
    app = open_page("prediction")
    assert RECIPES["best"].summary in app.info[0].value
    widget(app, "pr_quick_train").click().run()
    run = active_run(runs)
    try:
        request = json.loads((run / "request.json").read_text())
        assert request["train"]["arch"] == "efficientnet_lite0" and request["train"]["pretrained"] == "imagenet"
        assert widget(app, "pr_quick_train").disabled and not app.exception
        assert "--data " + str(real) in " ".join(json.loads(json.dumps(_command_of(run))))
    finally:
        (run / "STOP").touch()
        deadline = time.monotonic() + 120
        while active_run(runs) and time.monotonic() < deadline:
            time.sleep(0.3)


def _command_of(run):
    """The training process's command line, from the kernel."""
    pid = json.loads((run / "job.json").read_text())["pid"]
    try:
        return open(f"/proc/{pid}/cmdline").read().split("\0")
    except OSError:  # already ended: its config says which data it read
        return ["--data", json.loads((run / "config.json").read_text())["data_dir"]]


def test_prediction_of_uploads_with_warnings_and_errors(runs_with_model):
    app = open_page("prediction")
    assert app.error[0].value.startswith("This model learnt from 18 synthetic phantoms")  # said before any upload
    assert "not a medical device" in app.warning[0].value
    scan = png_bytes(synth.make_phantom("malignant", 2, (96, 96))[0])
    photo = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8))
    widget(app, "pr_uploads").set_value([("scan.png", scan, "image/png"), ("photo.png", photo, "image/png"),
                                         ("empty.png", b"", "image/png")]).run()
    assert not app.exception
    predicted = [m for m in app.metric if m.label == "Predicted class"]
    assert len(predicted) == 2 and all(m.value in CLASSES for m in predicted)
    assert any("coloured" in w.value for w in app.warning)
    assert any("empty.png" in shown(e.value) and "empty" in e.value for e in app.error)
    widget(app, "pr_opacity").set_value(0.9).run()
    assert not app.exception


def test_prediction_shows_the_screening_threshold_and_flags_by_it(runs_with_model):
    run = runs_with_model / "20260101-000000-resnet18"
    scans = [png_bytes(synth.make_phantom(label, seed, (96, 96))[0]) for label, seed in (("malignant", 2), ("normal", 3))]
    scores = [load_classifier(run).predict(scan).probabilities["malignant"] for scan in scans]
    threshold = sum(scores) / 2  # one scan reaches it, the other does not
    set_validation_predictions(run, [("malignant", threshold)] * 10 + [("benign", 0.0)])
    app = open_page("prediction")
    assert any(f"Screening threshold: p(malignant) ≥ {threshold:.2g}," in caption.value for caption in app.caption)
    widget(app, "pr_uploads").set_value([(f"{n}.png", scan, "image/png") for n, scan in enumerate(scans)]).run()
    assert not app.exception
    expected = ["Flagged for review" if score >= threshold else "Not flagged" for score in scores]
    assert sorted(expected) == ["Flagged for review", "Not flagged"]
    assert [m.value for m in app.metric if m.label == "Screening flag"] == expected
    # In words, with the numbers that decided it: in the summary table first, then beside each scan.
    words = [f"Flagged for review: p(malignant) {score:.2g}, at or above {threshold:.2g}" if score >= threshold else
             f"Not flagged: p(malignant) {score:.2g}, below {threshold:.2g}" for score in scores]
    assert app.dataframe[0].value["screening"].tolist() == words
    assert [c.value for c in app.caption if c.value.startswith(("Flagged", "Not flagged"))] == words


def test_prediction_shows_a_summary_first_and_a_file_added_twice_once(runs_with_model):
    scan = png_bytes(synth.make_phantom("malignant", 2, (96, 96))[0])
    other = png_bytes(synth.make_phantom("normal", 3, (96, 96))[0])
    app = open_page("prediction")
    widget(app, "pr_uploads").set_value([("a.png", scan, "image/png"), ("b.png", other, "image/png"),
                                         ("copy of a.png", scan, "image/png")]).run()
    assert not app.exception
    summary = app.dataframe[0].value
    assert summary["file"].tolist() == ["a.png", "b.png"] and set(summary["called"]) <= set(CLASSES)
    assert any("copy of a.png is the same file as a.png: shown once" in shown(c.value) for c in app.caption)
    assert len([m for m in app.metric if m.label == "Predicted class"]) == 2
    assert [s.value for s in app.subheader] == ["Summary", "a\\.png", "b\\.png"]


def test_prediction_of_a_dataset_scan_shows_it_beside_its_lesion_outline(runs_with_model, synthetic_dataset, monkeypatch):
    monkeypatch.setenv("BUSI_DATA", str(synthetic_dataset))
    app = open_page("prediction")
    widget(app, "pr_source").set_value("A scan of the data in use, beside its lesion outline").run()
    options = widget(app, "pr_dataset_scan").options
    assert options[:3] == ["benign/benign (1).png", "benign/benign (2).png", "benign/benign (3).png"]
    widget(app, "pr_dataset_scan").select("malignant/malignant (2).png").run()
    assert not app.exception
    assert any("Filed as **malignant**" in m.value for m in app.markdown)
    captions = [caption for image in app.image for caption in image.captions]
    assert "the scan, its lesion outline in green" in captions and any("true lesion outline" in c for c in captions)


def test_prediction_without_a_readable_screening_threshold_warns_and_still_predicts(runs_with_model):
    (runs_with_model / "20260101-000000-resnet18" / "split.csv").unlink()
    app = open_page("prediction")
    assert any("No screening threshold" in w.value and "split.csv" in shown(w.value) for w in app.warning)
    widget(app, "pr_uploads").set_value([("scan.png", png_bytes(synth.make_phantom("benign", 1, (96, 96))[0]), "image/png")]).run()
    assert not app.exception
    assert [m.label for m in app.metric] == ["Predicted class"]


def test_prediction_with_a_stacked_channel_model_shows_the_processed_channel(runs, synthetic_dataset):
    from busi.config import TrainConfig
    from busi.events import Done
    from busi.preprocess import PreprocessConfig
    from busi.train import train

    config = TrainConfig(arch="resnet18", epochs=1, batch_size=4, seed=1)
    events = list(train(synthetic_dataset, runs / "20260101-000000-stacked", config, PreprocessConfig(size=32, channels="stacked")))
    assert isinstance(events[-1], Done)
    app = open_page("prediction")
    widget(app, "pr_uploads").set_value([("scan.png", png_bytes(synth.make_phantom("benign", 3, (96, 96))[0]), "image/png")]).run()
    assert not app.exception
    assert [m.value in CLASSES for m in app.metric if m.label == "Predicted class"] == [True]
    captions = [caption for image in app.image for caption in image.captions]
    assert any("the processed channel" in caption for caption in captions), captions


def test_moving_the_heatmap_slider_reruns_neither_the_model_nor_grad_cam(runs_with_model, monkeypatch):
    from busi.predict import Classifier

    calls = []
    predict, explain = Classifier.predict, Classifier.explain
    monkeypatch.setattr(Classifier, "predict", lambda self, image: calls.append("predict") or predict(self, image))
    monkeypatch.setattr(Classifier, "explain", lambda self, image, class_name=None: calls.append("explain")
                        or explain(self, image, class_name))
    app = open_page("prediction")
    scan = png_bytes(synth.make_phantom("benign", 5, (96, 96))[0])
    widget(app, "pr_uploads").set_value([("scan.png", scan, "image/png")]).run()
    widget(app, "pr_opacity").set_value(0.2).run()
    widget(app, "pr_opacity").set_value(0.7).run()
    assert sorted(calls) == ["explain", "predict"] and not app.exception


def test_a_browser_keeps_its_secret_across_the_cookies_streamlit_re_masks():
    from streamlit.web.server.starlette.starlette_app_utils import generate_xsrf_token_string

    from pages._ui import browser_secret

    token = bytes(range(16))
    cookies = {generate_xsrf_token_string(token, 1700000000) for _ in range(5)}
    assert len(cookies) > 1 and {browser_secret(cookie) for cookie in cookies} == {token}
    assert browser_secret("") is None and browser_secret("1|abc") is None and browser_secret("2|zz|yy|1") is None


@pytest.mark.parametrize("same_folder", [True, False])
def test_scoring_on_the_data_in_use_says_whether_the_run_learnt_from_those_scans(runs_with_model, synthetic_dataset,
                                                                                   monkeypatch, same_folder):
    if same_folder:
        monkeypatch.setenv("BUSI_DATA", str(synthetic_dataset))
    app = open_page("evaluation")
    widget(app, "ev_scope").set_value("Every scan of the data in use").run()
    assert not app.exception
    said = " ".join(m.value for m in app.markdown)
    if same_folder:
        assert "all 18 scans of the data in use" in said and "it learnt from and" in said and "not an unbiased accuracy" in said
        assert app.subheader[1].value.startswith("Classification report: 18 scans")
    else:
        assert "a folder other than the one it learnt from" in said and "it never saw them" in said
        assert app.subheader[1].value.startswith(f"Classification report: {3 * synth.DEMO_PER_CLASS} scans")


def test_a_stopped_run_is_resumed_by_the_session_that_started_it(runs, synthetic_dataset):
    app = open_page("training")
    widget(app, "tr_recipe").select("quick").run()
    widget(app, "tr_epochs").set_value(30)
    widget(app, "tr_batch_size").set_value(2)
    widget(app, "tr_image_size").set_value(32)
    widget(app, "tr_start").click().run()
    run = active_run(runs)
    deadline = time.monotonic() + 120
    while not RunFolder(run).progress() and time.monotonic() < deadline:
        time.sleep(0.3)
    widget(app, "tr_stop").click().run()
    while active_run(runs) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert RunFolder(run).state() == "stopped"
    other = open_page("training")
    assert not [b for b in other.button if b.key == "tr_resume"]  # another session's run: no Resume
    app.run()
    widget(app, "tr_resume").click().run()
    assert not app.exception and active_run(runs) == run
    try:
        while not any(e.kind == "started" and e.resumed for e in RunFolder(run).read_events()) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert any(e.kind == "started" and e.resumed for e in RunFolder(run).read_events())
    finally:
        (run / "STOP").touch()
        while active_run(runs) and time.monotonic() < deadline + 60:
            time.sleep(0.3)


def test_preprocessing_settings_survive_a_switch_to_an_upload_and_to_another_page(runs):
    app = open_page("playground")
    widget(app, "pg_size").set_value(128).run()
    widget(app, "pg_canny_high").set_value(300).run()
    widget(app, "pg_source").set_value("Upload a scan").run()  # no upload yet: the page waits for one
    assert widget(app, "pg_size").value == 128 and widget(app, "pg_canny_high").value == 300
    assert widget(app, "pg_clahe").value is True and widget(app, "pg_canny_low").value == 50
    widget(app, "pg_source").set_value("From the dataset").run()
    app.switch_page("pages/training.py").run()
    app.switch_page("pages/playground.py").run()
    assert widget(app, "pg_size").value == 128 and widget(app, "pg_canny_high").value == 300 and not app.exception
    assert app.session_state["playground_config"].size == 128


def test_a_square_opened_while_the_grad_cams_are_prepared_shows_its_scans_first(runs_with_model, synthetic_dataset,
                                                                                  monkeypatch):
    """The Grad-CAMs are prepared in the background, the malignant errors first; a square opened
    meanwhile shows its own scans within seconds, not "Preparing…" until the whole queue ahead is done."""
    import busi.gallery
    from busi.evaluate import folder_predictions
    from busi.metrics import MALIGNANT

    monkeypatch.setenv("BUSI_DATA", str(synthetic_dataset))
    predictions = folder_predictions(load_classifier(runs_with_model / "20260101-000000-resnet18"), synthetic_dataset)
    wrongness = np.abs((predictions.labels == MALIGNANT) - predictions.probabilities[:, MALIGNANT])
    last = int(np.argsort(-wrongness, kind="stable")[-1])  # the page queues the scans in this order
    cell = (int(predictions.labels[last]), int(predictions.probabilities[last].argmax()))
    real_scan_view, computed = busi.gallery.scan_view, []

    def slow_scan_view(classifier, record, classes):  # 18 scans: 9 s for the whole queue
        time.sleep(0.5)
        computed.append(record.path)
        return real_scan_view(classifier, record, classes)

    monkeypatch.setattr(busi.gallery, "scan_view", slow_scan_view)
    app = open_page("evaluation", ev_scope="Every scan of the data in use", ev_cell=cell)
    assert any(f"true {CLASSES[cell[0]]}, predicted {CLASSES[cell[1]]}" in m.value for m in app.markdown)
    assert "Preparing…" not in [info.value for info in app.info]
    assert len(computed) < 18, "the page waited for every Grad-CAM"


def test_a_failed_gallery_is_tried_afresh_and_other_runs_keep_theirs(runs_with_model, tiny_run, synthetic_dataset,
                                                                     monkeypatch):
    import busi.gallery
    from busi.evaluate import folder_predictions
    from pages import _ui

    runs = [runs_with_model / "20260101-000000-resnet18", runs_with_model / "20260102-000000-second"]
    shutil.copytree(tiny_run, runs[1])
    predictions = [folder_predictions(load_classifier(run), synthetic_dataset) for run in runs]
    kept = _ui.gallery(runs[0], predictions[0])
    assert kept.wait(60) and kept.failure is None

    def broken_scan_view(classifier, record, classes):
        raise RuntimeError("backward failed")

    monkeypatch.setattr(busi.gallery, "scan_view", broken_scan_view)
    failed = _ui.gallery(runs[1], predictions[1])
    assert failed.wait(60) and failed.failure == "RuntimeError: backward failed"
    # Shown once (by the call that returned it, or by the next one if it failed later), then tried afresh.
    assert [_ui.gallery(runs[1], predictions[1]) for _ in range(2)][-1] is not failed
    assert _ui.gallery(runs[0], predictions[0]) is kept  # without recomputing another run's Grad-CAMs
