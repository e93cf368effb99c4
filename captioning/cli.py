"""Command line: parses arguments and calls the library; nothing else. (The benchmarks have their own:
``python -m benchmarks``.)

    python -m captioning train [--experiment FILE] [--run DIR] [--set section.field=value ...]
    python -m captioning caption IMAGE_OR_FOLDER ... [--run DIR | --model FILE.keras] [--beam WIDTH] [--top N]
                                 [--attention OUT.png] [--out captions.csv|.jsonl]
    python -m captioning export --run DIR --out FILE.keras
    python -m captioning evaluate [--run DIR] [--split test] [--set ...] [--out FILE] [--beam WIDTH]
    python -m captioning compare [EXPERIMENT_OR_DIR ...] [--out DIR] [--seeds 0 1 2] [--set ...] [--results NAME]
    python -m captioning inspect IMAGE [--run DIR | --experiment FILE] [--set ...] [--out DIR]
    python -m captioning serve [--model FILE.keras | RUN_DIR] [--port 8000] [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shlex
import sys
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXPERIMENT = REPOSITORY_ROOT / "experiments" / "shapes_conv_gru.toml"
# `make compare`'s default: shapes configs that each change one thing of DEFAULT_EXPERIMENT,
# sized to finish in under half an hour on 2 CPU cores.
DEFAULT_COMPARISON = REPOSITORY_ROOT / "experiments" / "shapes"
# The shipped model (models/README.md): `caption` uses it when no --run or --model is given.
DEFAULT_MODEL = REPOSITORY_ROOT / "models" / "flickr8k.keras"
# Where `compare --results NAME` writes its table: every measured result lives on this one page.
RESULTS_PAGE = REPOSITORY_ROOT / "docs" / "results.md"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ chatter hides our output


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with file descriptor 2 muted: its CUDA probes print before any log
    level applies, and on a machine without a GPU they are noise."""
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def parse_arguments(argv):
    parser = argparse.ArgumentParser(prog="captioning", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a config, or resume an interrupted run")
    train.add_argument("--experiment", help=f"experiment TOML file (default: {DEFAULT_EXPERIMENT.name}, "
                                            "or the saved config of an existing --run)")
    train.add_argument("--run", help="run directory (default: a new one under runs/, or the interrupted one)")
    train.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE", help="config overrides")

    caption = commands.add_parser("caption", help="print a caption for an image, or write captions for many")
    caption.add_argument("images", nargs="+", metavar="IMAGE",
                         help="any image Pillow reads (PNG, JPEG, ...), or a folder of them; several images, a "
                              "folder or --out caption in batches and write one row per image")
    caption.add_argument("--run", help="run directory (default: --model's default)")
    caption.add_argument("--model", help="a one-file model from 'export' (default: "
                                         f"{DEFAULT_MODEL.relative_to(REPOSITORY_ROOT)} if it exists, else the latest run)")
    caption.add_argument("--out", metavar="FILE.csv|FILE.jsonl",
                         help="write one row per image (path, caption, error) here; the exit status is the "
                              "number of images that failed (at most 255)")
    caption.add_argument("--batch-size", type=positive_int, default=32, help="images per batch (default: 32)")
    caption.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                         help="generation overrides, e.g. generation.sampler=top_p generation.no_repeat_ngram_size=3")
    caption.add_argument("--beam", type=positive_int, metavar="WIDTH",
                         help="beam search with this many beams (default: the run's sampler)")
    caption.add_argument("--top", type=positive_int, metavar="N",
                         help="print the N best beams, best first, each after its score: the summed "
                              "log-probability (over the length penalty if one is set)")
    caption.add_argument("--attention", metavar="OUT.png",
                         help="also write the image once per generated word with that word's attention map "
                              "(decoders with attention: decoder.name=attention or transformer)")

    export = commands.add_parser("export", help="write a trained run as one .keras file (weights, config, vocabulary)")
    export.add_argument("--run", required=True, help="run directory")
    export.add_argument("--out", required=True, metavar="FILE.keras", help="the model file to write")

    evaluate = commands.add_parser("evaluate", help="score a run on a split")
    evaluate.add_argument("--run", help="run directory (default: the latest trained run)")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE", help="config overrides, e.g. data.root=...")
    evaluate.add_argument("--out", help="also write the metrics JSON here")
    evaluate.add_argument("--beam", type=positive_int, metavar="WIDTH", help="decode with beam search of this width")

    compare = commands.add_parser("compare", help="train experiments that have no finished run, then tabulate and plot them")
    compare.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                         help="experiment TOML files or folders of them (default: experiments/shapes/)")
    compare.add_argument("--out", default="runs/compare", help="where compare.csv, compare.md and the PNGs go")
    compare.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                         help="repeat each experiment with these training.seed values; the table shows mean ± std")
    compare.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE", help="overrides for every experiment")
    compare.add_argument("--results", "--readme", dest="results", metavar="NAME",
                         help="also write the table, this command, the date and the machine between "
                              "'<!-- results:NAME -->' and '<!-- /results -->' of the results page "
                              "(--readme: the former name)")
    compare.add_argument("--results-file", "--readme-file", dest="results_file", default=str(RESULTS_PAGE),
                         metavar="FILE", help="the page --results writes into (default: docs/results.md)")

    inspect = commands.add_parser("inspect", help="write PNGs of what the encoder makes of an image")
    inspect.add_argument("image", help="any image Pillow reads (PNG, JPEG, ...)")
    inspect.add_argument("--run", help="a trained run: its encoder, caption and attention (default: the latest run)")
    inspect.add_argument("--experiment", help="no run: a fresh encoder from this experiment's config "
                                              f"(default without runs: {DEFAULT_EXPERIMENT.name})")
    inspect.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                         help="config overrides, e.g. encoder.name=vgg16 encoder.weights=none")
    inspect.add_argument("--out", help="folder for the PNGs (default: runs/inspect/<image name>)")

    serve = commands.add_parser("serve", help="a web page (and JSON API) that captions uploaded photos")
    serve.add_argument("--model", help="a one-file model (.keras) or a run directory (default: "
                                       "models/flickr8k.keras if present, else the latest trained run)")
    serve.add_argument("--port", type=positive_int, default=8000)
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    return parser.parse_args(argv)


