"""Command line of the benchmarks (run from the repository root):

    python -m benchmarks bench [--quick] [--decoders] [--out FILE.json] [--set section.field=value ...]
    python -m benchmarks rehearsal [--images 113287] [--steps 30] [--work DIR] [--out FILE.json] [--set ...]
"""

from __future__ import annotations

import argparse
import sys

from captioning.cli import import_tensorflow_quietly


def parse_arguments(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser("bench", help="measure what the feature cache, tf.data, batching and the image cache "
                                              "buy on this machine (ratios), and training's peak memory")
    bench.add_argument("--quick", action="store_true", help="tiny sizes: checks that the bench runs (numbers mean nothing)")
    bench.add_argument("--out", help="also write the results as JSON here")
    bench.add_argument("--decoders", action="store_true",
                       help="only the decoder-training figures (rnn/attention epoch seconds, FLOP utilization)")
    bench.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                       help="overrides of the bench's experiment, e.g. data.root=/path/to/flickr8k to time its images")

    rehearsal = commands.add_parser("rehearsal", help="train the attention decoder on a synthetic COCO-sized data set "
                                                      "from sharded features: peak memory and projected epoch time")
    rehearsal.add_argument("--images", type=int, default=113_287,
                           help="synthetic training images (default: COCO's Karpathy train split, 113,287)")
    rehearsal.add_argument("--steps", type=int, default=30, help="timed training steps, after 3 warm-up steps")
    rehearsal.add_argument("--work", help="keep the feature shards here and reuse them next time (default: a "
                                          "temporary folder, removed afterwards)")
    rehearsal.add_argument("--out", help="also write the figures as JSON here")
    rehearsal.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                           help="overrides of the attention experiment (flickr8k_attention_scst.toml)")
    return parser.parse_args(argv)


def run_bench_command(arguments) -> None:
    from benchmarks.bench import run_bench

    run_bench(quick=arguments.quick, overrides=arguments.set, out=arguments.out, decoders_only=arguments.decoders)


def run_rehearsal_command(arguments) -> None:
    from benchmarks.coco_rehearsal import run_rehearsal

    run_rehearsal(arguments.images, arguments.steps, work_dir=arguments.work, out=arguments.out,
                  overrides=arguments.set)


COMMANDS = {"bench": run_bench_command, "rehearsal": run_rehearsal_command}


def main(argv=None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else list(argv))
    import_tensorflow_quietly()
    from benchmarks.coco_rehearsal import RehearsalError
    from benchmarks.feature_shards import ShardError
    from captioning.errors import USER_ERRORS

    try:
        COMMANDS[arguments.command](arguments)
    except (*USER_ERRORS, RehearsalError, ShardError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
