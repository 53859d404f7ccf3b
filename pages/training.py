"""Training: a form with the engine's options, a background job, live charts from its events."""

import dataclasses
import time

import streamlit as st

from busi import figures
from busi.config import CLASS_WEIGHTINGS, DEVICES, OPTIMIZERS, SCHEDULES
from busi.data import is_synthetic
from busi.device import describe_device
from busi.errors import BusiError
from busi.events import BatchEnd
from busi.jobs import active_run, start_training, stop_training
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


st.title("Training")
runs_dir = _ui.runs_dir()
running = active_run(runs_dir)
st.caption(f"Runs are saved in `{runs_dir}`. Device available: {describe_device()}.")
phantoms = is_synthetic(st.session_state["data_dir"])
recipe_name = st.selectbox("Recipe", recipe_names(phantoms), key="tr_recipe", on_change=_apply_recipe)
st.caption(RECIPES[recipe_name].summary)
recipe_config, recipe_preprocess = RECIPES[recipe_name].train, RECIPES[recipe_name].preprocess
preprocess = st.session_state.get("training_preprocess", recipe_preprocess)
defaults = _form_values(recipe_name) | {"tr_image_size": preprocess.size}
for key, value in defaults.items():
    st.session_state.setdefault(key, value)

with st.form("training_form"):
    st.write("The form starts from the recipe; settings not shown here (augmentation, warm-up, label smoothing, "
             "weight decay, mask supervision, mixup, weight averaging, precise BatchNorm, ensemble member, which epoch is kept) "
             "come from the recipe "
             "as they are; input channels come from the preprocessing. On a CPU, a ResNet-50 epoch over the real data takes "
             "minutes.")
    columns = st.columns(3)
    arch = columns[0].selectbox("Architecture", list(BACKBONES), key="tr_arch")
    pretrained = columns[1].selectbox("Initial weights", ["none", "imagenet", "local file"], key="tr_pretrained",
                                      help="ImageNet weights are downloaded once by torchvision; on an offline machine "
                                           "give a local torchvision state dict instead.")
    weights_file = columns[2].text_input("Local weights file", key="tr_weights_file", placeholder="/path/to/resnet50.pth")
    epochs = columns[0].number_input("Epochs", 1, 200, key="tr_epochs")
    batch_size = columns[1].number_input("Batch size", 1, 256, key="tr_batch_size")
    lr = columns[2].number_input("Learning rate", 1e-6, 1.0, format="%.5f", key="tr_lr")
    optimizer = columns[0].selectbox("Optimiser", OPTIMIZERS, key="tr_optimizer")
    schedule = columns[1].selectbox("Schedule", SCHEDULES, key="tr_schedule")
    weighting = columns[2].selectbox("Class weighting", CLASS_WEIGHTINGS, key="tr_class_weighting")
    size = columns[0].number_input("Image size (px)", 32, 512, step=16, key="tr_image_size")
    device = columns[1].selectbox("Device", DEVICES, key="tr_device")
    seed = columns[2].number_input("Seed", 0, 10_000, 0, key="tr_seed")
    source = "the Preprocessing page's settings" if "training_preprocess" in st.session_state else "the recipe's preprocessing"
    st.caption(f"Preprocessing: {source}. Data: `{st.session_state.get('data_dir')}`.")
    submitted = st.form_submit_button("Start training", type="primary", disabled=running is not None, key="tr_start")

if submitted:
    try:
        source = pretrained
        if pretrained == "local file":  # under the allowed roots, and weights of this network, before any job starts
            source = str(resolve_weights_file(weights_file))
            check_weights_file(arch, source)
        config = dataclasses.replace(recipe_config, arch=arch, pretrained=source, epochs=int(epochs), batch_size=int(batch_size),
                                     lr=float(lr), optimizer=optimizer, schedule=schedule, class_weighting=weighting,
                                     seed=int(seed), warmup_epochs=min(recipe_config.warmup_epochs, int(epochs) - 1))
        run = start_training(st.session_state["data_dir"], config, dataclasses.replace(preprocess, size=int(size)), runs_dir,
                             device=device, roots=allowed_roots(), owner=_ui.session_token(), name=f"{recipe_name}-{arch}")
        st.session_state["training_run"] = str(run)
        running = run
    except BusiError as error:
        st.error(_ui.literal(error))

if running is not None:
    st.info(f"Training **{running.name}** is running. Other pages stay usable; come back any time.")
elif "training_preprocess" in st.session_state and st.button("Go back to the recipe's preprocessing", key="tr_reset_preprocess"):
    del st.session_state["training_preprocess"]
    st.rerun()

runs = list_runs(runs_dir)
if not runs:
    st.info("No runs yet: start one above.")
    st.stop()
names = [r.name for r in runs]
followed_name = st.selectbox("Follow run", names, index=names.index(running.name) if running else 0, key="tr_follow")
followed = runs_dir / followed_name


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
    device_text = machine.get("gpu") or machine.get("device") or "starting…"
    columns = st.columns(4)
    columns[0].metric("Status", summary.state)
    columns[1].metric("Epochs finished", f"{summary.epochs_done}/{summary.epochs}")
    columns[2].metric("Images/s", f"{batches[-1].images_per_s:.1f}" if batches else "–")
    columns[3].metric("Device", device_text)
    if progress:
        st.progress(progress.fraction, text=progress.describe())
    mine = run.owner in ("", _ui.session_token())
    if summary.state == "running" and not mine:
        st.caption("Started in another browser session: you can follow it here, but only that session can stop it.")
    if summary.state == "running" and mine and st.button("Stop training", key="tr_stop"):
        stop_training(run_path, _ui.session_token())
        st.toast("Stopping at the next batch; a checkpoint is kept and the run can be resumed.")
    if summary.state == "failed" or summary.state == "incomplete":
        st.error(f"The run did not finish: {_ui.literal(summary.message)}")
    elif summary.state == "stopped":
        st.warning(f"The run was {summary.message}. Resume it with `python -m busi train --out {run_path} --resume`.")
    elif summary.state == "finished":
        st.success(f"Finished: {events[-1].describe()}. See the Evaluation page.")
    loss, quality = figures.epoch_curves(events)
    left, right = st.columns(2)
    left.plotly_chart(loss, key="tr_loss_chart")
    right.plotly_chart(quality, key="tr_quality_chart")
    st.plotly_chart(figures.batch_loss(events), key="tr_batch_chart")
    if summary.state == "running":
        st.session_state["tr_was_running"] = str(run_path)


follow(followed)
