import csv
import inspect
import json
import os
import shutil
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

import busi.batches
import busi.train
from busi.arrays import masks_known, model_inputs
from busi.augment import augment_batch
from busi.cli import main
from busi.config import TrainConfig
from busi.data import index_dataset
from busi.errors import BusiError
from busi.events import BatchEnd, Done, EpochEnd, Failed, Started, Stopped
from busi.imageio import read_scan
from busi.lesion import LesionHead
from busi.model import TF_INCEPTION, build_model, to_model_tensor
from busi.predict import load_classifier
from busi.preprocess import Pipeline, PreprocessConfig
from busi.runs import RunFolder, load_checkpoint
from busi.split import group_kfold, read_manifest
from busi.train import build_optimiser, recompute_batch_norm, train, train_one_epoch
from tests.helpers import first_prediction_row

TINY = TrainConfig(arch="resnet18", epochs=2, batch_size=4, lr=0.01, seed=1)
SMALL = PreprocessConfig(size=32)


def test_training_yields_events_in_order_and_fills_the_run_folder(synthetic_dataset, tmp_path):
    events = list(train(synthetic_dataset, tmp_path, TINY, SMALL))
    kinds = [e.kind for e in events]
    assert kinds[-1] == "done" and kinds.count("epoch_end") == 2
    assert events[0] == Started(1, 2, os.getpid(), resumed=False)
    first_epoch = kinds.index("epoch_end")
    assert set(kinds[1:first_epoch]) == {"batch_end"}
    assert [e.epoch for e in events if isinstance(e, EpochEnd)] == [1, 2]
    assert all(isinstance(e.loss, float) and e.images_per_s > 0 for e in events if isinstance(e, BatchEnd))
    for name in ("config.json", "split.csv", "events.jsonl", "checkpoint.pt", "best.pt", "metrics.json",
                 "predictions.csv", "environment.json"):
        assert (tmp_path / name).is_file(), name
    assert RunFolder(tmp_path).read_events() == events
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["arch"] == "resnet18" and config["preprocess"]["size"] == 32
    assert (tmp_path / "predictions.csv").read_text().count("\n") == 19
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.25 <= metrics["temperature"] <= 8
    assert {"accuracy", "macro_f1", "malignant_recall", "ece", "ece_before_scaling"} <= set(metrics["test"])


def test_reloaded_best_model_reproduces_its_predictions(synthetic_dataset, tmp_path):
    list(train(synthetic_dataset, tmp_path, TINY, SMALL))
    state = load_checkpoint(tmp_path / "best.pt")
    model = build_model(state["train_config"]["arch"], 3).eval()
    model.load_state_dict(state["model"])
    preprocess = PreprocessConfig.from_saved(state["preprocess_config"])
    row = first_prediction_row(tmp_path)
    image = Pipeline(preprocess).model_input(read_scan(synthetic_dataset / row["path"]))
    with torch.no_grad():
        logits = model(to_model_tensor(torch.from_numpy(image[None])))
    probabilities = torch.softmax(logits / state["temperature"], 1)[0].numpy()
    expected = np.array([float(row[f"p_{name}"]) for name in ("benign", "malignant", "normal")])
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


@pytest.mark.parametrize("keep", ["best", "last"])
def test_the_model_is_the_best_scoring_epoch_or_the_last(synthetic_dataset, tmp_path, keep):
    events = list(train(synthetic_dataset, tmp_path, replace(TINY, epochs=4, keep=keep), SMALL))
    scores = [e.val_macro_f1 for e in events if isinstance(e, EpochEnd)]
    best_scoring = int(np.argmax(scores)) + 1
    assert best_scoring != 4  # otherwise both choices agree and this test could not tell them apart
    kept = best_scoring if keep == "best" else 4
    assert events[-1] == Done(kept, scores[kept - 1])
    # Each epoch says when it became the model: the best so far, or the final one.
    improved = [score > max(scores[:number], default=-1) for number, score in enumerate(scores)]
    assert [e.kept for e in events if isinstance(e, EpochEnd)] == (improved if keep == "best" else [False] * 3 + [True])
    model, final = (load_checkpoint(tmp_path / name)["model"] for name in ("best.pt", "checkpoint.pt"))
    assert all(torch.equal(model[name], final[name]) for name in final) == (keep == "last")


