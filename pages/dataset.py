"""Dataset browser: balance and sizes, a filterable thumbnail grid whose scans open in detail,
beside the current model's view of them, and the validation report."""

import math

import streamlit as st

from busi import figures
from busi.data import CLASSES, load_mask, load_scan, natural_sorted
from busi.errors import BusiError
from busi.explain import heatmap_overlay
from busi.preprocess import overlay
from pages import _ui

_ui.sidebar()
PER_PAGE = 24
COLUMNS = 6
DETAIL = "dataset_detail_scan"


def _open(name: str, *, unfiltered: bool = False) -> None:
    """Show the scan in detail; ``unfiltered`` for a scan that the filters may hide (a near-duplicate
    filed elsewhere, a scan named by the report), whose filters are cleared so that it can be shown."""
    st.session_state[DETAIL] = name
    if unfiltered:
        st.session_state.update(dataset_classes=list(CLASSES), dataset_flags=[], dataset_shared_only=False, dataset_group="")


st.title("Dataset")
index = _ui.dataset()
if not index.records:
    st.info("This folder holds no readable scans: see the validation report below, or choose another source.")
left, right = st.columns(2)
left.plotly_chart(figures.class_balance(index.class_counts()), key="dataset_balance_chart")
right.plotly_chart(figures.image_sizes([r.width for r in index.records], [r.height for r in index.records], index.labels),
                   key="dataset_sizes_chart")

st.subheader("Browse")
all_flags = sorted({flag for record in index.records for flag in record.flags})
first, second = st.columns(2), st.columns([3, 1, 1])
st.session_state.setdefault("dataset_classes", list(CLASSES))
classes = first[0].multiselect("Class", CLASSES, key="dataset_classes")
flags = first[1].multiselect("Quality flags (any of)", all_flags, key="dataset_flags",
                             help="multiple_masks: several lesions; near_duplicate: shares a group; label_conflict: "
                                  "its group is filed under two classes.")
shared_only = second[1].toggle("Only near-duplicates", key="dataset_shared_only")
group_text = second[2].text_input("Group", key="dataset_group", placeholder="any")
group = int(group_text) if group_text.strip().isdigit() else None
if group_text.strip() and group is None:
    second[2].caption("A group is a whole number.")
chosen = index.select(classes=classes, flags=flags, shared_groups_only=shared_only, group=group)
by_name = {index.relative_path(index.records[p]): p for p in chosen}
names = natural_sorted(by_name)
pages = max(1, math.ceil(len(names) / PER_PAGE))
page = second[0].number_input(f"Page (of {pages})", 1, pages, 1, key="dataset_page") if pages > 1 else 1
st.caption(f"{len(names)} of {len(index.records)} scans match. Click Open under a scan to see it in detail.")
shown = names[(page - 1) * PER_PAGE : page * PER_PAGE]
for start in range(0, len(shown), COLUMNS):
    for column, name in zip(st.columns(COLUMNS), shown[start : start + COLUMNS]):
        record = index.records[by_name[name]]
        marks = " ⚠ conflict" if "label_conflict" in record.flags else ""
        column.image(_ui.thumbnail(str(record.path)), caption=f"{_ui.literal(record.name)} · group {record.group}{marks}")
        column.button("Open", key=f"dataset_open_{by_name[name]}", on_click=_open, args=(name,), width="stretch")

st.subheader("Scan in detail")
if not names:
    st.info("No scan matches the filters.")
else:
    if st.session_state.get(DETAIL) not in names:
        st.session_state[DETAIL] = names[0]
    selected = st.selectbox("Scan", names, key=DETAIL)
    record = index.record(selected)
    scan = load_scan(record)
    mask = load_mask(record) if record.mask_paths else None
    opacity = st.slider("Mask overlay opacity", 0.0, 1.0, 0.4, 0.05, key="dataset_overlay_opacity")
    views = st.columns(4)
    views[0].image(scan, caption="scan", width="stretch")
    if mask is not None and mask.shape == scan.shape:
        views[1].image(mask.astype("uint8") * 255, caption="merged lesion mask", width="stretch")
        views[2].image(overlay(scan, mask, opacity=opacity, style="fill"), caption="mask overlay", width="stretch")
    else:
        views[1].info("No usable mask for this scan.")
    models = _ui.usable_runs()
    model = _ui.classifier(models[0].path) if models else None
    if model is None:
        views[3].info("No model yet: train one to see its view of this scan.")
    else:
        try:
            with _ui.scan_slot():
                label, p_malignant, view = _ui.model_view(models[0].path, record)
        except BusiError as error:
            views[3].error(_ui.literal(error))
        else:
            views[3].image(view.outlined(heatmap_overlay(view.scan, view.heats[label])), width="stretch",
                           caption=f"the model calls it {label} (p(malignant) {p_malignant:.2f}); Grad-CAM, "
                                   "lesion outline in green")
            st.caption(f"Model: {_ui.literal(_ui.run_label(models[0]))}. " + (model.training_warning or ""))
    st.dataframe({"field": ["class", "size (px)", "mask files", "lesion area", "near-duplicate group", "flags"],
                  "value": [record.label, f"{record.width} × {record.height}",
                            ", ".join(p.name for p in record.mask_paths) or "none",
                            "n/a" if math.isnan(record.lesion_fraction) else f"{record.lesion_fraction:.1%}",
                            str(record.group), ", ".join(record.flags) or "none"]},
                 key="dataset_detail_table", hide_index=True)
    members = [m for m in index.group_members(record) if m.path != record.path]
    if members:
        conflict = any(m.label != record.label for m in members)
        (st.error if conflict else st.info)(
            f"{len(members)} near-duplicate(s) of this scan" + (": filed under another class (label conflict)." if conflict else "."))
        for column, member in zip(st.columns(min(len(members), COLUMNS)), members[:COLUMNS]):
            flag = " ≠ class" if member.label != record.label else ""
            column.image(_ui.thumbnail(str(member.path)), caption=f"{_ui.literal(member.name)} · {member.label}{flag}")
            column.button("Open", key=f"dataset_twin_{member.group}_{member.name}", on_click=_open,
                          args=(index.relative_path(member),), kwargs={"unfiltered": True}, width="stretch")

st.subheader("Validation report")
if index.findings:
    st.dataframe([{"severity": f.severity, "problem": f.code, "file": f.path, "message": f.message} for f in index.findings],
                 key="dataset_findings", hide_index=True)
    about = natural_sorted({scan for scan in map(index.scan_of, (f.path for f in index.findings)) if scan})
    if about:
        # A row about a mask opens the scan the mask belongs to.
        st.selectbox("Open the scan a problem is about", about, index=None, key="dataset_finding_scan",
                     placeholder="a scan named above", on_change=lambda: _open(st.session_state["dataset_finding_scan"], unfiltered=True))
else:
    st.success("No problems found.")
if st.button("Re-read the folder", key="dataset_reindex"):
    _ui.reindex()
    st.rerun()
