"""Per-stream output history: consistent naming and, for live streams, smoothing with hysteresis.

The reference classifies every image alone, so a camera's label flickers between near-synonyms. A
stream's history, applied in event order, keeps:
- consistent naming: a concept keeps the first name the stream used for it (same WordNet synset, or
  text embeddings closer than a threshold);
- for live streams, an exponential moving average of candidate probabilities; the consistent label
  changes only when a challenger leads the current label by a margin for several frames in a row;
- the names used so far, which join the candidate set of the stream's next images.

Pure logic over plain data: the state is a dict (the worker stores it in a Faust table).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

LIVE = "live"
UPLOAD = "upload"
POLICIES = (LIVE, UPLOAD)


@dataclass(frozen=True)
class HistoryPolicy:
    mode: str = LIVE
    smoothing: float = 0.5  # weight of the newest frame in the moving average
    margin: float = 0.1  # a challenger must lead the current label by this much ...
    patience: int = 3  # ... for this many consecutive frames
    recent: int = 10  # consistent labels kept in the history sent with each label
    names: int = 16  # names remembered for consistent naming and extra candidates


@dataclass(frozen=True)
class Outcome:
    label: str  # the stream-consistent label
    history: list[str]  # recent consistent labels, newest last (this one included)
    state: dict  # the stream's new state


SameConcept = Callable[[str, str], bool]


def new_state() -> dict:
    return {"names": [], "recent": [], "average": {}, "current": None, "challenger": None, "streak": 0}


def canonical(name: str, names: Sequence[str], same_concept: SameConcept) -> str:
    """The name this stream already uses for the concept `name` denotes, or `name` itself."""
    for known in names:
        if known == name or same_concept(known, name):
            return known
    return name


def apply(state: dict | None, candidates: Sequence[tuple[str, float]], policy: HistoryPolicy,
          same_concept: SameConcept) -> Outcome:
    """Fold one image's candidate probabilities (best first) into the stream's history."""
    state = _copy(state or new_state())
    names = state["names"]
    frame: dict[str, float] = {}
    for name, probability in candidates:
        key = canonical(name, names, same_concept)
        frame[key] = frame.get(key, 0.0) + probability
    raw_best = max(frame, key=frame.get)
    if policy.mode == UPLOAD or state["current"] is None:
        label = raw_best
        state["challenger"], state["streak"] = None, 0
        state["average"] = frame if policy.mode == LIVE else {}
    else:
        label = _hysteresis(state, frame, policy)
    state["current"] = label
    if label not in names:
        names.append(label)
        del names[:-policy.names]
    state["recent"] = (state["recent"] + [label])[-policy.recent:]
    return Outcome(label, list(state["recent"]), state)


def _hysteresis(state: dict, frame: dict[str, float], policy: HistoryPolicy) -> str:
    keep = 1.0 - policy.smoothing
    average = {name: keep * value for name, value in state["average"].items()}
    for name, probability in frame.items():
        average[name] = average.get(name, 0.0) + policy.smoothing * probability
    # Forget names that faded out, so the state stays small.
    state["average"] = {name: value for name, value in average.items() if value >= 1e-3}
    current = state["current"]
    leader = max(average, key=average.get)
    if leader != current and average[leader] - average.get(current, 0.0) >= policy.margin:
        state["streak"] = state["streak"] + 1 if state["challenger"] == leader else 1
        state["challenger"] = leader
        if state["streak"] >= policy.patience:
            state["challenger"], state["streak"] = None, 0
            return leader
        return current
    state["challenger"], state["streak"] = None, 0
    return current


def _copy(state: dict) -> dict:
    return {**state, "names": list(state["names"]), "recent": list(state["recent"]),
            "average": dict(state["average"])}