def test_a_cross_validation_fold_tests_on_that_fold(synthetic_dataset, tmp_path):
    config = TrainConfig(arch="resnet18", epochs=1, batch_size=4, folds=3, fold=1)
    assert isinstance(list(train(synthetic_dataset, tmp_path, config, SMALL))[-1], Done)
    rows = read_manifest(tmp_path / "split.csv")
    index = index_dataset(synthetic_dataset)
    folds = group_kfold(index.labels, index.groups, n_splits=3, seed=0)
    assert [r["split"] == "test" for r in rows] == (folds == 1).tolist()
    assert set(load_checkpoint(tmp_path / "best.pt")["input_stats"]) == {
        "brightness_mean", "brightness_sd", "contrast_mean", "contrast_sd"}


@pytest.mark.parametrize("folds, fold", [(0, 0), (3, 1)])
def test_near_duplicates_never_straddle_the_parts_of_a_trained_run(duplicated_dataset, tmp_path, folds, fold):
    config = TrainConfig(arch="resnet18", epochs=1, batch_size=4, folds=folds, fold=fold)
    assert isinstance(list(train(duplicated_dataset, tmp_path, config, SMALL))[-1], Done)
    parts_of_group, members = {}, Counter()
    for row in read_manifest(tmp_path / "split.csv"):
        parts_of_group.setdefault(row["group"], set()).add(row["split"])
        members[row["group"]] += 1
    assert sum(count == 2 for count in members.values()) == 6  # the copies were recognised as such
    assert all(len(parts) == 1 for parts in parts_of_group.values()), parts_of_group
    with open(tmp_path / "predictions.csv", newline="") as file:  # the parts the model was trained and scored on
        trained = {row["path"]: row["split"] for row in csv.DictReader(file)}
    assert trained == {row["path"]: row["split"] for row in read_manifest(tmp_path / "split.csv")}


def test_ensemble_members_share_the_split_but_not_the_weights(synthetic_dataset, tmp_path):
    config = TrainConfig(arch="resnet18", epochs=1, batch_size=4, folds=3, fold=2)
    for member in (0, 1):
        assert isinstance(list(train(synthetic_dataset, tmp_path / f"member-{member}", replace(config, member=member), SMALL))[-1], Done)
    assert (tmp_path / "member-0" / "split.csv").read_text() == (tmp_path / "member-1" / "split.csv").read_text()
    first, second = (load_checkpoint(tmp_path / f"member-{member}" / "best.pt")["model"]["conv1.weight"] for member in (0, 1))
    assert not torch.equal(first, second)


def test_ultrasound_augmentation_with_cosine_warm_up_trains(synthetic_dataset, tmp_path):
    config = TrainConfig(arch="resnet18", epochs=3, batch_size=4, optimizer="adamw", schedule="cosine",
                         warmup_epochs=1, augment="ultrasound", lr=0.01)
    events = list(train(synthetic_dataset, tmp_path, config, SMALL))
    assert isinstance(events[-1], Done)
    rates = [e.lr for e in events if isinstance(e, EpochEnd)]
    assert rates[0] == pytest.approx(0.005) and rates[1] == pytest.approx(0.01) and rates[2] < 0.01


@pytest.mark.parametrize("augment, policies", [("none", set()), ("flip", {"flip"}), ("ultrasound", {"ultrasound"}),
                                               ("strong", {"strong"})])
def test_training_batches_are_augmented_by_the_configured_policy(synthetic_dataset, tmp_path, monkeypatch, augment, policies):
    seen = []

    def recording(images, rng, policy, masks=None):
        seen.append(policy)
        return augment_batch(images, rng, policy, masks)

    monkeypatch.setattr(busi.batches, "augment_batch", recording)
    config = TrainConfig(arch="resnet18", epochs=1, batch_size=8, augment=augment)
    events = list(train(synthetic_dataset, tmp_path, config, SMALL))
    assert isinstance(events[-1], Done)
    assert set(seen) == policies and len(seen) == (sum(isinstance(e, BatchEnd) for e in events) if policies else 0)


