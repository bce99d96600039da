"""`cased`: the one command-line entry point."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from cased_core import options
from cased_core.options import BuildOptions
from topics import events as ev
from workers import logs
from workers.settings import Settings, add_flags, apply_flags

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "cased_core" / "data" / "samples"


class CliError(Exception):
    """A user error: printed as one line naming what was wrong and how to fix it."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (no usage block) that points at --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# The worker's flags beyond the model's and the broker's: every setting it reads that has a flag.
WORKER_FLAGS = ("cache_dir", "k", "search", "search_memory_mb", "alpha", "top_n", "app_id", "partitions", "batch_size",
                "fetch_wait_ms", "max_wait_s", "decode_threads", "jpeg_decoder", "torch_threads", "history_policy",
                "history_similarity", "history_margin", "history_patience", "history_patience_s", "history_stillness",
                "fetch_timeout_s", "fetch_retries", "max_bytes", "max_pixels", "s3_buckets", "file_root",
                "allow_private_hosts", "web_port", "web_host", "log_level", "log_format", "outage_budget_s",
                "gate_frames", "gate_seconds")


def _model_args(parser: argparse.ArgumentParser, settings: Settings, database: bool = True) -> None:
    add_flags(parser, settings, "model", "pretrained", "device", *(["database"] if database else []))


def _load_model(args):
    from cased_core.artifacts.model import load_model

    settings = args.settings
    return load_model(settings.model, settings.pretrained, settings.device)


def _load_database(args, model):
    from workers.databases import load_database

    return load_database(args.settings.database, model.identity, args.settings.cache_dir)


def _classifier_config(args):
    return args.settings.classifier_config()


def _image_paths(inputs: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in options.IMAGE_SUFFIXES))
        elif path.is_file():
            paths.append(path)
        else:
            raise CliError(f"{item}: no such file or folder; pass image files or folders of images")
    if not paths:
        raise CliError(f"no images found in {', '.join(inputs)} (looked for {', '.join(sorted(options.IMAGE_SUFFIXES))})")
    return paths


