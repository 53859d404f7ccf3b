"""DICOM scans (busi.imageio): grey, RGB, YBR and inverted grey, one frame or many, never a patient's identifiers."""

import io

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

from busi import synth
from busi.cli import main
from busi.errors import ImageError
from busi.imageio import dicom_frames, read_image, read_scan
from busi.predict import load_classifier

PATIENT = "Doe^Jane"


def dicom(frames: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 8) -> bytes:
    """A DICOM file of ``frames`` (F, H, W) or (F, H, W, 3), with a patient's name in its header."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = UltrasoundImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = UltrasoundImageStorage, meta.MediaStorageSOPInstanceUID, "US"
    ds.PatientName, ds.PatientID = PATIENT, "123-45-6789"
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.SamplesPerPixel = 3 if frames.ndim == 4 else 1
    ds.PhotometricInterpretation = photometric
    if frames.ndim == 4:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = frames.astype(np.uint8 if bits == 8 else np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


SCANS = np.stack([synth.make_phantom("malignant", seed, (96, 128))[0] for seed in (1, 2, 3)])


def test_a_grey_dicom_reads_as_its_pixels():
    assert np.array_equal(read_image(dicom(SCANS[:1])), SCANS[0])
    assert dicom_frames(dicom(SCANS[:1])).frames == 1 and dicom_frames(b"\x89PNG not dicom") is None


def test_a_multi_frame_dicom_gives_the_frame_asked_for():
    data = dicom(SCANS)
    assert dicom_frames(data) == dicom_frames(data).__class__(3, 96, 128, "MONOCHROME2")
    for frame in range(3):
        assert np.array_equal(read_image(data, frame=frame), SCANS[frame])
    with pytest.raises(ImageError, match="holds 3 frame\\(s\\): choose one from 0 to 2"):
        read_image(data, frame=3)


def test_colour_and_inverted_dicoms_read_as_what_they_show():
    rgb = np.stack([SCANS[0]] * 3, axis=-1)[None]
    assert np.array_equal(read_image(dicom(rgb, "RGB")), rgb[0])
    inverted = read_scan(dicom(255 - SCANS[:1], "MONOCHROME1"))
    assert np.array_equal(inverted, SCANS[0])  # stored with 0 as white, shown with 0 as black
    deep = read_image(dicom(SCANS[:1].astype(np.uint16) * 16, bits=12))  # 12-bit: scaled by its own depth
    assert np.abs(deep.astype(int) - SCANS[0]).max() <= 1


def test_a_broken_or_huge_dicom_is_refused_in_one_line():
    data = dicom(SCANS[:1])
    with pytest.raises(ImageError, match="pixel data cannot be decoded|not a DICOM image this program can read"):
        read_image(data[:400])
    tall = np.zeros((1, 2400, 4000), np.uint8)
    with pytest.raises(ImageError, match="4000x2400 px, over the limit"):
        read_image(dicom(tall))


def test_busi_predict_reads_dicom_and_never_prints_the_patient(tiny_run, tmp_path, capsys):
    (tmp_path / "study.dcm").write_bytes(dicom(SCANS))
    (tmp_path / "no-suffix").write_bytes(dicom(SCANS[:1]))  # DICOM exports often have no suffix
    assert main(["predict", str(tiny_run), str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "study.dcm: " in out and "no-suffix: " in out and "Doe" not in out and "123-45" not in out


def test_a_dicom_upload_chooses_its_frame_and_shows_no_identifiers(runs_with_model):
    from tests.helpers import errors_besides_the_phantom_warning, open_page, shown, widget

    app = open_page("prediction")
    widget(app, "pr_uploads").set_value([("study.dcm", dicom(SCANS), "application/dicom")]).run()
    assert not app.exception and not errors_besides_the_phantom_warning(app)
    frame = next(w for w in app.number_input if shown(w.label).startswith("Frame of study.dcm"))
    assert shown(frame.label) == "Frame of study.dcm (of 3)" and frame.value == 1
    frame.set_value(3).run()
    (key,) = app.session_state["pr_results"]  # the frame on screen: the third, not the first
    prediction, _ = app.session_state["pr_results"][key]
    assert key[1] == 2 and np.array_equal(prediction.model_input,
                                          load_classifier(runs_with_model / "20260101-000000-resnet18").predict(SCANS[2]).model_input)
    on_screen = " ".join(str(element.value) for kind in ("markdown", "caption", "subheader", "metric", "warning", "error")
                         for element in getattr(app, kind)) + app.dataframe[0].value.to_string()
    assert "Doe" not in on_screen and "123-45" not in on_screen