def test_masks_supervise_training_only_and_resume_keeps_the_lesion_head(synthetic_dataset, tmp_path):
    config = TrainConfig(arch="resnet18", epochs=2, batch_size=4, mask_weight=1.0, augment="ultrasound",
                         mixup=0.4)
    events = []
    for event in train(synthetic_dataset, tmp_path, config, SMALL):
        events.append(event)
        if isinstance(event, EpochEnd):
            (tmp_path / "STOP").touch()
    assert isinstance(events[-1], Stopped)
    last = load_checkpoint(tmp_path / "checkpoint.pt")
    assert set(last["lesion_head"]) == {"conv.weight", "conv.bias"}
    assert not any(k.startswith("conv.") for k in load_checkpoint(tmp_path / "best.pt")["model"])
    assert isinstance(list(train(synthetic_dataset, tmp_path, resume=True))[-1], Done)
    model = build_model("resnet18", 3)
    model.load_state_dict(load_checkpoint(tmp_path / "best.pt")["model"])  # a plain torchvision model


def test_stacked_input_channels_train_and_predict_as_at_training_time(synthetic_dataset, tmp_path):
    config = TrainConfig(arch="resnet18", epochs=1, batch_size=4, seed=1, augment="ultrasound",
                         mask_weight=1.0, mixup=0.4)
    assert isinstance(list(train(synthetic_dataset, tmp_path, config, PreprocessConfig(size=32, channels="stacked")))[-1], Done)
    classifier = load_classifier(tmp_path)
    row = first_prediction_row(tmp_path)
    prediction = classifier.predict(synthetic_dataset / row["path"])
    assert prediction.model_input.shape == (32, 32, 3)
    np.testing.assert_allclose(list(prediction.probabilities.values()), [float(row[f"p_{c}"]) for c in classifier.classes],
                               atol=1e-5)
    explanation = classifier.explain(synthetic_dataset / row["path"])
    assert explanation.heat.shape == explanation.scan.shape


def test_the_weight_average_is_what_gets_scored_and_saved(synthetic_dataset, tmp_path):
    config = TrainConfig(arch="resnet18", epochs=1, batch_size=4, lr=0.01, ema=0.9)
    events = list(train(synthetic_dataset, tmp_path, config, SMALL))
    batches = sum(isinstance(e, BatchEnd) for e in events)
    last = load_checkpoint(tmp_path / "checkpoint.pt")
    raw, averaged = last["model"], last["ema"]
    assert averaged["n_averaged"].item() == batches  # one update per optimiser step
    assert not torch.equal(raw["conv1.weight"], averaged["module.conv1.weight"])
    best = load_checkpoint(tmp_path / "best.pt")["model"]
    assert all(torch.equal(best[name], averaged["module." + name]) for name in best)


def test_resume_continues_the_weight_average(synthetic_dataset, tmp_path):
    config = TrainConfig(arch="resnet18", epochs=2, batch_size=4, lr=0.01, ema=0.9)
    batches = 0
    for event in train(synthetic_dataset, tmp_path, config, SMALL):
        batches += isinstance(event, BatchEnd)
        if isinstance(event, EpochEnd):
            (tmp_path / "STOP").touch()
    assert isinstance(list(train(synthetic_dataset, tmp_path, resume=True))[-1], Done)
    per_epoch = batches - 1  # the stop came after the first batch of epoch 2
    assert load_checkpoint(tmp_path / "checkpoint.pt")["ema"]["n_averaged"].item() == 2 * per_epoch + 1