def _vocabulary(args) -> list[str] | None:
    """The names `--mode vocabulary` scores, checked before any model loads."""
    if args.mode != "vocabulary":
        if args.vocabulary:
            raise CliError("--vocabulary is used with --mode vocabulary only; add --mode vocabulary or drop it")
        return None
    from cased_core.evaluation.evaluate import english_words
    from cased_core.method.lexicon import load_lexicon

    sources = {"wordnet": lambda: sorted(load_lexicon().terms), "english": english_words}
    if not args.vocabulary:
        raise CliError("--mode vocabulary needs --vocabulary wordnet, english, or a text file with one name a line")
    if args.vocabulary in sources:
        return sources[args.vocabulary]()
    path = Path(args.vocabulary)
    if not path.is_file():
        raise CliError(f"--vocabulary {args.vocabulary}: no such file; give wordnet, english, or a text file "
                       "with one name a line")
    try:
        names = [w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise CliError(f"--vocabulary {path}: cannot read it as UTF-8 text ({type(err).__name__}); "
                       "give a text file with one name a line") from None
    if not names:
        raise CliError(f"--vocabulary {path} holds no names: write one name a line")
    return names


def cmd_classify(args) -> None:
    """Labels every readable image; each file that cannot be read is reported on stderr, and the
    command exits non-zero at the end when any could not."""
    from cased_core.method.classifier import Classifier
    from workers.decode import DecodeError, decode_image
    from workers.vocabularies import vocabulary_embeddings

    paths = _image_paths(args.images or [str(SAMPLES_DIR)])
    vocabulary = _vocabulary(args)
    model = _load_model(args)
    database = None if args.mode == "vocabulary" else _load_database(args, model)
    classifier = Classifier(model, database, args.mode, vocabulary, _classifier_config(args),
                            vocabulary_embeddings=None if vocabulary is None else
                            vocabulary_embeddings(model, list(dict.fromkeys(vocabulary)), args.settings.cache_dir))
    limits = args.settings.image_limits()
    readable, images, failed = [], [], 0
    for path in paths:
        try:
            images.append(decode_image(path.read_bytes(), limits, None))
            readable.append(path)
        except (DecodeError, OSError) as err:  # the same guarded decode as the worker's
            failed += 1
            print(f"cased: {path}: not classified: {getattr(err, 'detail', None) or err}", file=sys.stderr)
    for path, prediction in zip(readable, classifier.classify(images) if images else []):
        if args.json:
            print(json.dumps({"path": str(path), "label": prediction.label, "score": round(prediction.score, 4),
                              "candidates": [[n, round(p, 4)] for n, p in prediction.candidates]}))
        else:
            others = ", ".join(f"{n} {p:.2f}" for n, p in prediction.candidates[1:])
            print(f"{path}: {prediction.label} ({prediction.score:.2f})" + (f"  [{others}]" if others else ""))
    if failed:
        raise CliError(f"{failed} of {len(paths)} files could not be classified (see above)")


def _check_out(out: Path) -> None:
    """A database folder is written new: refused before anything loads when `out` holds anything (the
    build itself writes into a temporary folder moved into place at the end)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CliError(f"--out {out} exists and is not an empty folder; choose a new folder or delete it")


def _build_options(args):
    return BuildOptions(index_memory_mb=args.index_memory_mb, build_memory_mb=args.build_memory_mb,
                        recall_target=args.recall_target)


def _check_captions(files: Sequence[str], column: str) -> None:
    """Each caption file holds a caption, read before the model loads (its first captions only)."""
    from cased_core.artifacts.captions import read_captions, unique_captions

    for name in files:
        if next(unique_captions(read_captions(name, column)), None) is None:
            raise CliError(f"{name} holds no captions: give files with one caption a line (txt), or a "
                           f"{column!r} column (csv, tsv, jsonl, parquet; another with --caption-column)")


def cmd_db_build(args) -> None:
    from cased_core.artifacts.database_build import build_database
    from cased_core.method.lexicon import load_lexicon
    from workers.progress import ProgressBars

    _check_out(Path(args.out))
    _check_captions(args.captions, args.caption_column)
    model = _load_model(args)
    out = build_database(args.captions, args.out, model, load_lexicon(), args.caption_column,
                         batch_size=args.batch_size, progress=ProgressBars(), options=_build_options(args))
    print(json.dumps(json.loads((out / "manifest.json").read_text()), indent=2))


def cmd_db_import(args) -> None:
    from cased_core.artifacts.database_build import import_clip_retrieval
    from cased_core.method.lexicon import load_lexicon
    from workers.progress import ProgressBars

    _check_out(Path(args.out))
    out = import_clip_retrieval(args.source, args.out, _load_model(args), load_lexicon(), args.caption_column,
                                progress=ProgressBars(), options=_build_options(args))
    print(json.dumps(json.loads((out / "manifest.json").read_text()), indent=2))


def cmd_db_info(args) -> None:
    from workers.databases import load_database

    settings = args.settings
    database = load_database(settings.database, cache_dir=settings.cache_dir)
    print(json.dumps({"path": str(database.path), "name": database.name, **database.manifest}, indent=2))


def cmd_eval(args) -> None:
    if args.dataset == "stream":
        return cmd_eval_stream(args)
    from tqdm import tqdm

    from cased_core.evaluation.evaluate import evaluate, load_dataset
    from workers.vocabularies import vocabulary_embeddings

    dataset = load_dataset(args.dataset)
    model = _load_model(args)
    cache_dir = args.settings.cache_dir
    with tqdm(total=len(dataset.paths), desc="encoding images", disable=not sys.stderr.isatty()) as bar:
        results = evaluate(model, _load_database(args, model), dataset, args.methods, _classifier_config(args),
                           progress=bar.update,
                           embed_vocabulary=lambda m, names: vocabulary_embeddings(m, names, cache_dir))
    if args.json:
        for r in results:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.as_dict().items()}))
        return
    print(f"{len(dataset.paths)} images, {len(dataset.classes)} classes, model {model.identity}")
    print(f"{'method':<18}{'cluster acc.':>14}{'semantic sim.':>15}{'semantic IoU':>14}")
    for r in results:
        print(f"{r.method:<18}{100 * r.cluster_accuracy:>14.1f}{100 * r.semantic_similarity:>15.1f}"
              f"{100 * r.semantic_iou:>14.1f}")


def cmd_eval_stream(args) -> None:
    """`cased eval stream`: the raw and the consistent labels on simulated streams with known truth."""
    from workers.pipeline import Pipeline
    from workers.cli.eval_stream import eval_stream, table

    figures = eval_stream(Pipeline.init(args.settings), streams_per_scenario=args.streams, seed=args.seed,
                          scenarios=args.scenarios, policies=args.policies, progress=sys.stderr,
                          compare_gate=args.compare_gate)
    print(json.dumps(figures) if args.json else table(figures))


def cmd_bench_core(args) -> None:
    from workers.cli.bench import bench_core

    settings = args.settings
    figures = bench_core(model_name=args.model, entries=args.entries, batch_size=args.batch_size,
                         images=args.images, reference_images=args.reference_images, work_dir=Path(args.work_dir),
                         device=settings.device, search=settings.search, search_memory_mb=settings.search_memory_mb)
    _report(figures, args)


def _report(figures: dict, args, table=None) -> None:
    """Print a benchmark's figures (as `table` formats them, if given) and write them to its file."""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    if args.json:
        print(json.dumps(figures))
    elif table is not None:
        print(table(figures))
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
    from workers.cli.bench_stream import bench_stream

    figures = bench_stream(model_name=args.model, batch_size=args.batch_size, events=args.events,
                           repeats=args.repeats, sizes=tuple(args.sizes), source=args.source, device=args.device,
                           worker_env=_worker_env(args.worker_env), entries=args.entries, work_dir=Path(args.work_dir),
                           scenario=args.scenario, compare_gate=args.compare_gate)
    _report(figures, args)


def cmd_bench_overload(args) -> None:
    from workers.cli.bench_overload import bench_overload

    figures = bench_overload(model_name=args.model, batch_size=args.batch_size, duration_s=args.duration_s,
                             factor=args.factor, worker_env=_worker_env(args.worker_env))
    _report(figures, args)


def cmd_bench_db(args) -> None:
    import dataclasses

    from workers.cli.bench_db import bench_db, table

    options = dataclasses.replace(_build_options(args), exact_below=args.exact_below)
    figures = bench_db(entries=args.entries, dim=args.dim, work_dir=Path(args.work_dir), queries=args.queries,
                       repeats=args.repeats, build_only=args.build_only, options=options)
    _report(figures, args, table)


def cmd_tiny_build(args) -> None:
    from workers.cli.tiny import build_tiny

    build_tiny(Path(args.out), steps=args.steps, captions=args.captions, seed=args.seed)


def cmd_tiny_render(args) -> None:
    from cased_core.tinyworld.world import CATEGORIES, write_dataset

    root = write_dataset(args.out, args.per_class, args.seed, args.size)
    print(f"wrote {args.per_class} images for each of {len(CATEGORIES)} categories under {root}")


def cmd_worker(args) -> None:
    from workers.app import run_worker
    from workers.security import kafka_security

    settings = args.settings
    kafka_security(settings).ssl_context()  # a Kafka misconfiguration fails now, not after the model loaded
    run_worker(settings)


def cmd_publish(args) -> None:
    from workers.clients import image_event, producer, publish, require_topics
    from workers.security import kafka_python_options
    from workers.telemetry import Telemetry

    settings = args.settings
    kafka = kafka_python_options(settings)
    attrs = dict(pair.split("=", 1) for pair in args.attr or [])
    if args.history:
        attrs[ev.HISTORY_ATTR] = args.history
    sources: list = []
    for item in args.sources:
        if "://" in item:
            sources.append(item)
        else:
            sources.extend(_image_paths([item]))
    # attrs.source names each image in its label event (`cased labels` shows it), unless given.
    events = [image_event(args.stream, source, {ev.SOURCE_ATTR: str(source), **attrs}) for source in sources]
    # Never created here: a broker that creates topics for producers would make one no worker reads.
    require_topics(settings.broker, [settings.images_topic], **kafka)
    client = producer(settings.broker, **kafka)
    telemetry = Telemetry.from_env(service_name="cased-publisher")  # with OTEL_*: a trace per image
    try:
        for event_id, source in zip(publish(client, settings.images_topic, events, telemetry), sources):
            print(f"{event_id}  {source}")
    finally:
        client.close()
        telemetry.shutdown()


def format_record(topic: str, value: bytes, dead_letter_topic: str) -> str:

    if topic == dead_letter_topic:
        letter = ev.decode_dead_letter(value)
        return f"DEAD {letter.stream_id or '?'} {letter.event_id or '?'}: {letter.reason} ({letter.detail})"
    label = ev.decode_label_event(value)
    changed = "" if label.label == label.raw_label else f"  (raw: {label.raw_label})"
    source = label.attrs.get(ev.SOURCE_ATTR) if isinstance(label.attrs, dict) else None
    named = f" {source}" if isinstance(source, str) and source else ""
    return f"{label.stream_id} {label.event_id[:8]}{named}: {label.label} {label.score:.2f}{changed}"


def cmd_labels(args) -> None:
    from workers.clients import read_records
    from workers.security import kafka_python_options

    settings = args.settings
    topics = [settings.labels_topic] + ([settings.dead_letter_topic] if args.dead_letters else [])
    for topic, _, value in read_records(settings.broker, topics, None if args.follow else args.idle,
                                        **kafka_python_options(settings)):
        if args.json:
            print(json.dumps({"topic": topic, **ev.decode_record(value)}, default=lambda b: b.hex()))
        else:
            print(format_record(topic, value, settings.dead_letter_topic), flush=True)


def cmd_demo(args) -> None:
    from workers.cli.demo import run_demo

    run_demo(frames=args.frames)


def cmd_local(args) -> None:
    """`cased local`: a broker and an S3 endpoint on loopback until Ctrl-C (exit status 130)."""
    from workers.cli.local import run_local

    try:
        status = run_local(args.settings, broker_port=args.broker_port, s3_port=args.s3_port, bucket=args.bucket)
    except RuntimeError as err:  # the embedded broker missing or not starting: say so in one line
        raise CliError(str(err)) from err
    raise SystemExit(status)


def cmd_view(args) -> None:
    """`cased view`: a live web page of labels.out, images.dlq and images.in, until Ctrl-C."""
    import asyncio

    from workers.clients import require_topics
    from workers.security import kafka_python_options, kafka_security
    from workers.cli.view import serve

    settings = args.settings
    kafka_security(settings).ssl_context()  # a Kafka misconfiguration fails now, in one line
    # A broker that does not answer at start is a mistake, told in one line like every command's; one
    # lost later is retried, and shown on the page.
    require_topics(settings.broker, [], **kafka_python_options(settings))
    try:
        asyncio.run(serve(settings, args.host, args.port, fetch_thumbnails=args.fetch_thumbnails,
                          workers=args.worker or ()))
    except OSError as err:  # only listening raises it: the reader retries Kafka errors itself
        raise CliError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}; "
                       "pick another --port or --host") from err


