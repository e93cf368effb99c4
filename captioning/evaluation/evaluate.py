"""Scores a run's captions on a split: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, and BLEU-4 with shuffled images."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import numpy as np

from captioning.captioner import Captioner
from captioning.data.datasets import CaptionedImage, extra_metrics, load_split
from captioning.data.splits import check_evaluation_split, training_and_stopping_examples
from captioning.evaluation.attention_statistics import attention_statistics
from captioning.evaluation.bleu import bleu_scores, shuffled_image_bleu_4
from captioning.evaluation.coco_metrics import coco_caption_scores
from captioning.files import file_sha256, write_json, write_text
from captioning.runs import METRICS_FILE, WEIGHTS_FILE, load_run_config
from captioning.validate import validate

SELECTION_METRICS_FILE = "metrics_selection.json"  # in the run directory: selection_metrics


def score_captions(examples: list[CaptionedImage], hypotheses: list[str], split: str) -> tuple[dict, np.ndarray]:
    """metrics.json: BLEU-1..4 (nltk), METEOR, ROUGE-L and CIDEr-D (pycocoevalcap), BLEU-4 with
    shuffled images; and (images,) each caption's own CIDEr-D, whose mean is ``cider``.

    ``meteor`` is None when Java is missing or fails; ``unavailable`` then names it and says why.
    """
    references = [list(example.captions) for example in examples]
    coco = coco_caption_scores(references, hypotheses)
    metrics = {
        "split": split,
        "images": len(examples),
        **bleu_scores(references, hypotheses),
        "meteor": coco["meteor"],
        "rouge_l": coco["rouge_l"],
        "cider": coco["cider"],
        "bleu_4_shuffled_images": shuffled_image_bleu_4(references, hypotheses),
        "unavailable": coco["unavailable"],
    }
    return metrics, coco["image_cider"]


def evaluate_captioner(captioner: Captioner, split: str, progress: bool = True) -> tuple[dict, list[dict]]:
    """Captions every image of ``split``; returns (metrics, one row per image)."""
    examples = load_split(captioner.config.data, split)
    limit = captioner.config.training.max_eval_images
    return evaluate_examples(captioner, examples[:limit] if limit else examples, split, progress)


def evaluate_examples(captioner: Captioner, examples: list[CaptionedImage], split: str, progress: bool = True,
                      attention: bool = True) -> tuple[dict, list[dict]]:
    """Captions ``examples`` (named ``split`` in the metrics); returns (metrics, one row per image).
    attention: add the attention statistics (attention decoders)."""
    paths = [example.image_path for example in examples]
    hypotheses = captioner.caption_paths(paths, progress=progress)
    metrics, image_cider = score_captions(examples, hypotheses, split)
    rows = [
        {"image": example.image_path, "caption": hypothesis, "references": " | ".join(example.captions),
         "cider": round(float(cider), 6)}
        for example, hypothesis, cider in zip(examples, hypotheses, image_cider)
    ]
    if attention:
        metrics.update(attention_statistics(captioner, paths))
    source_split = "train" if split == "train_tail" else split  # the held-out end of the train split
    metrics.update(extra_metrics(captioner.config.data, source_split, paths, hypotheses))  # e.g. shapes' word accuracies
    return metrics, rows


def evaluate_run(run_dir: Path, facts: dict) -> dict:
    """Scores a run's model on its ``training.evaluation_split`` with its own generation settings.

    Writes ``metrics.json`` (the scores, ``facts`` about the run such as training time, and
    ``evaluation_seconds``: captioning and scoring the split) and ``captions_<split>.csv``.
    """
    captioner = evaluation_captioner(run_dir, load_run_config(run_dir).training.evaluation_split)
    split = captioner.config.training.evaluation_split
    started = time.monotonic()
    metrics, rows = evaluate_captioner(captioner, split)
    metrics.update(facts, evaluation_seconds=round(time.monotonic() - started, 1))
    write_results(metrics, rows, Path(run_dir) / METRICS_FILE, Path(run_dir) / f"captions_{split}.csv")
    print(format_metrics(metrics))
    return metrics


def evaluation_captioner(run_dir: Path, split: str, overrides: list[str] = ()) -> Captioner:
    """The run's model, to score ``split`` with ``overrides`` (generation.* and the like).

    Refuses a split that trained the run or chose its best epoch (read from the saved config:
    what trained it, never what the overrides say now), then validates the config the
    overrides make, before the model is built."""
    check_evaluation_split(load_run_config(run_dir), split)
    validate(load_run_config(run_dir, overrides))
    return Captioner.from_run(run_dir, overrides)


def selection_metrics(run_dir: Path) -> dict:
    """The run's scores on the images that chose its best epoch (``training.early_stopping_split``:
    ``train_tail`` for the shared Flickr8k, held out from training), with its own generation
    settings; what ``make compare`` picks the best config on, so that the reported split
    stays unseen by every choice. Computed once into SELECTION_METRICS_FILE, with the SHA-256
    of the model's weights, and the captions with their per-image CIDEr-D into
    ``selection_captions_path`` (the paired bootstrap's input); a run whose weights changed
    since (a resumed run given more epochs), or scored before the captions were kept, is
    scored again."""
    path = Path(run_dir) / SELECTION_METRICS_FILE
    weights_sha256 = file_sha256(Path(run_dir) / WEIGHTS_FILE)
    if path.is_file():
        metrics = json.loads(path.read_text())
        if metrics.get("weights_sha256") == weights_sha256 and selection_captions_path(run_dir, metrics["split"]).is_file():
            return metrics
    captioner = Captioner.from_run(run_dir)
    _, stopping_examples = training_and_stopping_examples(captioner.config)
    split = captioner.config.training.early_stopping_split
    metrics, rows = evaluate_examples(captioner, stopping_examples, split, progress=False, attention=False)
    metrics["weights_sha256"] = weights_sha256
    write_results(metrics, rows, path, selection_captions_path(run_dir, split))
    return metrics


def selection_captions_path(run_dir: Path, split: str) -> Path:
    """Where selection_metrics keeps the captions of the selection split: never the reported
    split's captions file, which evaluation refuses to share a split with."""
    return Path(run_dir) / f"captions_selection_{split}.csv"


def write_results(metrics: dict, rows: list[dict], metrics_path: Path, captions_path: Path) -> None:
    write_json(metrics_path, metrics)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["image", "caption", "references", "cider"])
    writer.writeheader()
    writer.writerows(rows)
    write_text(captions_path, buffer.getvalue())


def format_metrics(metrics: dict) -> str:
    names = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "bleu_4_shuffled_images"]
    names += [name for name in ("colour_accuracy", "shape_accuracy", "relation_accuracy", "attention_entropy",
                                "attention_max_weight") if name in metrics]
    reasons = {entry["metric"]: entry["reason"] for entry in metrics.get("unavailable", [])}
    lines = [f"{metrics['split']} split, {metrics['images']} images"]
    for name in names:
        value = metrics[name]
        if value is None:
            lines.append(f"  {name:<24} unavailable ({reasons.get(name, 'not computed')})")
        else:
            lines.append(f"  {name:<24} {value:.4f}")
    return "\n".join(lines)