def test_training_with_cutmix_beside_mixup_and_the_lesion_loss_finishes_and_records_the_setting(synthetic_dataset, tmp_path):
    config = TrainConfig(arch="resnet18", epochs=1, batch_size=4, mask_weight=1.0, cutmix=1.0, mixup=0.4)
    assert isinstance(list(train(synthetic_dataset, tmp_path, config, SMALL))[-1], Done)
    assert json.loads((tmp_path / "config.json").read_text())["train"]["cutmix"] == 1.0


@pytest.mark.parametrize("precise_bn", [True, False])
def test_precise_batch_norm_scores_and_saves_statistics_of_the_clean_training_scans(synthetic_dataset, tmp_path, precise_bn):
    config = TrainConfig(arch="resnet18", epochs=1, batch_size=4, augment="ultrasound", mixup=0.4,
                         precise_bn=precise_bn)
    assert isinstance(list(train(synthetic_dataset, tmp_path, config, SMALL))[-1], Done)
    saved = load_checkpoint(tmp_path / "best.pt")["model"]
    model = build_model("resnet18", 3)
    model.load_state_dict(saved)
    training = np.array([row["split"] == "train" for row in read_manifest(tmp_path / "split.csv")])
    recompute_batch_norm(model, model_inputs(index_dataset(synthetic_dataset), SMALL)[training], torch.device("cpu"), 4)
    statistics = [name for name in saved if name.endswith(("running_mean", "running_var"))]
    assert len(statistics) == 40
    matches = [torch.allclose(saved[name], model.state_dict()[name], rtol=1e-4, atol=1e-5) for name in statistics]
    assert all(matches) if precise_bn else not any(matches)


def test_the_lesion_loss_counts_only_scans_with_known_masks():
    stage = torch.nn.Identity()
    head = LesionHead([stage], [1])
    with torch.no_grad():
        head.conv.weight.fill_(0.0)
        head.conv.bias.fill_(5.0)  # predicts lesion everywhere
    stage(torch.zeros(2, 1, 2, 2))
    masks = torch.stack([torch.full((4, 4), 255), torch.zeros(4, 4)]).to(torch.uint8)  # all lesion, no lesion
    confident_right, confident_wrong = np.log1p(np.exp(-5.0)), 5.0 + np.log1p(np.exp(-5.0))
    assert head.loss(masks, torch.tensor([1.0, 0.0])).item() == pytest.approx(confident_right, rel=1e-4)
    assert head.loss(masks, torch.tensor([0.0, 1.0])).item() == pytest.approx(confident_wrong, rel=1e-4)
    assert head.loss(masks, torch.tensor([0.0, 0.0])).item() == 0.0
    head.remove()
    assert not stage._forward_hooks


def test_finer_lesion_maps_each_see_their_own_resolution_and_the_loss_is_their_mean():
    coarse, fine = torch.nn.Identity(), torch.nn.Identity()
    head = LesionHead([coarse, fine], [1, 1])
    with torch.no_grad():
        for conv in (head.conv, head.finer[0]):
            conv.weight.fill_(1.0)
            conv.bias.fill_(0.0)  # the map's logit is the feature itself
    mask = torch.zeros(1, 4, 4, dtype=torch.uint8)
    mask[0, :2, :2] = 255  # the top left quarter is lesion
    coarse(torch.zeros(1, 1, 1, 1))  # one cell, a quarter lesion: target 0.25
    fine(torch.tensor([[[[9.0, -9.0], [-9.0, -9.0]]]]))  # 2 x 2 cells, confidently right
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    coarse_loss = bce(torch.zeros(1), torch.tensor([0.25])).item()
    fine_loss = bce(torch.tensor([9.0, -9.0, -9.0, -9.0]), torch.tensor([1.0, 0.0, 0.0, 0.0])).item()
    assert head.loss(mask, torch.ones(1)).item() == pytest.approx((coarse_loss + fine_loss) / 2, rel=1e-5)
    head.remove()
    assert not coarse._forward_hooks and not fine._forward_hooks


