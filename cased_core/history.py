"""Per-stream output history: one name per concept, and for live streams a label that follows scenes.

The reference classifies every image alone, so a camera's label flickers: between near-synonyms, and
on frames where something else passes, the light changes or the picture blurs. A stream's history,
applied in event order, keeps:

- consistent naming: a concept keeps the first name the stream used for it (same WordNet synset, or
  text embeddings closer than a threshold); the names used so far join the candidate set of the
  stream's next images;
- for live streams, the current *scene*: the running mean of its frames' image embeddings (the
  anchor) and of their candidate probabilities (the votes, each frame's sharpened so that a frame's
  top name counts most). The label is the scene's leading name, kept until a challenger leads it by
  `margin`. A frame whose embedding is within `similarity` (cosine) of the anchor belongs to the
  scene, however its own top name reads, so near-tie frames and noise are outvoted;
- a *far* frame (below `similarity`) is either a change of scene or an excursion (a frame or two of
  something else, then the scene again). The stream learns which it sees: each far frame is settled
  by the next one (back to the old scene: an excursion; close to the far frame: a change). While a
  stream's changes outnumber its excursions `CHANGES_PER_EXCURSION` to one, a far frame starts a new
  scene at once (lag 0 after a cut) and an excursion is undone on the next frame; otherwise the far
  frame waits until `patience` more frames agree with it, keeping the old label meanwhile. A far
  frame that comes `patience_s` seconds or more after the previous one starts a new scene at once:
  the scene had time to change, and waiting would hold a wrong label for as long again;
- the last scenes left (`MEMORY`), so a scene that comes back gets its votes back.

Pure logic over plain data: the state is a dict of lists, numbers and bytes (the worker stores it in
a Faust table, msgpack-encoded); image embeddings are kept as int8 (1 byte per dimension).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from cased_core.options import HISTORY_POLICIES

LIVE = "live"
UPLOAD = "upload"
POLICIES = HISTORY_POLICIES

CHANGES_PER_EXCURSION = 3  # far frames start a scene at once while changes >= this x excursions
MEMORY = 2  # scenes left that a stream remembers
SHARPEN = 3.0  # a frame's vote: probabilities raised to this power, renormalised (its top name counts most)
MIN_WEIGHT = 0.15  # the newest frame's least weight in a scene's running means
ANCHOR_WEIGHT = 0.2  # the newest frame's weight in the scene's anchor embedding
FORGET = 1e-3  # votes below this are dropped, so the state stays small


@dataclass(frozen=True)
class HistoryPolicy:
    mode: str = LIVE
    similarity: float = 0.6  # a frame this close (cosine) to its scene's anchor belongs to the scene
    margin: float = 0.05  # a challenger must lead the scene's label by this much in the scene's votes
    patience: int = 1  # frames that must agree with a far frame before a wary stream changes scene
    patience_s: float = 10.0  # a far frame this long after the previous one changes scene at once
    recent: int = 10  # consistent labels kept in the history sent with each label
    names: int = 16  # names remembered for consistent naming and extra candidates

    def __post_init__(self):
        checks = [(self.mode in POLICIES, f"history policy {self.mode!r}: choose {' or '.join(POLICIES)}"),
                  (-1 <= self.similarity <= 1, f"history similarity {self.similarity}: a cosine, from -1 to 1"),
                  (0 <= self.margin <= 1, f"history margin {self.margin}: a share of the votes, from 0 to 1"),
                  (self.patience >= 1, f"history patience {self.patience}: at least 1 frame"),
                  (self.patience_s >= 0, f"history patience_s {self.patience_s}: seconds, 0 or more"),
                  (self.recent >= 1 and self.names >= 1, "history recent and names: at least 1")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass(frozen=True)
class Outcome:
    label: str  # the stream-consistent label
    history: list[str]  # recent consistent labels, newest last (this one included)
    state: dict  # the stream's new state


SameConcept = Callable[[str, str], bool]


def new_state() -> dict:
    return {"names": [], "recent": [], "current": None, "t": None,
            "scene": None,  # {"anchor": int8 bytes, "votes": {name: weight}, "frames": n}
            "held": [],  # far frames waiting for agreement: [{"anchor", "votes"}]
            "left": None,  # the scene left at once on the last frame, until the next frame settles it
            "past": [],  # scenes left before, newest last
            "changes": 0, "excursions": 0}


def canonical(name: str, names: Sequence[str], same_concept: SameConcept) -> str:
    """The name this stream already uses for the concept `name` denotes, or `name` itself."""
    for known in names:
        if known == name or same_concept(known, name):
            return known
    return name


def apply(state: dict | None, candidates: Sequence[tuple[str, float]], policy: HistoryPolicy,
          same_concept: SameConcept, embedding: np.ndarray | None = None, t: float | None = None) -> Outcome:
    """Fold one image's candidate probabilities (best first) into the stream's history.

    Args:
        state: the stream's state from the previous call (None: a new stream). Not modified.
        candidates: (name, probability) pairs, best first.
        policy: the stream's policy.
        same_concept: whether two names denote one concept.
        embedding: the image's L2-normalised embedding; without it every frame belongs to the scene.
        t: the event's time in seconds (None: unknown).

    Examples:
        >>> same = lambda a, b: False
        >>> first = apply(None, [("dog", 0.9), ("cat", 0.1)], HistoryPolicy(), same)
        >>> apply(first.state, [("cat", 0.6), ("dog", 0.4)], HistoryPolicy(), same).label
        'dog'
    """
    state = _upgrade(state or {})
    names = list(state["names"])
    votes: dict[str, float] = {}
    for name, probability in candidates:
        key = canonical(name, names, same_concept)
        votes[key] = votes.get(key, 0.0) + probability
    if policy.mode == UPLOAD:
        label = max(votes, key=votes.get)
        state.update(scene=None, held=[], left=None, past=[])
    else:
        label = _Live(state, policy).see(_sharpen(votes), _unit(embedding), t)
    state["current"], state["t"] = label, t if t is not None else state["t"]
    if label not in names:
        names.append(label)
        del names[:-policy.names]
    state["names"] = names
    state["recent"] = (list(state["recent"]) + [label])[-policy.recent:]
    return Outcome(label, list(state["recent"]), state)


class _Live:
    """One live stream's scene logic over its state dict (which it replaces parts of, never mutates)."""

    def __init__(self, state: dict, policy: HistoryPolicy):
        self.state, self.policy = state, policy
        self._vectors: dict[bytes, np.ndarray] = {}  # anchors decoded in this call

    def see(self, votes: dict[str, float], vector: np.ndarray | None, t: float | None) -> str:
        """The label after a frame with these (sharpened) votes and unit embedding (None: unknown)."""
        s = self.state
        frame = {"anchor": _quantise(vector), "votes": votes}
        scene, held, left = s["scene"], s["held"], s["left"]
        s["held"], s["left"] = [], None
        if scene is None:
            self._start([frame])
        elif self._close(vector, scene["anchor"]):
            if held:  # the far frames were an excursion
                s["excursions"] += 1
            elif left is not None:
                s["changes"] += 1
            self._join(frame, vector)
        elif left is not None and self._close(vector, left["scene"]["anchor"]):
            s["excursions"] += 1  # back to the scene left on the last frame: undo the change
            s["scene"], s["past"], s["current"] = left["scene"], left["past"], left["current"]
            self._join(frame, vector)
        elif held and self._close(vector, held[0]["anchor"]):
            held = held + [frame]
            if len(held) > self.policy.patience:
                s["changes"] += 1
                self._start(held)
            else:
                s["held"] = held
        else:
            self._far(frame, t)
        return self._label()

    def _far(self, frame: dict, t: float | None) -> None:
        s = self.state
        waited_long = t is not None and s["t"] is not None and t - s["t"] >= self.policy.patience_s
        if waited_long or s["changes"] >= CHANGES_PER_EXCURSION * s["excursions"]:
            s["left"] = {"scene": s["scene"], "past": s["past"], "current": s["current"]}
            self._start([frame])
        else:
            s["held"] = [frame]

    def _start(self, frames: list[dict]) -> None:
        """A new scene from `frames`; a remembered scene it matches comes back with its votes."""
        s = self.state
        anchors = [self._vector(f["anchor"]) for f in frames if f["anchor"] is not None]
        vector = _unit(sum(anchors)) if anchors else None
        votes = _mean([f["votes"] for f in frames])
        count = len(frames)
        past = []
        if s["scene"] is not None:
            left = self._vector(s["scene"]["anchor"])
            past = [p for p in s["past"] if not self._close(left, p["anchor"])]
            past = (past + [s["scene"]])[-MEMORY:]
        match = max(past, key=lambda p: self._cosine(vector, p["anchor"]), default=None)
        if match is not None and self._close(vector, match["anchor"]):
            past = [p for p in past if p is not match]
            total = match["frames"] + count
            scene = {"anchor": match["anchor"], "votes": _mix(match["votes"], votes, count / total), "frames": total}
        else:
            scene = {"anchor": _quantise(vector), "votes": votes, "frames": count}
        s["scene"], s["past"] = scene, past
        s["current"] = None  # the new scene's own leader, not the old label, names it

    def _join(self, frame: dict, vector: np.ndarray | None) -> None:
        scene = self.state["scene"]
        count = scene["frames"] + 1
        anchor = scene["anchor"]
        if anchor is not None and vector is not None:
            anchor = _quantise((1 - ANCHOR_WEIGHT) * self._vector(anchor) + ANCHOR_WEIGHT * vector)
        self.state["scene"] = {"anchor": anchor, "frames": count,
                               "votes": _mix(scene["votes"], frame["votes"], max(1.0 / count, MIN_WEIGHT))}

    def _label(self) -> str:
        votes, current = self.state["scene"]["votes"], self.state["current"]
        leader = max(votes, key=votes.get)
        if current is None or votes[leader] - votes.get(current, 0.0) > self.policy.margin:
            return leader
        return current

    def _vector(self, anchor: bytes | None) -> np.ndarray | None:
        if anchor is None:
            return None
        if anchor not in self._vectors:
            self._vectors[anchor] = _unit(np.frombuffer(anchor, np.int8))
        return self._vectors[anchor]

    def _cosine(self, vector: np.ndarray | None, anchor: bytes | None) -> float:
        """1 when either is unknown: without embeddings every frame is the scene's."""
        other = self._vector(anchor)
        if vector is None or other is None or len(vector) != len(other):
            return 1.0
        return float(vector @ other)

    def _close(self, vector: np.ndarray | None, anchor: bytes | None) -> bool:
        return self._cosine(vector, anchor) >= self.policy.similarity


