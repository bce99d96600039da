"""`cased`: the one command-line entry point."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Sequence

from workers.settings import Settings

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "cased_core" / "data" / "samples"


class CliError(Exception):
    """A user error: printed as one line naming what was wrong and how to fix it."""


def _model_args(parser: argparse.ArgumentParser, settings: Settings, database: bool = True) -> None:
    parser.add_argument("--model", default=settings.model,
                        help="'tiny', an open_clip architecture (ViT-L-14) or a checkpoint folder [env CASED_MODEL]")
    parser.add_argument("--pretrained", default=settings.pretrained,
                        help="open_clip pretrained tag (openai) or checkpoint file [env CASED_PRETRAINED]")
    parser.add_argument("--device", default=settings.device, help="auto, cpu or cuda [env CASED_DEVICE]")
    if database:
        parser.add_argument("--database", default=settings.database,
                            help="'tiny', a database folder or s3://bucket/prefix [env CASED_DATABASE]")


def _load_model(args):
    from cased_core.model import load_model

    return load_model(args.model, args.pretrained, args.device)


def _load_database(args, model):
    from workers.databases import load_database

    return load_database(args.database, model.identity, args.cache_dir)


def _image_paths(inputs: Sequence[str]) -> list[Path]:
    from cased_core.evaluate import IMAGE_SUFFIXES

    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            paths.append(path)
        else:
            raise CliError(f"{item}: no such file or folder; pass image files or folders of images")
    if not paths:
        raise CliError(f"no images found in {', '.join(inputs)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def cmd_classify(args) -> None:
    from PIL import Image, UnidentifiedImageError

    from cased_core.classifier import Classifier, ClassifierConfig
    from cased_core.evaluate import english_words
    from cased_core.lexicon import load_lexicon

    paths = _image_paths(args.images or [str(SAMPLES_DIR)])
    model = _load_model(args)
    vocabulary = None
    if args.mode == "vocabulary":
        sources = {"wordnet": lambda: sorted(load_lexicon().terms), "english": english_words}
        if args.vocabulary in sources:
            vocabulary = sources[args.vocabulary]()
        elif args.vocabulary and Path(args.vocabulary).is_file():
            vocabulary = [w.strip() for w in Path(args.vocabulary).read_text().splitlines() if w.strip()]
        else:
            raise CliError("--mode vocabulary needs --vocabulary wordnet, english, or a file with one name a line")
    database = None if args.mode == "vocabulary" else _load_database(args, model)
    classifier = Classifier(model, database, args.mode, vocabulary,
                            ClassifierConfig(k=args.k, alpha=args.alpha, top_n=args.top))
    images = []
    for path in paths:
        try:
            images.append(Image.open(path).convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise CliError(f"{path}: not a readable image ({err})") from err
    for path, prediction in zip(paths, classifier.classify(images)):
        if args.json:
            print(json.dumps({"path": str(path), "label": prediction.label, "score": round(prediction.score, 4),
                              "candidates": [[n, round(p, 4)] for n, p in prediction.candidates]}))
        else:
            others = ", ".join(f"{n} {p:.2f}" for n, p in prediction.candidates[1:])
            print(f"{path.name}: {prediction.label} ({prediction.score:.2f})" + (f"  [{others}]" if others else ""))


def cmd_db_build(args) -> None:
    from cased_core.database_build import build_database
    from cased_core.lexicon import load_lexicon

    model = _load_model(args)
    out = build_database(args.captions, args.out, model, load_lexicon(), args.caption_column,
                         batch_size=args.batch_size)
    print(json.dumps(json.loads((out / "manifest.json").read_text()), indent=2))


def cmd_db_import(args) -> None:
    from cased_core.database_build import import_clip_retrieval
    from cased_core.lexicon import load_lexicon

    out = import_clip_retrieval(args.source, args.out, _load_model(args), load_lexicon(), args.caption_column)
    print(json.dumps(json.loads((out / "manifest.json").read_text()), indent=2))


def cmd_db_info(args) -> None:
    from workers.databases import load_database

    database = load_database(args.database, cache_dir=args.cache_dir)
    print(json.dumps({"path": str(database.path), "name": database.name, **database.manifest}, indent=2))


def cmd_eval(args) -> None:
    if args.dataset == "stream":
        return cmd_eval_stream(args)
    from cased_core.classifier import ClassifierConfig
    from cased_core.evaluate import evaluate, load_dataset

    dataset = load_dataset(args.dataset)
    model = _load_model(args)
    results = evaluate(model, _load_database(args, model), dataset, args.methods,
                       ClassifierConfig(k=args.k, alpha=args.alpha))
    if args.json:
        for r in results:
            print(json.dumps({"method": r.method, "cluster_accuracy": round(r.cluster_accuracy, 4),
                              "semantic_similarity": round(r.semantic_similarity, 4),
                              "semantic_iou": round(r.semantic_iou, 4), "images": r.images}))
        return
    print(f"{len(dataset.paths)} images, {len(dataset.classes)} classes, model {model.identity}")
    print(f"{'method':<18}{'cluster acc.':>14}{'semantic sim.':>15}{'semantic IoU':>14}")
    for r in results:
        print(f"{r.method:<18}{100 * r.cluster_accuracy:>14.1f}{100 * r.semantic_similarity:>15.1f}"
              f"{100 * r.semantic_iou:>14.1f}")


def cmd_eval_stream(args) -> None:
    """`cased eval stream`: the raw and the consistent labels on simulated streams with known truth."""
    from workers.app import build_pipeline
    from workers.eval_stream import eval_stream

    figures = eval_stream(build_pipeline(_settings_from(args, args.settings)), streams_per_scenario=args.streams,
                          seed=args.seed, scenarios=args.scenarios)
    if args.json:
        print(json.dumps(figures))
        return
    print(f"{'scenario':<13}{'labels':<12}{'accuracy':>9}{'switches/100':>14}{'excess':>8}{'lag median/p90':>16}"
          f"{'names/concept':>15}")
    rows = [(name, kinds) for name, kinds in figures["scenarios"].items()] + [("overall", figures["overall"])]
    for name, kinds in rows:
        for kind, f in kinds.items():
            lag = f["lag_frames"]
            excess = "-" if f["excess_switches"] is None else f"{100 * f['excess_switches']:.0f}%"
            print(f"{name:<13}{kind:<12}{100 * f['accuracy']:>8.1f}%{f['switches_per_100']:>14.1f}{excess:>8}"
                  f"{str(lag['median']) + ' / ' + str(lag['p90']):>16}{f['names_per_concept'] or '-':>15}")


def cmd_bench_core(args) -> None:
    from workers.bench import bench_core

    figures = bench_core(model_name=args.model, entries=args.entries, batch_size=args.batch_size,
                         images=args.images, reference_images=args.reference_images,
                         work_dir=Path(args.work_dir), device=args.device, search=args.search)
    _report(figures, args)


def _report(figures: dict, args) -> None:
    """Print a benchmark's figures and write them to its file."""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:<32}{value}")
    print(f"figures written to {args.out}", file=sys.stderr)


