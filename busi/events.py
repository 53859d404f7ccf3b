"""What training reports, as typed events: the CLI renders them as a progress bar, the app as
live charts, and a run folder keeps them, one JSON line each, so that another process can
follow a run. The library never prints.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Started:
    """A training process began: at epoch 1, or after the last checkpoint when resuming."""

    epoch: int
    epochs: int
    pid: int  # the process training, so that any reader can tell a live run from a dead one
    resumed: bool = False
    kind: str = "started"


@dataclass(frozen=True)
class BatchEnd:
    epoch: int
    batch: int
    batches: int
    loss: float
    images_per_s: float
    size: int
    kind: str = "batch_end"


@dataclass(frozen=True)
class EpochEnd:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    val_malignant_recall: float
    lr: float
    eta_s: float
    # Whether this epoch's weights became the run's model (best.pt), as TrainConfig.keep decides:
    # recorded when it happens, so no reader has to re-derive it.
    kept: bool = False
    kind: str = "epoch_end"


@dataclass(frozen=True)
class Done:
    """The run ended; ``model_epoch`` is the epoch whose weights the model keeps (``TrainConfig.keep``)."""

    model_epoch: int
    model_val_macro_f1: float
    kind: str = "done"

    def describe(self) -> str:
        return f"the model is epoch {self.model_epoch}'s (validation macro-F1 {self.model_val_macro_f1:.3f})"


@dataclass(frozen=True)
class Stopped:
    epoch: int
    reason: str
    kind: str = "stopped"


@dataclass(frozen=True)
class Failed:
    message: str
    kind: str = "failed"


Event = Started | BatchEnd | EpochEnd | Done | Stopped | Failed
ENDINGS = (Done, Stopped, Failed)
_TYPES = {cls.kind: cls for cls in (Started, BatchEnd, EpochEnd, Done, Stopped, Failed)}  # type: ignore[attr-defined]
# Field names that runs written before a rename still carry.
_RENAMED = {"done": {"best_epoch": "model_epoch", "best_val_macro_f1": "model_val_macro_f1"}}


def event_to_json(event: Event) -> str:
    return json.dumps(asdict(event))


def event_from_json(line: str) -> Event | None:
    """The event on one line; None for a line that is not (yet) one: the half-written last line
    of a run still going, or an event kind this version does not know."""
    try:
        values = json.loads(line)
        kind = values["kind"]
        renamed = _RENAMED.get(kind, {})
        return _TYPES[kind](**{renamed.get(name, name): value for name, value in values.items()})
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