def _sharpen(votes: dict[str, float]) -> dict[str, float]:
    top = max(votes.values())
    if top <= 0:
        return {name: 1.0 / len(votes) for name in votes}
    powered = {name: (p / top) ** SHARPEN for name, p in votes.items()}
    total = sum(powered.values())
    return {name: p / total for name, p in powered.items() if p / total >= FORGET}


def _mix(old: dict[str, float], new: dict[str, float], weight: float) -> dict[str, float]:
    mixed = {name: (1 - weight) * old.get(name, 0.0) + weight * new.get(name, 0.0) for name in {*old, *new}}
    return {name: v for name, v in mixed.items() if v >= FORGET}


def _mean(many: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for votes in many:
        for name, v in votes.items():
            out[name] = out.get(name, 0.0) + v / len(many)
    return out


def _unit(v: np.ndarray | None) -> np.ndarray | None:
    if v is None:
        return None
    v = np.asarray(v, np.float32).reshape(-1)
    return v / max(float(np.sqrt(v @ v)), 1e-12)


def _quantise(unit: np.ndarray | None) -> bytes | None:
    # Every coordinate of a unit vector is within [-1, 1]: x127 fits int8 without clipping.
    return None if unit is None else np.rint(unit * 127.0).astype(np.int8).tobytes()


def _upgrade(state: dict) -> dict:
    """A state written by an earlier version (names and recent labels only) continues from here."""
    return {key: state.get(key, default) for key, default in new_state().items()}