def _worker_env(pairs: list[str] | None) -> dict[str, str]:
    env = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CliError(f"--worker-env {pair!r}: expected NAME=VALUE, e.g. CASED_DECODE_THREADS=2")
        env[name] = value
    return env


def cmd_bench_stream(args) -> None:
    from workers.bench_stream import bench_stream

    figures = bench_stream(model_name=args.model, batch_size=args.batch_size, events=args.events,
                           repeats=args.repeats, sizes=tuple(args.sizes), source=args.source, device=args.device,
                           worker_env=_worker_env(args.worker_env), entries=args.entries, work_dir=Path(args.work_dir))
    _report(figures, args)


def cmd_bench_overload(args) -> None:
    from workers.bench_overload import bench_overload

    figures = bench_overload(model_name=args.model, batch_size=args.batch_size, duration_s=args.duration_s,
                             factor=args.factor, worker_env=_worker_env(args.worker_env))
    _report(figures, args)


def cmd_tiny_build(args) -> None:
    from workers.tiny import build_tiny

    build_tiny(Path(args.out), steps=args.steps, captions=args.captions, seed=args.seed)


def cmd_tiny_render(args) -> None:
    from cased_core.tinyworld import write_dataset

    root = write_dataset(args.out, args.per_class, args.seed, args.size)
    print(f"wrote {args.per_class} images for each of 10 categories under {root}")


def _settings_from(args, settings: Settings) -> Settings:
    """The environment's settings with the flags given on the command line applied."""
    overrides = {f.name: getattr(args, f.name) for f in fields(Settings)
                 if getattr(args, f.name, None) is not None}
    return replace(settings, **overrides)


