import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer

from workers.cli.commands import main
from topics import events as ev
from tests.workers.helpers import PARTITIONS, TOPICS, collect
from workers.clients import TOPIC_WAIT_S, bootstrap, ensure_topics, producer
from workers.cli.broker import free_port
from workers.settings import Settings

SAMPLES = Path(__file__).resolve().parents[3] / "cased_core" / "data" / "samples"


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
    code, _, err = run(capsys, "classify", "--mode", "vocabulary")
    assert code == 2 and "--vocabulary" in err
    code, _, err = run(capsys, "classify", "--mode", "vocabulary", "--vocabulary", str(tmp_path / "missing.txt"))
    assert code == 2 and err.strip() == f"cased: error: --vocabulary {tmp_path / 'missing.txt'}: no such file; " \
                                        "give wordnet, english, or a text file with one name a line"
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
    from cased_core.tinyworld.world import write_dataset

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
    code, out, err = run(capsys, "eval", "stream", "--streams", "1", "--scenarios", "cut", "gaps", "--json")
    assert code == 0 and "frames labelled (100%)" in err  # progress on stderr, the figures alone on stdout
    stress = json.loads(out)["sets"]["stress"]
    assert set(stress["scenarios"]) == {"cut", "gaps"}
    assert set(stress["overall"]) == {"raw", "hindsight", "steady", "fast"}
    for kind in ("raw", "steady", "fast"):
        overall = stress["overall"][kind]
        assert overall["streams"] == 2 and overall["frames"] == 96 and 0 < overall["accuracy"] <= 1
        followed = int(overall["changes_followed"].split("/")[1])
        assert followed + overall["changes_unrecognised"] == 6  # 3 cuts in each of the two streams
    # the gaps' unreadable frames are dead-lettered: no label, no switch, no truth
    assert stress["scenarios"]["gaps"]["raw"]["frames"] == 48
    code, out, _ = run(capsys, "eval", "stream", "--streams", "1", "--scenarios", "cut", "--policies", "steady")
    assert code == 0 and out.splitlines()[0].split()[:4] == ["set", "scenario", "labels", "accuracy"]
    assert [line.split()[2] for line in out.splitlines()[1:4]] == ["raw", "hindsight", "steady"]


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
    with pytest.raises(ValueError, match="CASED_K='many': not a valid int"):
        Settings.from_env({"CASED_K": "many"})


def test_console_script_reports_bad_environment():
    result = subprocess.run([sys.executable, "-m", "workers.cli", "db", "info", "tiny"], capture_output=True,
                            text=True, env={"CASED_ALPHA": "high", "PATH": ""})
    assert result.returncode == 2 and "CASED_ALPHA='high'" in result.stderr


def test_classify_labels_what_it_can_and_names_each_file_it_cannot(capsys, tmp_path):
    for name in ("star.png", "moon.png"):
        (tmp_path / name).write_bytes((SAMPLES / name).read_bytes())
    (tmp_path / "fake.png").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    code, out, err = run(capsys, "classify", "--json", str(tmp_path))
    assert code == 2
    assert sorted(json.loads(line)["path"] for line in out.splitlines()) == \
        [str(tmp_path / "moon.png"), str(tmp_path / "star.png")]
    lines = err.strip().splitlines()
    assert len(lines) == 3 and "Traceback" not in err
    assert lines[0].startswith(f"cased: {tmp_path / 'empty.jpg'}: not classified: ")
    assert lines[1].startswith(f"cased: {tmp_path / 'fake.png'}: not classified: not an image")
    assert lines[2] == "cased: error: 2 of 4 files could not be classified (see above)"


