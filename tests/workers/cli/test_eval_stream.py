import io

from cased_core.evaluation.stream_metrics import Frame
from cased_core.tinyworld.cameras import generate
from workers.cli.eval_stream import COLD_STARTS, eval_stream, hindsight, table

SYNONYMS = {frozenset({"moon", "crescent"})}


def same(a, b):
    return frozenset({a, b}) in SYNONYMS
def test_hindsight_gives_each_true_segment_its_most_common_raw_label():
    truth = ["star"] * 4 + [None] + ["moon"] * 5 + ["star"] * 2
    raw = ["star", "heart", "star", "heart", None, "crescent", "orange", "moon", "orange", "orange", "heart", "star"]
    frames = [Frame(float(i), c, r) for i, (c, r) in enumerate(zip(truth, raw))]
    labels = [f.label for f in hindsight(frames, same)]
    # star 2 : heart 2 -> the first counted; moon + crescent 2 : orange 3; the gap keeps no label;
    # the star after the moon is its own segment (1 : 1 -> the first)
    assert labels == ["star"] * 4 + [None] + ["orange"] * 5 + ["heart"] * 2
    assert [f.concept for f in hindsight(frames, same)] == truth


def test_synonyms_vote_together_and_the_first_name_counts():
    frames = [Frame(0, "moon", "crescent"), Frame(1, "moon", "orange"), Frame(2, "moon", "moon")]
    assert [f.label for f in hindsight(frames, same)] == ["crescent"] * 3


def test_a_segment_split_by_a_gap_is_one_segment():
    frames = [Frame(0, "star", "star"), Frame(1, None, None), Frame(2, "star", "heart"), Frame(3, "star", "star")]
    assert [f.label for f in hindsight(frames, same)] == ["star", None, "star", "star"]


def test_both_sets_and_both_live_policies_run_through_the_worker_pipeline():
    """Short streams of two realistic and two stress scenarios through the real pipeline (tiny model):
    every camera runs once per policy, uploads once; raw and hindsight rows come with each policy's."""
    from workers.pipeline import Pipeline
    from workers.settings import Settings

    progress = io.StringIO()
    figures = eval_stream(Pipeline.init(Settings()), streams_per_scenario=1, seed=3, scale=0.02,
                          scenarios=["quiet", "cold_start", "near_tie", "upload"], progress=progress)
    assert figures["policies"] == ["steady", "fast"] and set(figures["sets"]) == {"realistic", "stress"}
    realistic, stress = figures["sets"]["realistic"], figures["sets"]["stress"]
    assert set(realistic["scenarios"]) == {"quiet", "cold_start"} and set(stress["scenarios"]) == {"near_tie", "upload"}
    for per_set in (realistic, stress):
        for rows in [*per_set["scenarios"].values(), per_set["overall"]]:
            assert set(rows) == {"raw", "hindsight", "steady", "fast"}
        assert 0.9 <= per_set["raw_same_in_every_run"] <= 1
    quiet = generate("quiet", 1, seed=3, scale=0.02)[0]
    assert realistic["scenarios"]["quiet"]["steady"]["frames"] == len(quiet.frames)
    assert realistic["scenarios"]["cold_start"]["raw"]["streams"] == COLD_STARTS
    upload = stress["scenarios"]["upload"]
    assert upload["steady"] == upload["fast"]  # uploads run once, with their own policy
    total = sum(r["raw"]["frames"] for r in realistic["scenarios"].values()) * 2 + \
        stress["scenarios"]["near_tie"]["raw"]["frames"] * 2 + upload["raw"]["frames"]
    assert progress.getvalue().splitlines()[-1].startswith(f"eval stream: {total:,} of {total:,} frames labelled")
    lines = table(figures).splitlines()
    assert lines[0].split()[:4] == ["set", "scenario", "labels", "accuracy"] and len(lines) == 1 + 4 * (3 + 3)


def test_the_gate_s_share_of_frames_and_the_ungated_rows():
    """Fixed cameras run gated as a worker serves them and, compared, with the gate off: the ungated rows
    never reuse a frame, the gated ones reuse most of a quiet camera's, and uploads are never gated."""
    from workers.pipeline import Pipeline
    from workers.settings import Settings

    figures = eval_stream(Pipeline.init(Settings()), streams_per_scenario=1, seed=3, scale=0.05,
                          scenarios=["quiet", "upload"], policies=["steady"], compare_gate=True)
    quiet = figures["sets"]["realistic"]["scenarios"]["quiet"]
    assert set(quiet) == {"raw", "hindsight", "steady", "steady ungated"} and figures["compare_gate"]
    assert quiet["steady ungated"]["gated"] == 0 and quiet["steady"]["gated"] > 0.5
    assert quiet["steady"]["frames"] == quiet["steady ungated"]["frames"]
    assert figures["sets"]["stress"]["scenarios"]["upload"]["steady"]["gated"] == 0
    assert figures["sets"]["realistic"]["overall"]["steady"]["gated"] == quiet["steady"]["gated"]
    assert "gated" in table(figures).splitlines()[0] and "steady ungated" in table(figures)
