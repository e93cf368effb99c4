"""Writes what the attention sweep needs besides images: token arrays and image names per split.

    PYTHONPATH=. .venv/bin/python tools/attention_sweep/export.py \
        --run runs/flickr8k_mobilenet_attention --out sweep_data

Runs on the project's own machine (it needs TensorFlow for the StartEndPacker); the sweep
itself runs anywhere Keras runs (see README.md beside this file).
"""
import argparse
import os
from pathlib import Path

import numpy as np

from captioning.datasets import load_split
from captioning.files import write_json
from captioning.pipeline import caption_array
from captioning.runs import VOCABULARY_FILE, load_run_config
from captioning.splits import training_and_stopping_examples
from captioning.vocabulary import Vocabulary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a trained attention run (its config and vocabulary are used)")
    parser.add_argument("--out", required=True, help="folder to write tokens.npz and meta.json into")
    arguments = parser.parse_args()
    run_dir, out_dir = Path(arguments.run), Path(arguments.out)
    config = load_run_config(run_dir)
    training_examples, stopping_examples = training_and_stopping_examples(config)
    dev_examples = load_split(config.data, config.training.evaluation_split)
    vocabulary = Vocabulary.load(run_dir / VOCABULARY_FILE)
    arrays, names = {}, {}
    for label, examples in [("train", training_examples), ("stop", stopping_examples), ("dev", dev_examples)]:
        arrays[f"{label}_tokens"] = caption_array(examples, vocabulary, config.data.captions_per_image,
                                                  config.decoder.max_length).astype(np.int16)  # (images, captions, length)
        names[label] = [os.path.basename(example.image_path) for example in examples]
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / "tokens.npz", **arrays)
    write_json(out_dir / "meta.json", {"tokens": vocabulary.tokens, "names": names,
                                       "dev_references": [list(example.captions) for example in dev_examples]})
    print(f"{out_dir}: {', '.join(f'{label} {len(value)}' for label, value in names.items())} images, "
          f"vocabulary of {vocabulary.size}")


if __name__ == "__main__":
    main()