def test_lesion_maps_from_three_stages_train_and_resume(synthetic_dataset, tmp_path):
    config = TrainConfig(arch="resnet18", epochs=2, batch_size=4, mask_weight=1.0, mask_scales=3)
    for event in train(synthetic_dataset, tmp_path, config, SMALL):
        if isinstance(event, EpochEnd):
            (tmp_path / "STOP").touch()
    head = load_checkpoint(tmp_path / "checkpoint.pt")["lesion_head"]
    assert {name: tuple(value.shape) for name, value in head.items() if name.endswith("weight")} == \
        {"conv.weight": (1, 512, 1, 1), "finer.0.weight": (1, 256, 1, 1), "finer.1.weight": (1, 128, 1, 1)}
    assert isinstance(list(train(synthetic_dataset, tmp_path, resume=True))[-1], Done)
    build_model("resnet18", 3).load_state_dict(load_checkpoint(tmp_path / "best.pt")["model"])


def test_stop_file_stops_with_a_checkpoint_and_resume_finishes(synthetic_dataset, tmp_path):
    events = []
    for event in train(synthetic_dataset, tmp_path, TINY, SMALL):
        events.append(event)
        if isinstance(event, EpochEnd):
            (tmp_path / "STOP").touch()
    assert isinstance(events[-1], Stopped) and events[-1].epoch == 2
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    resumed = list(train(synthetic_dataset, tmp_path, resume=True))
    assert [e.epoch for e in resumed if isinstance(e, EpochEnd)] == [2]
    assert isinstance(resumed[-1], Done)


def test_a_stop_inside_the_first_epoch_leaves_a_checkpoint_that_resume_finishes(synthetic_dataset, tmp_path, capsys):
    events = []
    for event in train(synthetic_dataset, tmp_path, TINY, SMALL):
        events.append(event)
        if isinstance(event, BatchEnd) and event.batch == 1:
            (tmp_path / "STOP").touch()
    assert events[-1] == Stopped(1, "stop requested") and not any(isinstance(e, EpochEnd) for e in events)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 0  # no epoch finished: resume starts at epoch 1
    build_model("resnet18", 3).load_state_dict(state["model"])
    assert main(["train", "--data", str(synthetic_dataset), "--out", str(tmp_path), "--resume"]) == 0
    assert "done: the model is epoch" in capsys.readouterr().out
    resumed = RunFolder(tmp_path).read_events()[len(events):]
    assert [e.epoch for e in resumed if isinstance(e, EpochEnd)] == [1, 2] and isinstance(resumed[-1], Done)


def test_a_pretrained_timm_backbone_trains_and_predicts_with_its_own_input_scaling(synthetic_dataset, tmp_path):
    config = TrainConfig(arch="efficientnet_lite0", pretrained="imagenet", epochs=1, batch_size=4, mask_weight=1.0, mixup=0.4)
    assert isinstance(list(train(synthetic_dataset, tmp_path, config, SMALL))[-1], Done)
    assert load_checkpoint(tmp_path / "best.pt")["normalisation"] == TF_INCEPTION.to_dict()
    classifier = load_classifier(tmp_path)
    assert classifier.normalisation == TF_INCEPTION
    row = first_prediction_row(tmp_path)
    prediction = classifier.predict(synthetic_dataset / row["path"])  # as scored at training time, with TF scaling
    np.testing.assert_allclose(list(prediction.probabilities.values()), [float(row[f"p_{c}"]) for c in classifier.classes],
                               atol=1e-5)
    explanation = classifier.explain(synthetic_dataset / row["path"])
    assert explanation.heat.shape == explanation.scan.shape and explanation.heat.max() > 0


