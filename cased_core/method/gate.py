"""A per-stream change gate: a frame that shows what the stream's last classified frame showed reuses
that frame's result instead of running the model, search and scoring again.

Fixed cameras hold one scene for minutes or hours; classifying each frame pays one image forward for
nothing. As NoScope and Reducto do, a frame is compared cheaply with the last frame of its stream that
was classified (the *reference*), on a tiny grayscale thumbnail (`thumbnail`: THUMB cells, each the
mean of its block of pixels), normalised for brightness and contrast so that lighting drift is not a
change (`difference`: the mean absolute difference of the two normalised thumbnails; about 1.1 for
unrelated frames, a few hundredths for sensor noise).

The threshold adapts per stream (Reducto's lesson: static thresholds fail): FACTOR times the stream's
own frame-to-frame noise (a running mean of consecutive frames' differences, robust to cuts), times a
`scale` the model's answers tune: a frame classified because it looked changed while the model saw the
same thing (its embedding within SAME of the reference's) raises the scale; a frame classified only
because `max_frames` or `max_s` came round, whose embedding moved away (below MOVED), lowers it.
The reference is the last *classified* frame, so slow drift cannot add up unseen, and a frame is
classified at least every `max_frames` frames or `max_s` seconds of event time whatever. The frame
after a stream's first or after a change is classified too ("confirm"): a history that waits for a
second frame to confirm a change (cased_core.method.history's steady policy) must get a second look, not a
copy of the first (a reused result is perfectly still, which would confirm a passer-by); while the
looks after a change disagree on the label, a few more frames are classified. A new
stream's first COLD_START frames are all classified ("cold"): one early guess repeated would be all
its history ever heard until the next refresh.

Pure logic over plain data: the state is a dict of numbers and bytes (the worker keeps it with the
stream's history, so it follows the stream across rebalances and replays identically).

Examples:
    >>> import numpy as np
    >>> flat = thumbnail(np.full((240, 320), 100, np.uint8))
    >>> policy = GatePolicy()
    >>> wall = {"label": "wall", "score": 0.9, "candidates": [["wall", 0.9]], "embedding": None}
    >>> state, seen = None, []
    >>> for n in range(5):   # a new stream: its first frames are classified
    ...     why, state = decide(state, flat, n * 0.5, policy)
    ...     state = classified(state, f"e{n}", wall, why, None)
    ...     seen.append(why)
    >>> seen
    ['first', 'confirm', 'cold', 'cold', 'cold']
    >>> decide(state, flat, 2.5, policy)[0] is None     # nothing changed: the last result is reused
    True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cased_core.bounds import Bounds, check_bounds

THUMB = (24, 32)  # rows, columns of a thumbnail: 768 bytes
FACTOR = 4.0  # the threshold over the stream's frame-to-frame noise
NOISE_START = 0.03  # a new stream's noise, until it has shown its own
NOISE_WEIGHT = 0.1  # a new frame's weight in the running noise
MIN_THRESHOLD = 0.06  # never gate on less (a frame of a flat wall has no noise to measure)
MAX_THRESHOLD = 0.5  # never gate on more: unrelated frames differ by about 1.1
SCALE_RANGE = (0.5, 4.0)
SAME = 0.97  # cosine of two frames' embeddings above which the model saw nothing new
MOVED = 0.9  # ... below which it saw something the gate missed
COLD_START = 5  # a new stream's first frames are all classified: its history learns the scene from them
MORE_LOOKS = 5  # frames classified at most after a change's second look while the looks disagree


BOUNDS: Bounds = {"max_frames": (1, None, "frames"), "max_s": (0, None, "seconds")}


@dataclass(frozen=True)
class GatePolicy:
    """max_frames: classify at least every this many frames of a stream (1: every frame, no gate);
    max_s: ... or when this many seconds of event time passed since its reference."""
    max_frames: int = 30
    max_s: float = 10.0

    def __post_init__(self):
        check_bounds("gate", self, BOUNDS)


def thumbnail(gray: np.ndarray) -> bytes:
    """A grayscale image (2-D uint8, at least THUMB) as THUMB block means, uint8 bytes."""
    rows, cols = THUMB
    height, width = gray.shape
    if height < rows or width < cols:
        gray = np.kron(gray, np.ones((-(-rows // height), -(-cols // width)), np.uint8))
        height, width = gray.shape
    # Block edges spread evenly over the image; each cell is the mean of its block.
    ys, xs = np.linspace(0, height, rows + 1).astype(int), np.linspace(0, width, cols + 1).astype(int)
    sums = np.add.reduceat(np.add.reduceat(gray.astype(np.float32), ys[:-1], axis=0), xs[:-1], axis=1)
    counts = np.outer(np.diff(ys), np.diff(xs))
    return np.rint(sums / counts).astype(np.uint8).tobytes()


def difference(a: bytes, b: bytes) -> float:
    """How much two thumbnails differ once brightness and contrast are set aside: the mean absolute
    difference of their standardised cells."""
    x, y = (_standard(np.frombuffer(t, np.uint8)) for t in (a, b))
    return float(np.mean(np.abs(x - y)))


def decide(state: dict | None, thumb: bytes, t: float | None, policy: GatePolicy) -> tuple[str | None, dict]:
    """Why this frame must be classified ("first", "cold", "changed", "confirm" or "due"), or None when the reference's
    result is its result; and the stream's state after it. A classified frame becomes the reference
    at once (a later frame compares with it); its result comes with `classified`.

    Args:
        state: the stream's gate state (None: a new stream). Not modified.
        thumb: the frame's thumbnail.
        t: the frame's event time in seconds (None: unknown).
        policy: when a classification is due whatever the thumbnails say.
    """
    if state is None:
        return "first", _referenced({"noise": NOISE_START, "scale": 1.0, "event": None, "result": None, "seen": 0},
                                    thumb, t, "first")
    state = dict(state)
    step = difference(thumb, state["prev"])
    # Robust: a cut counts as at most a few times the noise, so one cut does not open the gate wide.
    state["noise"] += NOISE_WEIGHT * (min(step, 3 * state["noise"] + 0.01) - state["noise"])
    state["prev"] = thumb
    if difference(thumb, state["ref"]) > threshold(state):
        return "changed", _referenced(state, thumb, t, "changed")
    if state.get("confirm"):
        return "confirm", _referenced(state, thumb, t, "confirm")
    if state.get("seen", COLD_START) < COLD_START:
        return "cold", _referenced(state, thumb, t, "cold")
    due = state["frames"] + 1 >= policy.max_frames or \
        (t is not None and state["t"] is not None and t - state["t"] >= policy.max_s)
    if due:
        return "due", _referenced(state, thumb, t, "due")
    state["frames"] += 1
    return None, state


def classified(state: dict, event_id: str, result: dict[str, Any], why: str, before: dict | None) -> dict:
    """The state once a frame `decide` sent to the model for `why` was classified: its event and
    result (label, score, candidates, embedding as int8 bytes or None) are the reference's from now on,
    and the scale is tuned by what the model saw against the reference before it (`before`'s result)."""
    state = dict(state)
    if before is not None and before.get("embedding") and result.get("embedding"):
        cosine = _cosine(before["embedding"], result["embedding"])
        low, high = SCALE_RANGE
        if why == "changed" and cosine >= SAME:  # it looked changed, the model saw the same: gate more
            state["scale"] = min(high, state["scale"] * 1.25)
        elif why == "due" and cosine < MOVED:  # the model saw a change the gate missed: gate less
            state["scale"] = max(low, state["scale"] * 0.7)
    if why == "confirm" and before is not None and before.get("label") != result.get("label") \
            and state.get("looks", 0) < MORE_LOOKS:
        # The two looks after a change disagree (a cut's first frame is often a blend of both scenes):
        # the scene is still settling, and a history waiting for two frames naming the same thing
        # would otherwise wait for the next refresh. Look again, a few times at most.
        state.update(confirm=True, looks=state.get("looks", 0) + 1)
    state.update(event=event_id, result=result)
    return state


def threshold(state: dict) -> float:
    return float(np.clip(FACTOR * state["noise"] * state["scale"], MIN_THRESHOLD, MAX_THRESHOLD))


def pack_embedding(vector: np.ndarray) -> bytes:
    """An embedding as unit-vector int8 bytes (1 byte a dimension; every coordinate fits x127)."""
    vector = np.asarray(vector, np.float32).reshape(-1)
    return np.rint(vector / max(float(np.linalg.norm(vector)), 1e-12) * 127.0).astype(np.int8).tobytes()


def unpack_embedding(packed: bytes) -> np.ndarray:
    vector = np.frombuffer(packed, np.int8).astype(np.float32)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _referenced(state: dict, thumb: bytes, t: float | None, why: str) -> dict:
    changed = why in ("first", "changed")
    return {**state, "ref": thumb, "prev": thumb, "t": t, "frames": 0, "confirm": changed,
            "looks": 0 if changed else state.get("looks", 0), "seen": state.get("seen", COLD_START) + 1}


def _standard(cells: np.ndarray) -> np.ndarray:
    cells = cells.astype(np.float32)
    return (cells - cells.mean()) / max(float(cells.std()), 4.0)  # a flat frame's few grey levels are no contrast


def _cosine(a: bytes, b: bytes) -> float:
    x, y = unpack_embedding(a), unpack_embedding(b)
    return float(x @ y) if len(x) == len(y) else 0.0
