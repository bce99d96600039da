import json
import subprocess
import sys

import pytest

from workers.cli import main
from workers.settings import Settings


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_classify_the_bundled_samples(capsys):
    code, out, _ = run(capsys, "classify", "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) >= 10
    correct = sum(row["label"] in row["path"] for row in rows)  # sample files are named after their shape
    assert correct >= 0.7 * len(rows)
    assert all(0 < row["score"] <= 1 and row["candidates"][0][0] == row["label"] for row in rows)


def test_classify_errors_name_the_problem(capsys, tmp_path):
    code, _, err = run(capsys, "classify", str(tmp_path / "missing.png"))
    assert code == 2 and "missing.png: no such file" in err
    (tmp_path / "fake.png").write_text("not an image")
    code, _, err = run(capsys, "classify", str(tmp_path / "fake.png"))
    assert code == 2 and "not a readable image" in err
    code, _, err = run(capsys, "classify", "--mode", "vocabulary")
    assert code == 2 and "--vocabulary" in err
    code, _, err = run(capsys, "classify", "--database", str(tmp_path / "nodb"))
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "classify", "--model", "ViT-Nope-1")
    assert code == 2 and "unknown model" in err


def test_db_build_and_info(capsys, tmp_path, caption_file):
    out_dir = tmp_path / "db"
    code, out, _ = run(capsys, "db", "build", str(caption_file), "--out", str(out_dir))
    assert code == 0 and json.loads(out)["count"] > 100
    code, out, _ = run(capsys, "db", "info", str(out_dir))
    info = json.loads(out)
    assert code == 0 and info["index"]["factory"] == "Flat" and info["model"].startswith("tiny@")


def test_eval_json_keys(capsys, tmp_path):
    from cased_core.tinyworld import write_dataset

    write_dataset(tmp_path / "ds", per_category=2, seed=99)
    code, out, _ = run(capsys, "eval", str(tmp_path / "ds"), "--json", "--methods", "cased", "closest-caption",
                       "clip-true-names")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["method"] for r in rows] == ["cased", "closest-caption", "clip-true-names"]
    for row in rows:
        assert {"method", "cluster_accuracy", "semantic_similarity", "semantic_iou"} <= set(row)
        assert 0 <= row["cluster_accuracy"] <= 1 and 0 <= row["semantic_iou"] <= 1


def test_eval_stream_scores_raw_and_consistent_labels(capsys):
    code, out, _ = run(capsys, "eval", "stream", "--streams", "1", "--scenarios", "cut", "gaps", "--json")
    assert code == 0
    figures = json.loads(out)
    assert set(figures["scenarios"]) == {"cut", "gaps"}
    assert set(figures["overall"]) == {"raw", "consistent", "hindsight"}
    for kind in ("raw", "consistent"):
        overall = figures["overall"][kind]
        assert overall["streams"] == 2 and overall["frames"] == 96 and 0 < overall["accuracy"] <= 1
        assert overall["changes_followed"].endswith("/6")  # 3 cuts in each of the two streams
    # the gaps' unreadable frames are dead-lettered: no label, no switch, no truth
    assert figures["scenarios"]["gaps"]["raw"]["frames"] == 48
    code, out, _ = run(capsys, "eval", "stream", "--streams", "1", "--scenarios", "cut")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["scenario", "labels", "accuracy"]


def test_stream_tools_name_a_bad_argument_in_one_line(capsys):
    code, _, err = run(capsys, "eval", "stream", "--streams", "0")
    assert code == 2 and err.strip() == "cased: error: eval stream needs at least 1 stream per scenario " \
                                        "(--streams) and 1 scenario"
    code, _, err = run(capsys, "bench", "stream", "--sizes", "640by480")
    assert code == 2 and "frame size '640by480': expected WIDTHxHEIGHT" in err and len(err.strip().splitlines()) == 1


def test_bench_core_prints_and_writes_its_figures(capsys, tmp_path):
    out_file = tmp_path / "core.json"
    code, out, _ = run(capsys, "bench", "core", "--model", "tiny", "--entries", "3000", "--images", "32",
                       "--batch-size", "16", "--reference-images", "2", "--work-dir", str(tmp_path / "w"),
                       "--out", str(out_file), "--json")
    assert code == 0
    figures = json.loads(out)
    assert figures == json.loads(out_file.read_text())
    for key in ("encode_images_per_s", "classify_images_per_s", "classify_to_encode",
                "reference_style_images_per_s", "speedup_vs_reference", "stage_ms_per_image"):
        assert figures[key], key
    assert figures["database_entries"] == 3000 and figures["term_encodes_in_steady_state"] == 0


def test_settings_from_environment():
    settings = Settings.from_env({"CASED_MODEL": "ViT-L-14", "CASED_PRETRAINED": "openai", "CASED_K": "20"})
    assert (settings.model, settings.pretrained, settings.k) == ("ViT-L-14", "openai", 20)
    with pytest.raises(ValueError, match="CASED_K='many' is not a valid int"):
        Settings.from_env({"CASED_K": "many"})


def test_console_script_reports_bad_environment():
    result = subprocess.run([sys.executable, "-m", "workers.cli", "db", "info", "tiny"], capture_output=True,
                            text=True, env={"CASED_ALPHA": "high", "PATH": ""})
    assert result.returncode == 2 and "CASED_ALPHA='high'" in result.stderr
