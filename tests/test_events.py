"""Training events as JSON lines: round trips, runs written by older versions, lines not yet whole."""

import json

import pytest

from busi.events import BatchEnd, Done, EpochEnd, Failed, Started, Stopped, event_from_json, event_to_json

EVENTS = [Started(1, 3, 4242), BatchEnd(1, 1, 2, 0.9, 12.5, 4), EpochEnd(1, 3, 0.9, 1.0, 0.5, 0.4, 0.3, 0.001, 20.0, kept=True),
          Stopped(2, "stop requested"), Failed("Out of memory"), Done(1, 0.4)]


@pytest.mark.parametrize("event", EVENTS, ids=lambda event: event.kind)
def test_every_event_round_trips_through_one_json_line(event):
    line = event_to_json(event)
    assert "\n" not in line and event_from_json(line) == event


def test_the_done_event_of_an_older_run_names_the_kept_epoch():
    old = json.dumps({"best_epoch": 7, "best_val_macro_f1": 0.61, "kind": "done"})
    assert event_from_json(old) == Done(model_epoch=7, model_val_macro_f1=0.61)
    # Epochs recorded before 'kept' existed read as not kept: nothing is guessed.
    old_epoch = {key: value for key, value in json.loads(event_to_json(EVENTS[2])).items() if key != "kept"}
    assert event_from_json(json.dumps(old_epoch)).kept is False


@pytest.mark.parametrize("line", ['{"epoch": 1, "batch": 1, "batc', '{"kind": "renamed_in_the_future"}', '[1, 2]',
                                  '{"kind": "done", "unknown_field": 1}'])
def test_a_line_that_is_not_a_whole_known_event_is_skipped(line):
    assert event_from_json(line) is None
