"""Per-stream output history: one name per concept, and for live streams a label that follows scenes.

The reference classifies every image alone, so a camera's label flickers: between near-synonyms, and
on frames where something else passes, the light changes or the picture blurs. A stream's history,
applied in event order, keeps:

- consistent naming: a concept keeps the first name the stream used for it (same WordNet synset, or
  text embeddings closer than a threshold); the names used so far join the candidate set of the
  stream's next images. `upload` streams get this only;
- for live streams, the current *scene*: the running mean of its frames' image embeddings (the
  anchor) and of their candidate probabilities (the votes, each frame's sharpened so that a frame's
  top name counts most). A frame whose embedding is within `similarity` (cosine) of the anchor
  belongs to the scene, however its own top name reads, so near-tie frames and noise are outvoted.
  The label is the scene's leading name, kept until a challenger leads it by `margin`;
- a *far* frame (below `similarity`) is either a change of scene or something passing (a frame or
  two of something else, then the scene again). Two live policies decide which:
  - `steady` (the default): a change must be confirmed. A far frame keeps the label until `patience`
    later far frames are as close to it as a still camera's frames are to one another (`stillness`)
    and name the same thing (twice as many when the far frame still looks partly like the scene);
    something moving through the view is never still, so it never confirms a change, and a lone far
    frame changes nothing. Within a scene the votes remember about 20 frames
    and a challenger must lead by the margin plus what noise over the frames behind the votes could
    make (SIGNIFICANCE / sqrt(frames)), so a scene between two names keeps one. A frame that shows a
    scene the stream left (as closely as RETURN_AT, or closer than the present scene) brings it back
    at once;
  - `fast`: a far frame is followed at once (lag 0 after a cut) while the stream's changes outnumber
    the far frames that turned out to be excursions `CHANGES_PER_EXCURSION` to one (a new stream
    too); an excursion is undone on the next frame; a stream that has shown excursions waits for
    `patience` frames close to the far one;
  under both, a far frame that comes `patience_s` seconds or more after the previous one starts a new
  scene at once: the scene had time to change, and waiting would hold a wrong label for as long
  again;
- the last scenes left (`MEMORY`), so a scene that comes back gets its votes back.

Pure logic over plain data: the state is a dict of lists, numbers and bytes (the worker stores it in
a Faust table, msgpack-encoded); image embeddings are kept as int8 (1 byte per dimension).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from cased_core.bounds import Bounds, check_bounds
from cased_core.options import HISTORY_POLICIES

STEADY, FAST, UPLOAD = HISTORY_POLICIES
POLICIES = HISTORY_POLICIES

CHANGES_PER_EXCURSION = 3  # far frames start a scene at once while changes >= this x excursions
MEMORY = 2  # scenes left that a stream remembers
SHARPEN = 3.0  # a frame's vote: probabilities raised to this power, renormalised (its top name counts most)
# The newest frame's least weight in a scene's votes: fast remembers about 7 frames, steady about 20, so
# that a run of frames naming something else within one scene (a near-tie scene, something passing by)
# moves its label only when it lasts.
MIN_WEIGHT = {FAST: 0.15, STEADY: 0.05}
ANCHOR_WEIGHT = 0.2  # the newest frame's weight in the scene's anchor embedding
RETURN_AT = 0.95  # steady: a frame this close (cosine) to a scene the stream left brings it back at once
MIDDLE = 0.5  # steady: a far frame this close (cosine) to its scene's anchor still shows it: twice the patience
SIGNIFICANCE = 1.0  # steady: a challenger's lead beyond the margin, over sqrt(frames behind the votes)
FORGET = 1e-3  # votes below this are dropped, so the state stays small


BOUNDS: Bounds = {"similarity": (-1, 1, "a cosine"), "margin": (0, 1, "a share of the votes"),
                  "patience": (1, None, "frames"), "patience_s": (0, None, "seconds"),
                  "stillness": (-1, 1, "a cosine"), "recent": (1, None, "labels"), "names": (1, None, "names")}


@dataclass(frozen=True)
class HistoryPolicy:
    mode: str = STEADY
    similarity: float = 0.6  # a frame this close (cosine) to its scene's anchor belongs to the scene
    margin: float = 0.05  # a challenger must lead the scene's label by this much in the scene's votes
    patience: int = 1  # frames that must confirm a far frame (steady; fast once wary) before the label changes
    patience_s: float = 10.0  # a far frame this long after the previous one changes scene at once
    stillness: float = 0.85  # steady: frames confirming a change are this close (cosine) to the first far one
    recent: int = 10  # consistent labels kept in the history sent with each label
    names: int = 16  # names remembered for consistent naming and extra candidates

    def __post_init__(self):
        if self.mode not in POLICIES:
            raise ValueError(f"history policy {self.mode!r}: choose {' or '.join(POLICIES)}")
        check_bounds("history", self, BOUNDS)


@dataclass(frozen=True)
class Outcome:
    label: str  # the stream-consistent label
    history: list[str]  # recent consistent labels, newest last (this one included)
    state: dict  # the stream's new state


SameConcept = Callable[[str, str], bool]


def new_state() -> dict:
    return {"names": [], "recent": [], "current": None, "t": None,
            "scene": None,  # {"anchor": int8 bytes, "votes": {name: weight}, "frames": n}
            "held": [],  # far frames waiting for confirmation: [{"anchor", "votes"}]
            "left": None,  # the scene left at once on the last frame, until the next frame settles it
            "past": [],  # scenes left before, newest last
            "changes": 0, "excursions": 0}


def names(state: dict | None) -> list[str]:
    """The names a stream used so far (None: a new stream's, none): extra candidates for its images."""
    return list((state or {}).get("names", []))


def current(state: dict | None) -> str | None:
    """The stream's consistent label now (None: a new stream)."""
    return None if state is None else state.get("current")


def canonical(name: str, names: Sequence[str], same_concept: SameConcept) -> str:
    """The name this stream already uses for the concept `name` denotes, or `name` itself."""
    for known in names:
        if known == name or same_concept(known, name):
            return known
    return name


def apply(state: dict | None, candidates: Sequence[tuple[str, float]], policy: HistoryPolicy,
          same_concept: SameConcept, embedding: np.ndarray | None = None, t: float | None = None,
          repeated: bool = False) -> Outcome:
    """Fold one image's candidate probabilities (best first) into the stream's history.

    Args:
        state: the stream's state from the previous call (None: a new stream). Not modified.
        candidates: (name, probability) pairs, best first.
        policy: the stream's policy.
        same_concept: whether two names denote one concept.
        embedding: the image's L2-normalised embedding; without it every frame belongs to the scene.
        t: the event's time in seconds (None: unknown).
        repeated: the frame repeats an earlier frame's result (cased_core.method.gate found it unchanged): no
            new evidence, so the label stays and no pending change is confirmed by it (a copy is
            perfectly still, and would confirm whatever the earlier frame showed).

    Examples:
        >>> same = lambda a, b: False
        >>> first = apply(None, [("dog", 0.9), ("cat", 0.1)], HistoryPolicy(), same)
        >>> apply(first.state, [("cat", 0.6), ("dog", 0.4)], HistoryPolicy(), same).label
        'dog'
    """
    state = _upgrade(state or {})
    if repeated and state["current"] is not None:
        state["t"] = t if t is not None else state["t"]
        state["recent"] = (list(state["recent"]) + [state["current"]])[-policy.recent:]
        return Outcome(state["current"], list(state["recent"]), state)
    names = list(state["names"])
    votes: dict[str, float] = {}
    for name, probability in candidates:
        key = canonical(name, names, same_concept)
        votes[key] = votes.get(key, 0.0) + probability
    if policy.mode == UPLOAD:
        label = max(votes, key=votes.get)
        state.update(scene=None, held=[], left=None, past=[])
    else:
        label = _Live(state, policy, same_concept).see(_sharpen(votes), _unit(embedding), t)
    state["current"], state["t"] = label, t if t is not None else state["t"]
    if label not in names:
        names.append(label)
        del names[:-policy.names]
    state["names"] = names
    state["recent"] = (list(state["recent"]) + [label])[-policy.recent:]
    return Outcome(label, list(state["recent"]), state)


class _Live:
    """One live stream's scene logic over its state dict (which it replaces parts of, never mutates)."""

    def __init__(self, state: dict, policy: HistoryPolicy, same_concept: SameConcept):
        self.state, self.policy, self.same_concept = state, policy, same_concept
        self.steady = policy.mode == STEADY
        self._vectors: dict[bytes, np.ndarray] = {}  # anchors decoded in this call

    def see(self, votes: dict[str, float], vector: np.ndarray | None, t: float | None) -> str:
        """The label after a frame with these (sharpened) votes and unit embedding (None: unknown)."""
        s = self.state
        frame = {"anchor": _quantise(vector), "votes": votes}
        scene, held, left = s["scene"], s["held"], s["left"]
        s["held"], s["left"] = [], None
        if scene is None:
            self._start([frame])
        elif self.steady and self._returns(vector, scene["anchor"]):
            s["changes"] += 1
            self._start([frame])  # the remembered scene, with its votes
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
        elif self.steady:
            self._steady_far(frame, vector, held, t)
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

    def _steady_far(self, frame: dict, vector: np.ndarray | None, held: list[dict], t: float | None) -> None:
        """Steady: a far frame changes the scene once `patience` of the far frames held before it (the
        last 2 x patience + 1) are as close to it as a still camera's frames are (`stillness`) and they
        name one thing; twice `patience` when it still looks partly like the scene (MIDDLE). A frame of
        something passing (moving, so never still) or one in between (a near-tie frame of the new scene)
        changes nothing alone."""
        s = self.state
        if self._waited_long(t):
            s["left"] = {"scene": s["scene"], "past": s["past"], "current": s["current"]}
            self._start([frame])
            return
        group = [f for f in held if self._cosine(vector, f["anchor"]) >= self.policy.stillness] + [frame]
        needed = self.policy.patience * (2 if self._cosine(vector, s["scene"]["anchor"]) >= MIDDLE else 1)
        if len(group) > needed and self._agree(group):
            s["changes"] += 1
            self._start(group)
        else:
            s["held"] = (held + [frame])[-(2 * self.policy.patience + 1):]

    def _agree(self, group: list[dict]) -> bool:
        """Whether still far frames name one thing: the last `patience` + 1 of them have one top name (a
        scene whose frames keep two names is taken once twice as many frames hold still)."""
        patience = self.policy.patience
        if len(group) >= 2 * (patience + 1):
            return True
        tops = [max(f["votes"], key=f["votes"].get) for f in group[-(patience + 1):]]
        return all(top == tops[0] or self.same_concept(top, tops[0]) for top in tops[1:])

    def _returns(self, vector: np.ndarray | None, anchor: bytes | None) -> bool:
        """Steady: whether a frame that belongs to the present scene shows a scene the stream left even
        better, as closely as a still camera's frames are alike: far frames that showed something passing
        over the scene left confirmed a scene of their own, and the scene left is back."""
        if not self.state["past"]:
            return False
        present = self._cosine(vector, anchor)
        best = max(self._cosine(vector, p["anchor"]) for p in self.state["past"])
        if present < self.policy.similarity:
            return best >= RETURN_AT
        return best >= self.policy.stillness and best > present

    def _waited_long(self, t: float | None) -> bool:
        return t is not None and self.state["t"] is not None and t - self.state["t"] >= self.policy.patience_s

    def _far(self, frame: dict, t: float | None) -> None:
        s = self.state
        if self._waited_long(t) or s["changes"] >= CHANGES_PER_EXCURSION * s["excursions"]:
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
        weight = max(1.0 / count, MIN_WEIGHT[self.policy.mode])
        self.state["scene"] = {"anchor": anchor, "frames": count, "votes": _mix(scene["votes"], frame["votes"], weight)}

    def _label(self) -> str:
        scene, current = self.state["scene"], self.state["current"]
        votes = scene["votes"]
        leader = max(votes, key=votes.get)
        needed = self.policy.margin
        if self.steady:  # a lead that noise over the frames behind the votes could not make
            needed += SIGNIFICANCE / math.sqrt(min(scene["frames"], 1.0 / MIN_WEIGHT[STEADY]))
        if current is None or votes[leader] - votes.get(current, 0.0) > needed:
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