def test_a_typo_in_the_architecture_fails_before_any_data_is_read(tmp_path, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("the data was read")

    monkeypatch.setattr(busi.train, "index_dataset", no_reading)
    events = list(train(tmp_path / "data", tmp_path / "run", TrainConfig(arch="resnet51"), SMALL))
    assert isinstance(events[-1], Failed) and "Unknown architecture 'resnet51'" in events[-1].message


def test_batch_larger_than_the_data_fails_with_a_message(synthetic_dataset, tmp_path):
    events = list(train(synthetic_dataset, tmp_path, TrainConfig(arch="resnet18", batch_size=500), SMALL))
    assert isinstance(events[-1], Failed) and "batch_size 500 exceeds" in events[-1].message


def test_running_out_of_memory_fails_with_advice_and_keeps_the_last_epoch(synthetic_dataset, tmp_path, monkeypatch):
    epochs_begun = []

    def exhausted_in_epoch_two(*args, **kwargs):
        epochs_begun.append(inspect.signature(train_one_epoch).bind(*args, **kwargs).arguments["epoch"])
        if len(epochs_begun) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return train_one_epoch(*args, **kwargs)

    monkeypatch.setattr("busi.train.train_one_epoch", exhausted_in_epoch_two)
    events = list(train(synthetic_dataset, tmp_path, TINY, SMALL))
    assert events[-1] == Failed("Out of memory: lower the batch size or the image size, or train on the CPU.")
    assert epochs_begun == [1, 2] and load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


@pytest.mark.parametrize(
    "content, message",
    [(b"", "not a checkpoint this program can load safely"), (b"PK\x03\x04truncated", "not a checkpoint this program can load safely")],
)
def test_corrupt_checkpoints_are_refused(tmp_path, content, message):
    (tmp_path / "checkpoint.pt").write_bytes(content)
    with pytest.raises(BusiError, match=message):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_checkpoint_with_pickled_code_is_refused_not_run(tmp_path):
    class Payload:
        def __reduce__(self):
            return (exec, ("open('" + str(tmp_path / "pwned") + "', 'w').close()",))

    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(BusiError, match="not a checkpoint this program can load safely"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_foreign_checkpoint_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(BusiError, match="not a checkpoint this program can load safely"):
        load_checkpoint(tmp_path / "other.pt")


def test_a_lesion_scan_filed_without_its_mask_has_no_known_mask(synthetic_dataset, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(synthetic_dataset, copy)
    unmasked = next(path for path in sorted(copy.rglob("*_mask.png")) if "malignant" in path.parts)
    unmasked.unlink()
    index = index_dataset(copy)
    known = dict(zip((index.relative_path(record) for record in index.records), masks_known(index)))
    scan = unmasked.with_name(unmasked.name.replace("_mask", "")).relative_to(index.root).as_posix()
    assert known.pop(scan) is np.False_
    assert all(known.values())  # normal scans count as known: they have no lesion to mark


def test_the_body_can_learn_slower_than_the_head():
    config = TrainConfig(arch="resnet18", lr=0.01, optimizer="adamw", schedule="cosine", epochs=4, backbone_lr=0.1)
    model = build_model("resnet18", 3)
    optimizer, schedule = build_optimiser(model, config)
    head, body = optimizer.param_groups
    assert {id(p) for p in head["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    assert len(head["params"]) + len(body["params"]) == len(list(model.parameters()))
    assert (head["lr"], body["lr"]) == pytest.approx((0.01, 0.001))
    optimizer.step()  # no gradients yet: changes nothing, but comes before the schedule's step
    schedule.step()
    assert body["lr"] / head["lr"] == pytest.approx(0.1)  # the schedule scales both alike


def test_frozen_first_epochs_train_the_head_alone(synthetic_dataset, tmp_path):
    config = TrainConfig(arch="resnet18", epochs=2, batch_size=4, lr=0.01, freeze_epochs=1)
    start = build_model("resnet18", 3).state_dict()
    torch.manual_seed(config.training_seed)
    initial = {name: value.clone() for name, value in build_model("resnet18", 3).named_parameters()}
    after = []
    for event in train(synthetic_dataset, tmp_path, config, SMALL):
        if isinstance(event, EpochEnd):
            after.append(dict(load_checkpoint(tmp_path / "checkpoint.pt")["model"]))
    assert set(start) == set(after[0])
    changed = [[name for name in initial if not torch.equal(initial[name], epoch[name])] for epoch in after]
    assert changed[0] == ["fc.weight", "fc.bias"]  # epoch 1: the head alone
    assert "conv1.weight" in changed[1] and len(changed[1]) > 10  # epoch 2: everything