def _broker_args(parser: argparse.ArgumentParser, settings: Settings) -> None:
    # No flags for the SASL username and password: command lines leak (ps, shell history, pod specs).
    add_flags(parser, settings, "broker", "images_topic", "labels_topic", "dead_letter_topic",
              "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_ca_file", "kafka_cert_file", "kafka_key_file")


def _bench_parser(bench, name: str, description: str) -> argparse.ArgumentParser:
    p = bench.add_parser(name, help=description)
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random init) or 'tiny'")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--work-dir", default="bench-results/work", help="where the benchmark database is kept")
    p.add_argument("--out", default=f"bench-results/{name}.json", help="figures file")
    p.add_argument("--json", action="store_true")
    return p


def _build_option_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index-memory-mb", type=int, default=BuildOptions.index_memory_mb,
                        help="an approximate index's codes and ids, what a worker keeps resident: bounds the code size")
    parser.add_argument("--build-memory-mb", type=int, default=BuildOptions.build_memory_mb,
                        help="the build's memory: bounds the index's training sample (half of it) and so its lists")
    parser.add_argument("--recall-target", type=float, default=BuildOptions.recall_target,
                        help="recall@10 against exact search the index's search settings are tuned to")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cased-stream")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = Parser(prog="cased", description="Vocabulary-free image classification (CaSED)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    add_flags(parser, settings, "cache_dir")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("classify", help="classify local image files or folders")
    p.add_argument("images", nargs="*", help="image files or folders (default: the bundled samples)")
    _model_args(p, settings)
    p.add_argument("--mode", default="cased", choices=options.MODES)
    p.add_argument("--vocabulary", help="with --mode vocabulary: wordnet, english, or a file with one name a line")
    add_flags(p, settings, "k", "alpha", "top_n", aliases={"top_n": "--top"})
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(func=cmd_classify)

    db = commands.add_parser("db", help="build, import or inspect caption databases").add_subparsers(
        dest="db_command", required=True)
    p = db.add_parser("build", help="build a database from caption files (txt, csv, tsv, jsonl, parquet)")
    p.add_argument("captions", nargs="+", help="caption files")
    p.add_argument("--out", required=True, help="new database folder")
    p.add_argument("--caption-column", default="caption")
    p.add_argument("--batch-size", type=int, default=256, help="texts per encoder batch")
    _build_option_args(p)
    _model_args(p, settings, database=False)
    p.set_defaults(func=cmd_db_build)
    p = db.add_parser("import", help="import a clip-retrieval database (text.index + metadata/, Arrow or Parquet)")
    p.add_argument("source", help="clip-retrieval database folder")
    p.add_argument("--out", required=True, help="new database folder")
    p.add_argument("--caption-column", default="caption")
    _build_option_args(p)
    _model_args(p, settings, database=False)
    p.set_defaults(func=cmd_db_import)
    p = db.add_parser("info", help="print a database's manifest")
    p.add_argument("database", help="'tiny', a database folder or s3://bucket/prefix")
    p.set_defaults(func=cmd_db_info)

    p = commands.add_parser("eval", help="evaluate on DATASET_DIR/CLASS_NAME/*.jpg with the paper's metrics, "
                            "or `eval stream`: label consistency on simulated streams")
    p.add_argument("dataset", help="a dataset folder, or 'stream' (a folder named stream: ./stream)")
    _model_args(p, settings)
    p.add_argument("--methods", nargs="+", default=list(options.METHODS), choices=list(options.METHODS))
    add_flags(p, settings, "k", "alpha")
    p.add_argument("--json", action="store_true", help="one JSON object per method (stream: one object)")
    from cased_core.tinyworld.cameras import SCENARIOS
    from workers.cli.eval_stream import HELD_OUT_SEED, LIVE_POLICIES
    p.add_argument("--streams", type=int, default=6, help="stream: streams per scenario")
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="stream: the streams' seed (held out by default)")
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS,
                   help="stream: scenarios (realistic: quiet ... outages; stress: cut ... upload)")
    p.add_argument("--policies", nargs="+", default=list(LIVE_POLICIES), choices=LIVE_POLICIES,
                   help="stream: live history policies compared")
    p.add_argument("--compare-gate", action="store_true",
                   help="stream: each policy's labels with the change gate off too (rows '<policy> ungated')")
    p.set_defaults(func=cmd_eval)

    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    p = _bench_parser(bench, "core", "classification cost vs image-encoder cost vs reference-style cost")
    add_flags(p, settings, "device", "search", "search_memory_mb")
    p.add_argument("--entries", type=int, default=1_000_000, help="database size")
    p.add_argument("--images", type=int, default=256, help="images timed for encode and classify")
    p.add_argument("--reference-images", type=int, default=8, help="images timed reference-style (slow)")
    p.set_defaults(func=cmd_bench_core)
    p = _bench_parser(bench, "stream", "embedded broker + one worker: images/s answered and worker CPU per "
                      "image, by stage, for camera-sized frames")
    p.set_defaults(model="tiny", batch_size=16)
    p.add_argument("--device", default="cpu", help="the worker's device (cpu, cuda)")
    p.add_argument("--events", type=int, default=3000, help="events per run")
    p.add_argument("--repeats", type=int, default=3, help="runs per frame size (min / median / max)")
    from workers.cli.bench_stream import SCENARIOS as STREAM_SCENARIOS, SIZES, SOURCES
    p.add_argument("--sizes", nargs="+", default=list(SIZES), metavar="WxH", help="frame sizes")
    p.add_argument("--source", default=SOURCES[0], choices=SOURCES, help="frames inline or as s3:// uris")
    p.add_argument("--scenario", default=STREAM_SCENARIOS[0], choices=STREAM_SCENARIOS,
                   help="busy: every frame of a camera different; fixed: fixed cameras holding scenes for hundreds "
                   "of frames (noise, drifting light, a small moving object, rare cuts)")
    p.add_argument("--compare-gate", action="store_true",
                   help="each run twice in turn, the change gate off and on: the ratio of images/s and CPU per image")
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
    p = bench.add_parser("db", help="build (once) and measure a synthetic caption database of CaSED's size: build "
                         "time and memory, disk, opening, worker memory, search time, recall and labels against exact")
    p.add_argument("--entries", type=int, default=12_000_000, help="captions (CC12M's size by default)")
    p.add_argument("--dim", type=int, default=768, help="embedding width (ViT-L-14's by default)")
    p.add_argument("--queries", type=int, default=1000, help="held-out image-like queries measured")
    p.add_argument("--repeats", type=int, default=3, help="timings per setting (min / median / max)")
    p.add_argument("--build-only", action="store_true", help="build the database (if not kept yet), measure nothing")
    _build_option_args(p)
    p.add_argument("--exact-below", type=int, default=BuildOptions.exact_below,
                   help="entries below which the index is exact")
    p.add_argument("--work-dir", default="bench-results/work", help="where the benchmark database is kept")
    p.add_argument("--out", default="bench-results/db.json", help="figures file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_db)

    p = commands.add_parser("worker", help="run one streaming worker against any Kafka cluster")
    _broker_args(p, settings)
    _model_args(p, settings)
    add_flags(p, settings, *WORKER_FLAGS, aliases={"log_level": "--loglevel"})
    p.set_defaults(func=cmd_worker)

    p = commands.add_parser("publish", help="publish image references (uris, files, folders) to images.in")
    p.add_argument("sources", nargs="+", help="s3://, http(s)://, file:// uris, local image files or folders")
    p.add_argument("--stream", required=True, help="stream_id: the Kafka key; one camera or upload stream")
    p.add_argument("--history", choices=options.HISTORY_POLICIES, help="history policy for this stream")
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

    p = commands.add_parser("local", help="a broker and an S3 endpoint on loopback, to try worker, publish and "
                            "labels by hand; prints the settings to export")
    p.add_argument("--broker-port", type=int, default=0, help="the broker's port (0: a free one)")
    p.add_argument("--s3-port", type=int, default=0, help="the S3 endpoint's port (0: a free one)")
    p.add_argument("--bucket", default="frames", help="the bucket to create")
    p.set_defaults(func=cmd_local)

    p = commands.add_parser("view", help="a live web page of the streams: labels and their changes, thumbnails, "
                            "dead letters by reason, events per second, lag per partition")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: loopback only, since the page shows what the streams carry)")
    p.add_argument("--port", type=int, default=6067, help="port to listen on (0: a free one)")
    p.add_argument("--fetch-thumbnails", action="store_true",
                   help="also fetch s3://, http(s):// and file:// frames for thumbnails, through the worker's guarded "
                   "fetcher with its limits (--s3-buckets, --file-root, ...); default: inline frames only")
    p.add_argument("--worker", action="append", metavar="URL",
                   help="a worker's web address (http://HOST:6066): the page shows whether it is ready or paused "
                   "by a dependency's outage, from its /status (repeatable)")
    _broker_args(p, settings)
    add_flags(p, settings, "app_id", "max_bytes", "max_pixels", "s3_buckets", "file_root", "allow_private_hosts",
              "fetch_timeout_s", "fetch_retries")
    p.set_defaults(func=cmd_view)

    p = commands.add_parser("demo", help="embedded broker + worker + a camera and an upload stream")
    p.add_argument("--frames", type=int, default=12, help="camera frames per scene")
    p.set_defaults(func=cmd_demo)

    tiny = commands.add_parser("tiny", help="the tiny world: render images, train the tiny model").add_subparsers(
        dest="tiny_command", required=True)
    p = tiny.add_parser("render", help="write a labelled dataset of tiny-world images")
    p.add_argument("out")
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--seed", type=int, default=1)
    from cased_core.tinyworld.world import IMAGE_SIZE
    p.add_argument("--size", type=int, default=IMAGE_SIZE, help="pixels a side")
    p.set_defaults(func=cmd_tiny_render)
    p = tiny.add_parser("build", help="train the tiny model and build its caption database")
    p.add_argument("--out", required=True, help="folder receiving tiny-model/ and tiny-db/")
    p.add_argument("--steps", type=int, default=options.TrainConfig.steps, help="training steps")
    p.add_argument("--captions", type=int, default=30_000, help="captions in its database")
    p.add_argument("--seed", type=int, default=options.TrainConfig.seed, help="training seed (captions: seed + 1000)")
    p.set_defaults(func=cmd_tiny_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a command; returns the exit status: 0, 2 for a user error (one line on stderr naming what
    was wrong and how to fix it), 130 after Ctrl-C (quietly)."""
    from cased_core.errors import DatabaseError, ModelLoadError
    from workers.compat import IncompatibleDependency

    settings = None
    try:
        environment = Settings.from_env()
        args = build_parser(environment).parse_args(argv)
        args.settings = settings = apply_flags(args, environment)  # once, checked: each command reads it here
        # The worker logs for operators; the other commands' problems reach the user as one-line errors
        # (and open_clip's warning about random weights, say, stays out of the way).
        logs.configure(settings.log_level, settings.log_format, service=args.command == "worker")
        args.func(args)
    except KeyboardInterrupt:
        # Objects the interrupt cut short in their constructor (a kafka-python client) fail again in
        # their finaliser while the process exits: nothing anyone can act on.
        sys.unraisablehook = lambda unraisable: None
        return 130
    except BrokenPipeError:  # the reader went away (`cased labels | head`): nobody is left to tell
        sys.stdout = open(os.devnull, "w")
        return 1
    except (CliError, DatabaseError, ModelLoadError, FileNotFoundError, ValueError, ConnectionError,
            IncompatibleDependency) as err:
        message = " ".join(str(err).split())
        if settings is not None and settings.log_format == "json":  # a log collector reads JSON lines only
            logging.getLogger("cased").error(message)
        else:
            print(f"cased: error: {message}", file=sys.stderr)
        return 2
    return 0