def beam_overrides(beam: int | None) -> list[str]:
    return ["generation.sampler=beam", f"generation.beam_width={beam}"] if beam is not None else []


def evaluation_name(split: str, overrides: list[str], beam: int | None) -> str:
    """The stem of an evaluation's files in the run directory: evaluation_val, evaluation_val_beam3,
    or with --set a tag per set of overrides (evaluation_val_set-1a2b3c4d_beam3), so evaluating
    with other overrides never overwrites an earlier result; the JSON lists the overrides."""
    tag = ""
    if overrides:
        tag = "_set-" + hashlib.sha1("\n".join(sorted(overrides)).encode()).hexdigest()[:8]
    return f"evaluation_{split}{tag}" + (f"_beam{beam}" if beam is not None else "")


def run_train(arguments) -> None:
    from captioning.config import load_config
    from captioning.runs import load_run_config, new_run_dir, unfinished_run_with_config
    from captioning.training.loop import train

    if arguments.run and Path(arguments.run, "config.toml").is_file() and not arguments.experiment:
        config = load_run_config(Path(arguments.run), arguments.set)  # resume a named run with its own config
    else:
        config = load_config(arguments.experiment or DEFAULT_EXPERIMENT, arguments.set)
    run_dir = Path(arguments.run) if arguments.run else (unfinished_run_with_config(config) or new_run_dir(config))
    train(config, run_dir)


def load_captioner(arguments):
    """--model, --run, the shipped model, or the latest run, in that order, with --set and --beam."""
    from captioning.captioner import Captioner
    from captioning.config import ConfigError
    from captioning.runs import latest_run

    overrides = arguments.set + beam_overrides(arguments.beam)
    if arguments.model and arguments.run:
        raise ConfigError("give --model or --run, not both")
    if arguments.model:
        return Captioner.from_model_file(arguments.model, overrides)
    if arguments.run:
        return Captioner.from_run(arguments.run, overrides)
    if DEFAULT_MODEL.is_file():
        return Captioner.from_model_file(DEFAULT_MODEL, overrides)
    return Captioner.from_run(latest_run(), overrides)


def is_batch(arguments) -> bool:
    return len(arguments.images) > 1 or Path(arguments.images[0]).is_dir() or arguments.out is not None


def run_caption(arguments) -> int:
    from captioning.data.images import read_rgb

    if is_batch(arguments):
        return run_batch_caption(arguments)
    image = arguments.images[0]
    read_rgb(image)  # a bad image fails here, before the model loads
    captioner = load_captioner(arguments)
    if arguments.attention is not None:
        from captioning.plots.attention import plot_attention

        maps = captioner.attention_maps(image)
        plot_attention(maps.image, maps.words, maps.attention, arguments.attention, title=maps.caption)
    if arguments.top is None:
        print(captioner.caption_paths([image])[0])
        return 0
    for caption, score in captioner.top_captions(image, arguments.top):
        print(f"{score:9.4f}  {caption}")
    return 0


