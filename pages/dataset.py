"""Dataset browser: balance and sizes, a filterable thumbnail grid, one scan in detail."""

import math

import streamlit as st

from busi import figures
from busi.data import CLASSES, load_mask, load_scan
from busi.preprocess import overlay
from pages import _ui

_ui.sidebar()
PER_PAGE = 24
COLUMNS = 6

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
filters = st.columns([2, 3, 2, 1])
classes = filters[0].multiselect("Class", CLASSES, default=list(CLASSES), key="dataset_classes")
flags = filters[1].multiselect("Quality flags (any of)", all_flags, key="dataset_flags",
                               help="multiple_masks: several lesions; near_duplicate: shares a group; label_conflict: "
                                    "its group is filed under two classes.")
shared_only = filters[2].toggle("Only near-duplicate groups", key="dataset_shared_only")
group_text = filters[3].text_input("Group", key="dataset_group", placeholder="any")
group = int(group_text) if group_text.strip().isdigit() else None
if group_text.strip() and group is None:
    filters[3].caption("A group is a whole number.")
chosen = index.select(classes=classes, flags=flags, shared_groups_only=shared_only, group=group)
pages = max(1, math.ceil(len(chosen) / PER_PAGE))
page = st.number_input(f"Page (of {pages})", 1, pages, 1, key="dataset_page") if pages > 1 else 1
st.caption(f"{len(chosen)} of {len(index.records)} scans match.")
shown = chosen[(page - 1) * PER_PAGE : page * PER_PAGE]
for start in range(0, len(shown), COLUMNS):
    for column, position in zip(st.columns(COLUMNS), shown[start : start + COLUMNS]):
        record = index.records[position]
        marks = " ⚠" if "label_conflict" in record.flags else ""
        column.image(_ui.thumbnail(str(record.path)), caption=f"{_ui.literal(record.name)} · {record.label} · group {record.group}{marks}")

st.subheader("Scan in detail")
if not chosen:
    st.info("No scan matches the filters.")
else:
    names = [index.relative_path(index.records[p]) for p in chosen]
    selected = st.selectbox("Scan", names, key="dataset_detail_scan")
    record = index.record(selected)
    scan = load_scan(record)
    mask = load_mask(record) if record.mask_paths else None
    opacity = st.slider("Mask overlay opacity", 0.0, 1.0, 0.4, 0.05, key="dataset_overlay_opacity")
    views = st.columns(3)
    views[0].image(scan, caption="scan", width="stretch")
    if mask is not None and mask.shape == scan.shape:
        views[1].image(mask.astype("uint8") * 255, caption="merged lesion mask", width="stretch")
        views[2].image(overlay(scan, mask, opacity=opacity, style="fill"), caption="mask overlay", width="stretch")
    else:
        views[1].info("No usable mask for this scan.")
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

st.subheader("Validation report")
if index.findings:
    st.dataframe([{"severity": f.severity, "problem": f.code, "file": f.path, "message": f.message} for f in index.findings],
                 key="dataset_findings", hide_index=True)
else:
    st.success("No problems found.")
if st.button("Re-read the folder", key="dataset_reindex"):
    _ui.reindex()
    st.rerun()