def cmd_worker(args) -> None:
    from workers.app import run_worker
    from workers.security import kafka_security

    settings = _settings_from(args, args.settings)
    kafka_security(settings).ssl_context()  # a Kafka misconfiguration fails now, not after the model loaded
    run_worker(settings, loglevel=args.loglevel)


def cmd_publish(args) -> None:
    from workers.clients import ensure_topics, image_event, producer, publish
    from workers.security import kafka_python_options
    from workers.telemetry import Telemetry

    settings = _settings_from(args, args.settings)
    kafka = kafka_python_options(settings)
    attrs = dict(pair.split("=", 1) for pair in args.attr or [])
    if args.history:
        attrs["history"] = args.history
    sources: list = []
    for item in args.sources:
        if "://" in item:
            sources.append(item)
        else:
            sources.extend(_image_paths([item]))
    events = [image_event(args.stream, source, attrs) for source in sources]
    ensure_topics(settings.broker, [settings.images_topic], settings.partitions, **kafka)
    client = producer(settings.broker, **kafka)
    telemetry = Telemetry.from_env(service_name="cased-publisher")  # with OTEL_*: a trace per image
    try:
        for event_id in publish(client, settings.images_topic, events, telemetry):
            print(event_id)
    finally:
        client.close()
        telemetry.shutdown()


def format_record(topic: str, value: bytes, dead_letter_topic: str) -> str:
    from topics import events as ev

    if topic == dead_letter_topic:
        letter = ev.decode_dead_letter(value)
        return f"DEAD {letter.stream_id or '?'} {letter.event_id or '?'}: {letter.reason} ({letter.detail})"
    label = ev.decode_label_event(value)
    changed = "" if label.label == label.raw_label else f"  (raw: {label.raw_label})"
    return f"{label.stream_id} {label.event_id[:8]}: {label.label} {label.score:.2f}{changed}"


def cmd_labels(args) -> None:
    from workers.clients import read_records
    from workers.security import kafka_python_options

    settings = _settings_from(args, args.settings)
    topics = [settings.labels_topic] + ([settings.dead_letter_topic] if args.dead_letters else [])
    for topic, _, value in read_records(settings.broker, topics, None if args.follow else args.idle,
                                        **kafka_python_options(settings)):
        if args.json:
            import msgpack

            print(json.dumps({"topic": topic, **msgpack.unpackb(value)}, default=lambda b: b.hex()))
        else:
            print(format_record(topic, value, settings.dead_letter_topic), flush=True)


def cmd_demo(args) -> None:
    from workers.demo import run_demo

    run_demo(frames=args.frames)


def _broker_args(parser: argparse.ArgumentParser, settings: Settings) -> None:
    parser.add_argument("--broker", help=f"kafka://HOST:PORT[,...] [env CASED_BROKER, now {settings.broker}]")
    parser.add_argument("--images-topic", help=f"[env CASED_IMAGES_TOPIC, now {settings.images_topic}]")
    parser.add_argument("--labels-topic", help=f"[env CASED_LABELS_TOPIC, now {settings.labels_topic}]")
    parser.add_argument("--dead-letter-topic", help=f"[env CASED_DEAD_LETTER_TOPIC, now {settings.dead_letter_topic}]")
    # No flags for the SASL username and password: command lines leak (ps, shell history, pod specs).
    parser.add_argument("--kafka-security-protocol", metavar="PROTOCOL",
                        help="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL "
                        f"[env CASED_KAFKA_SECURITY_PROTOCOL, now {settings.kafka_security_protocol}]")
    parser.add_argument("--kafka-sasl-mechanism", metavar="MECHANISM",
                        help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; the credentials come from "
                        "CASED_KAFKA_SASL_USERNAME and CASED_KAFKA_SASL_PASSWORD only "
                        f"[env CASED_KAFKA_SASL_MECHANISM, now {settings.kafka_sasl_mechanism}]")
    parser.add_argument("--kafka-ca-file", metavar="PEM",
                        help="CA bundle the brokers' certificates are checked against (SSL, SASL_SSL); "
                        "default: the system CAs [env CASED_KAFKA_CA_FILE]")