@pytest.mark.parametrize("argv, env, message", [
    (["classify", "--k", "0"], {}, "cased classify: error: argument --k: 0: must be at least 1 "
                                   "(see cased classify --help)"),
    (["classify", "--alpha", "2"], {}, "cased classify: error: argument --alpha: 2.0: must be at most 1 "
                                       "(see cased classify --help)"),
    (["classify"], {"CASED_K": "0"}, "cased: error: k 0: must be at least 1 (set with CASED_K or --k)"),
    (["worker", "--broker", "http://kafka:9092"], {}, "cased worker: error: argument --broker: "
     "'http://kafka:9092': expected kafka://HOST:PORT, several separated by commas (no http://, tcp:// or path) "
     "(see cased worker --help)"),
    (["publish", "x.png", "--stream", "s", "--broker", "tcp://kafka:9092"], {}, "argument --broker: 'tcp://kafka"),
    (["worker", "--history-patience", "0"], {}, "argument --history-patience: 0: must be at least 1"),
    (["worker"], {"CASED_JPEG_DECODER": "gpu"}, "cased: error: jpeg_decoder 'gpu': choose one of auto, pil, "
                                                "torchvision (set with CASED_JPEG_DECODER or --jpeg-decoder)"),
    (["labels"], {"CASED_MAX_WAIT_S": "0"}, "max_wait_s 0.0: must be more than 0"),
])
def test_a_bad_setting_is_one_line_naming_it(argv, env, message):
    result = subprocess.run([sys.executable, "-m", "workers.cli", *argv], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


def test_a_worker_that_cannot_load_its_model_says_so_in_one_line_before_joining(broker):
    result = subprocess.run([sys.executable, "-m", "workers.cli", "worker", "--model", "ViT-Nope-1", "--broker",
                             broker.url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("cased: error: unknown model 'ViT-Nope-1'"), result.stderr
    admin = KafkaAdminClient(bootstrap_servers=bootstrap(broker.url))
    try:  # it never joined its consumer group
        assert "cased-workers" not in [group for group, *_ in admin.list_consumer_groups()]
    finally:
        admin.close()


def test_ctrl_c_ends_a_following_reader_quietly(broker):
    """Once `cased labels --follow` printed a record (it is in its read loop), Ctrl-C ends it with
    status 130 and nothing on stderr."""
    ensure_topics(broker.url, ["labels.out"], 1)
    client = producer(broker.url)
    label = ev.LabelEvent("e1", "cam", "star", "star", 0.9, [["star", 0.9]], ["star"], "tiny@x", "db@y", 1.0, 2.0)
    client.send("labels.out", key=b"cam", value=ev.encode_label_event(label)).get(10)
    client.close()
    reader = subprocess.Popen([sys.executable, "-m", "workers.cli", "labels", "--follow", "--broker", broker.url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().startswith("cam e1: star")
        reader.send_signal(signal.SIGINT)
        _, err = reader.communicate(timeout=30)
    finally:
        reader.kill()
    assert reader.returncode == 130 and err.strip() == "", err


def test_commands_that_touch_no_model_import_no_torch():
    code = ("import sys; from workers.cli.commands import main\n"
            "for argv in (['publish', '--help'], ['labels', '--help'], ['--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'faiss', 'open_clip') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr


def test_publish_names_each_event_and_labels_show_the_file_it_came_from(capsys, broker, workers, tmp_path):
    for name in ("star.png", "moon.png"):
        (tmp_path / name).write_bytes((SAMPLES / name).read_bytes())
    ensure_topics(broker.url, TOPICS, PARTITIONS)
    workers(broker.url)
    code, out, _ = run(capsys, "publish", str(tmp_path), "--stream", "album", "--history", "upload",
                       "--broker", broker.url)
    assert code == 0
    published = dict(reversed(line.split("  ", 1)) for line in out.splitlines())
    assert sorted(published) == [str(tmp_path / "moon.png"), str(tmp_path / "star.png")]
    assert len(collect(broker.url, 2)) == 2  # answered
    code, out, _ = run(capsys, "labels", "--broker", broker.url, "--idle", "2")
    assert code == 0
    for path, event_id in published.items():
        line = next(line for line in out.splitlines() if f" {path}: " in line)
        assert line.startswith(f"album {event_id[:8]} {path}: ")


def test_reading_a_topic_the_broker_does_not_have_is_one_line(capsys, broker):
    code, _, err = run(capsys, "labels", "--broker", broker.url, "--labels-topic", "no.such.topic", "--idle", "1")
    assert code == 2 and err.startswith("cased: error: no topic no.such.topic at ") and len(err.splitlines()) == 1


def test_version():
    from importlib.metadata import version

    result = subprocess.run([sys.executable, "-m", "workers.cli", "--version"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"cased {version('cased-stream')}"


def test_classify_names_each_file_by_its_path(capsys, tmp_path):
    """Two files of one name in different folders are told apart."""
    (tmp_path / "sub").mkdir()
    for target in (tmp_path / "star.png", tmp_path / "sub" / "star.png"):
        target.write_bytes((SAMPLES / "star.png").read_bytes())
    code, out, _ = run(capsys, "classify", str(tmp_path))
    assert code == 0
    assert sorted(line.split(": ", 1)[0] for line in out.splitlines()) == [str(tmp_path / "star.png"),
                                                                         str(tmp_path / "sub" / "star.png")]


def test_a_flag_with_choices_shows_them():
    result = subprocess.run([sys.executable, "-m", "workers.cli", "worker", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert "--allow-private-hosts {0,1}" in result.stdout and "--log-format {text,json}" in result.stdout
    assert "--allow-private-hosts HOSTS" not in result.stdout


def test_a_random_init_model_leaks_no_library_warning_before_the_error():
    """open_clip warns on the root logger that ViT-B-32 has no pretrained weights; the user gets only
    the one line saying the tiny database was built with another model."""
    result = subprocess.run([sys.executable, "-m", "workers.cli", "classify", "--model", "ViT-B-32",
                             str(SAMPLES / "star.png")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cased: error: database ") and "ViT-B-32@random-init" in lines[0]


def test_db_build_checks_its_inputs_before_loading_the_model(tmp_path):
    """An empty caption file, or an --out that holds something, is told before the model loads (the
    unknown model here would fail otherwise), and leaves nothing behind."""
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    for out, message in ((tmp_path / "db", f"{empty} holds no captions"),
                         (taken, f"--out {taken} exists and is not an empty folder")):
        result = subprocess.run([sys.executable, "-m", "workers.cli", "db", "build", str(empty), "--out", str(out),
                                 "--model", "ViT-Nope-1"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and result.stderr.startswith(f"cased: error: {message}"), result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "taken"]
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]


def test_a_failed_db_build_leaves_nothing_and_the_retry_succeeds(capsys, tmp_path, caption_file):
    """The build fails half-way (a malformed line after good ones, read after the model loaded and the
    first files were written): --out is not created, no temporary folder is left, and the same command
    with the line fixed builds."""
    captions = tmp_path / "captions.jsonl"
    good = [json.dumps({"caption": c}) for c in caption_file.read_text().splitlines()[:50]]
    captions.write_text("\n".join(good + ["{not json"]) + "\n")
    out = tmp_path / "dbs" / "mine"
    code, _, err = run(capsys, "db", "build", str(captions), "--out", str(out))
    assert code == 2 and "not a JSON object" in err
    assert not out.exists() and list((tmp_path / "dbs").iterdir()) == []
    captions.write_text("\n".join(good) + "\n")
    code, stdout, _ = run(capsys, "db", "build", str(captions), "--out", str(out))
    assert code == 0 and json.loads(stdout)["count"] == len({json.loads(g)["caption"] for g in good})
    assert (out / "manifest.json").is_file() and sorted(p.name for p in (tmp_path / "dbs").iterdir()) == ["mine"]


def test_publish_refuses_a_topic_the_broker_does_not_have_and_creates_none(broker):
    """Waited for (a worker starting now would create it), then one line; the topic is not created,
    where a broker that creates topics for producers would have made one no worker reads."""
    ensure_topics(broker.url, ["images.in"], 1)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "workers.cli", "publish", str(SAMPLES / "star.png"),
                             "--stream", "s", "--broker", broker.url, "--images-topic", "images.typo"],
                            capture_output=True, text=True, timeout=120)
    waited = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cased: error: no topic images.typo at {broker.url} "
                                                   f"(waited {TOPIC_WAIT_S:.0f} s)"), result.stderr
    assert waited >= TOPIC_WAIT_S  # it says how long it waited, and it did wait that long
    consumer = KafkaConsumer(bootstrap_servers=bootstrap(broker.url))
    try:
        assert "images.typo" not in consumer.topics()
    finally:
        consumer.close()


def test_view_with_no_broker_is_one_line():
    result = subprocess.run([sys.executable, "-m", "workers.cli", "view", "--port", "0",
                             "--broker", f"kafka://127.0.0.1:{free_port()}"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cased: error: no Kafka broker answered at "), result.stderr
    assert "live view" not in result.stdout