def run_batch_caption(arguments) -> int:
    """Rows to --out (or tab-separated lines to stdout); returns the number of failed images (at most 255)."""
    from captioning.apps.batch_caption import caption_files, check_output_path, failed_count, image_paths, write_rows
    from captioning.config import ConfigError

    if arguments.attention is not None:
        raise ConfigError("--attention draws one image; give a single image without --out")
    if arguments.out is not None:
        check_output_path(arguments.out)  # before the model loads
    paths = image_paths(arguments.images)
    captioner = load_captioner(arguments)
    rows = caption_files(captioner, paths, batch_size=arguments.batch_size, top=arguments.top,
                         progress=arguments.out is not None)
    failed = failed_count(rows)
    if arguments.out is not None:
        write_rows(rows, arguments.out)
        print(f"wrote {len(rows)} rows to {arguments.out} ({len(rows) - failed} captioned, {failed} failed)")
    else:
        for row in rows:
            print(f"{row['path']}\t{row['caption']}" if not row["error"] else f"{row['path']}\terror: {row['error']}")
    for row in rows:
        if row["error"]:
            print(f"error: {row['error']}", file=sys.stderr)
    return min(failed, 255)


def run_export(arguments) -> None:
    from captioning.models.model_file import describe, export_run, read_model_file

    path = export_run(arguments.run, arguments.out)
    summary = describe(read_model_file(path))  # read back: the file loads on its own
    facts = ", ".join(f"{key} {value}" for key, value in summary.items())
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {facts}")


def run_evaluate(arguments) -> None:
    from captioning.evaluation.evaluate import evaluate_captioner, evaluation_captioner, format_metrics, write_results
    from captioning.runs import latest_run

    run_dir = Path(arguments.run) if arguments.run else latest_run()
    captioner = evaluation_captioner(run_dir, arguments.split, arguments.set + beam_overrides(arguments.beam))
    metrics, rows = evaluate_captioner(captioner, arguments.split)
    metrics["run"] = str(run_dir)
    metrics["generation"] = dataclasses.asdict(captioner.config.generation)
    metrics["overrides"] = list(arguments.set)
    name = evaluation_name(arguments.split, arguments.set, arguments.beam)
    write_results(metrics, rows, run_dir / f"{name}.json", run_dir / f"{name}_captions.csv")
    if arguments.out:
        write_results(metrics, rows, Path(arguments.out), Path(arguments.out).with_suffix(".captions.csv"))
    print(format_metrics(metrics))


def run_compare(arguments) -> None:
    from captioning.reports.compare import compare

    experiments = arguments.experiments or [DEFAULT_COMPARISON]
    compare(experiments, Path(arguments.out), seeds=arguments.seeds, overrides=arguments.set, verbose="auto")
    if arguments.results:
        from captioning.reports.results_page import copy_plot, fill_results_section, results_text

        page, plot = Path(arguments.results_file), Path(arguments.out) / "compare_metrics.png"
        table = (Path(arguments.out) / "compare.md").read_text()
        link = copy_plot(plot, page, arguments.results) if plot.is_file() else None
        fill_results_section(page, arguments.results, results_text(table, arguments.command_line, plot=link))
        print(f"wrote the table into the '{arguments.results}' section of {arguments.results_file}")


def run_inspect(arguments) -> None:
    from captioning.reports.inspection import inspect

    for path in inspect(arguments.image, arguments.out, arguments.run, arguments.experiment, arguments.set,
                        default_experiment=DEFAULT_EXPERIMENT):
        print(path)


def run_serve(arguments) -> None:
    from captioning.apps import serve

    serve.serve(serve.load_captioner(arguments.model), host=arguments.host, port=arguments.port)


COMMANDS = {"train": run_train, "caption": run_caption, "export": run_export, "evaluate": run_evaluate,
            "compare": run_compare, "inspect": run_inspect, "serve": run_serve}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    arguments = parse_arguments(argv)
    arguments.command_line = "python -m captioning " + shlex.join(argv)  # what compare --results records
    import_tensorflow_quietly()
    from captioning.errors import USER_ERRORS

    try:
        status = COMMANDS[arguments.command](arguments)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return status or 0