def _bench_parser(bench, name: str, description: str) -> argparse.ArgumentParser:
    p = bench.add_parser(name, help=description)
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random init) or 'tiny'")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--work-dir", default="bench-results/work", help="where the benchmark database is kept")
    p.add_argument("--out", default=f"bench-results/{name}.json", help="figures file")
    p.add_argument("--json", action="store_true")
    return p


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cased", description="Vocabulary-free image classification (CaSED)")
    parser.add_argument("--cache-dir", default=settings.cache_dir,
                        help="cache for s3:// databases and vocabularies [env CASED_CACHE_DIR]")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("classify", help="classify local image files or folders")
    p.add_argument("images", nargs="*", help="image files or folders (default: the bundled samples)")
    _model_args(p, settings)
    p.add_argument("--mode", default="cased", choices=["cased", "cased-reference", "closest-caption", "vocabulary"])
    p.add_argument("--vocabulary", help="with --mode vocabulary: wordnet, english, or a file with one name a line")
    p.add_argument("--k", type=int, default=settings.k, help="captions retrieved per image [env CASED_K]")
    p.add_argument("--alpha", type=float, default=settings.alpha, help="visual weight [env CASED_ALPHA]")
    p.add_argument("--top", type=int, default=settings.top_n, help="candidates shown [env CASED_TOP_N]")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(func=cmd_classify)

    db = commands.add_parser("db", help="build, import or inspect caption databases").add_subparsers(
        dest="db_command", required=True)
    p = db.add_parser("build", help="build a database from caption files (txt, csv, tsv, jsonl, parquet)")
    p.add_argument("captions", nargs="+", help="caption files")
    p.add_argument("--out", required=True, help="new database folder")
    p.add_argument("--caption-column", default="caption")
    p.add_argument("--batch-size", type=int, default=256, help="texts per encoder batch")
    _model_args(p, settings, database=False)
    p.set_defaults(func=cmd_db_build)
    p = db.add_parser("import", help="import a clip-retrieval database (text.index + metadata/*.arrow)")
    p.add_argument("source", help="clip-retrieval database folder")
    p.add_argument("--out", required=True, help="new database folder")
    p.add_argument("--caption-column", default="caption")
    _model_args(p, settings, database=False)
    p.set_defaults(func=cmd_db_import)
    p = db.add_parser("info", help="print a database's manifest")
    p.add_argument("database", help="'tiny', a database folder or s3://bucket/prefix")
    p.set_defaults(func=cmd_db_info)

    p = commands.add_parser("eval", help="evaluate on DATASET_DIR/CLASS_NAME/*.jpg with the paper's metrics, "
                            "or `eval stream`: label consistency on simulated streams")
    p.add_argument("dataset", help="a dataset folder, or 'stream' (a folder named stream: ./stream)")
    _model_args(p, settings)
    from cased_core.evaluate import METHODS
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--k", type=int, default=settings.k)
    p.add_argument("--alpha", type=float, default=settings.alpha)
    p.add_argument("--json", action="store_true", help="one JSON object per method (stream: one object)")
    from cased_core.streams import SCENARIOS
    from workers.eval_stream import HELD_OUT_SEED
    p.add_argument("--streams", type=int, default=6, help="stream: streams per scenario")
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="stream: the streams' seed (held out by default)")
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS, help="stream: scenarios")
    p.set_defaults(func=cmd_eval)

    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    p = _bench_parser(bench, "core", "classification cost vs image-encoder cost vs reference-style cost")
    p.add_argument("--device", default=settings.device)
    p.add_argument("--entries", type=int, default=1_000_000, help="database size")
    p.add_argument("--images", type=int, default=256, help="images timed for encode and classify")
    p.add_argument("--reference-images", type=int, default=8, help="images timed reference-style (slow)")
    from cased_core.search import SEARCHES
    p.add_argument("--search", default=settings.search, choices=SEARCHES,
                   help="auto: exact on a GPU when the embeddings fit 4 GiB, else faiss [env CASED_SEARCH]")
    p.set_defaults(func=cmd_bench_core)
    p = _bench_parser(bench, "stream", "embedded broker + one worker: images/s answered and worker CPU per "
                      "image, by stage, for camera-sized frames")
    p.set_defaults(model="tiny", batch_size=16)
    p.add_argument("--device", default="cpu", help="the worker's device (cpu, cuda)")
    p.add_argument("--events", type=int, default=3000, help="events per run")
    p.add_argument("--repeats", type=int, default=3, help="runs per frame size (min / median / max)")
    p.add_argument("--sizes", nargs="+", default=["640x480", "1920x1080"], metavar="WxH", help="frame sizes")
    p.add_argument("--source", default="inline", choices=["inline", "s3"], help="frames inline or as s3:// uris")
    p.add_argument("--entries", type=int, default=1_000_000,
                   help="captions in the synthetic database of a model other than tiny (built once)")
    p.add_argument("--worker-env", action="append", metavar="NAME=VALUE",
                   help="added to the worker's environment, e.g. CASED_DECODE_THREADS=2 (repeatable)")
    p.set_defaults(func=cmd_bench_stream)
    p = _bench_parser(bench, "overload", "embedded broker + one worker published to faster than it sustains: "
                      "memory, lag, drain, nothing lost")
    p.set_defaults(model="tiny", batch_size=16)
    p.add_argument("--duration-s", type=float, default=180.0, help="how long the burst lasts")
    p.add_argument("--factor", type=float, default=3.0, help="the burst's rate over the sustained rate")
    p.add_argument("--worker-env", action="append", metavar="NAME=VALUE",
                   help="added to the worker's environment, e.g. Faust's STREAM_BUFFER_MAXSIZE=64 (repeatable)")
    p.set_defaults(func=cmd_bench_overload)

    p = commands.add_parser("worker", help="run one streaming worker against any Kafka cluster")
    _broker_args(p, settings)
    _model_args(p, settings)
    p.add_argument("--batch-size", type=int, help=f"[env CASED_BATCH_SIZE, now {settings.batch_size}]")
    p.add_argument("--max-wait-s", type=float, help=f"[env CASED_MAX_WAIT_S, now {settings.max_wait_s}]")
    p.add_argument("--history-policy", choices=["live", "upload"], help="default per-stream policy "
                   f"[env CASED_HISTORY_POLICY, now {settings.history_policy}]")
    p.add_argument("--web-port", type=int, help=f"health endpoint port [env CASED_WEB_PORT, now {settings.web_port}]")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=cmd_worker)

    p = commands.add_parser("publish", help="publish image references (uris, files, folders) to images.in")
    p.add_argument("sources", nargs="+", help="s3://, http(s)://, file:// uris, local image files or folders")
    p.add_argument("--stream", required=True, help="stream_id: the Kafka key; one camera or upload stream")
    p.add_argument("--history", choices=["live", "upload"], help="history policy for this stream")
    p.add_argument("--attr", action="append", metavar="KEY=VALUE", help="attribute passed through to labels.out")
    _broker_args(p, settings)
    p.set_defaults(func=cmd_publish)

    p = commands.add_parser("labels", help="print label events (and dead letters) from the broker")
    p.add_argument("--follow", action="store_true", help="keep waiting for new records")
    p.add_argument("--idle", type=float, default=5.0, help="without --follow: stop after this many idle seconds")
    p.add_argument("--dead-letters", action="store_true", help="also print images.dlq records")
    p.add_argument("--json", action="store_true", help="one JSON object a line (bytes as hex)")
    _broker_args(p, settings)
    p.set_defaults(func=cmd_labels)

    p = commands.add_parser("demo", help="embedded broker + worker + a camera and an upload stream")
    p.add_argument("--frames", type=int, default=12, help="camera frames per scene")
    p.set_defaults(func=cmd_demo)

    tiny = commands.add_parser("tiny", help="the tiny world: render images, train the tiny model").add_subparsers(
        dest="tiny_command", required=True)
    p = tiny.add_parser("render", help="write a labelled dataset of tiny-world images")
    p.add_argument("out")
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.set_defaults(func=cmd_tiny_render)
    p = tiny.add_parser("build", help="train the tiny model and build its caption database")
    p.add_argument("--out", required=True, help="folder receiving tiny-model/ and tiny-db/")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--captions", type=int, default=30_000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from cased_core.database import DatabaseError
    from cased_core.model import ModelLoadError
    from workers.compat import IncompatibleDependency

    try:
        settings = Settings.from_env()
    except ValueError as err:
        print(f"cased: error: {err}", file=sys.stderr)
        return 2
    args = build_parser(settings).parse_args(argv)
    args.settings = settings
    try:
        args.func(args)
    except (CliError, DatabaseError, ModelLoadError, FileNotFoundError, ValueError, ConnectionError,
            IncompatibleDependency) as err:
        print(f"cased: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
