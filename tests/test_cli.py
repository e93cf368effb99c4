"""The command line: captions any image, evaluates a run elsewhere, reports bad input in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from captioning.cli import main
from captioning.data.vocabulary import Vocabulary


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("mode, suffix", [("RGB", ".jpg"), ("L", ".jpg"), ("RGBA", ".png"), ("P", ".png")])
def test_caption_prints_one_caption_in_the_run_vocabulary(trained_run, tmp_path, capsys, mode, suffix):
    pixels = np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(pixels).convert(mode).save(path)
    code, out, err = run_cli(capsys, "caption", str(path), "--run", str(trained_run))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    vocabulary = Vocabulary.load(trained_run / "vocabulary.json")
    assert all(word in vocabulary.ids for word in lines[0].split())


@pytest.mark.parametrize("content, reason", [(None, "not found"), (b"", "empty"), (b"not an image", "not an image")])
def test_bad_image_is_one_line_naming_the_file(trained_run, tmp_path, capsys, content, reason):
    path = tmp_path / "broken.jpg"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run_cli(capsys, "caption", str(path), "--run", str(trained_run))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "broken.jpg" in err and reason in err.lower()


def test_unknown_config_key_is_one_line_listing_valid_keys(capsys, tmp_path):
    code, out, err = run_cli(capsys, "train", "--run", str(tmp_path / "run"), "--set", "decoder.unitz=3")
    assert code == 2
    assert "decoder.unitz" in err and "units" in err and len(err.strip().splitlines()) == 1


def test_missing_run_directory_is_a_clear_error(capsys, tmp_path):
    code, out, err = run_cli(capsys, "evaluate", "--run", str(tmp_path / "no_such_run"))
    assert code == 2 and "not a run directory" in err


def test_evaluate_on_another_copy_of_the_data_writes_the_metrics(trained_run, tiny_data_root, tmp_path, capsys):
    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_data_root / "shapes", copy)
    out_file = tmp_path / "metrics.json"
    code, out, err = run_cli(capsys, "evaluate", "--run", str(trained_run), "--split", "test",
                             "--set", f"data.root={copy}", "--out", str(out_file))
    assert code == 0, err
    metrics = json.loads(out_file.read_text())
    assert {"split", "bleu_1", "bleu_2", "bleu_3", "bleu_4", "bleu_4_shuffled_images"} <= set(metrics)
    captions = out_file.with_suffix(".captions.csv").read_text().splitlines()
    assert len(captions) == 1 + metrics["images"]
    assert str(copy) in captions[1]
    # the same model on an identical copy scores exactly what training measured
    trained_metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["bleu_4"] == pytest.approx(trained_metrics["bleu_4"])


def test_caption_with_a_beam_prints_one_caption(trained_run, tmp_path, capsys):
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(path)
    code, out, err = run_cli(capsys, "caption", str(path), "--run", str(trained_run), "--beam", "2")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1


def test_caption_top_prints_the_best_beams_with_their_log_probabilities(trained_run, tmp_path, capsys):
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(path)
    code, out, err = run_cli(capsys, "caption", str(path), "--run", str(trained_run), "--beam", "4", "--top", "3")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 3
    scores = [float(line.split()[0]) for line in lines]
    assert scores == sorted(scores, reverse=True) and all(score <= 0 for score in scores)


def test_evaluation_validates_the_config_before_the_model_is_built(tmp_path, monkeypatch, capsys):
    """evaluate (the command, on the run's config with its --set overrides) and evaluate_run
    (on the saved config) refuse a bad value before Captioner.from_run reads any weights."""
    from captioning.captioner import Captioner
    from captioning.config import ConfigError, ExperimentConfig, to_toml
    from captioning.evaluation.evaluate import evaluate_run

    built = []
    monkeypatch.setattr(Captioner, "from_run", classmethod(lambda cls, run_dir, overrides=(): built.append(run_dir)))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(to_toml(ExperimentConfig()))
    code, _, err = run_cli(capsys, "evaluate", "--run", str(run_dir), "--split", "test", "--set",
                           "generation.sampler=nucleus")
    assert code == 2 and "unknown generation.sampler 'nucleus'" in err
    (run_dir / "config.toml").write_text(to_toml(ExperimentConfig()).replace('cell = "lstm"', 'cell = "gur"'))
    with pytest.raises(ConfigError, match=r"unknown decoder cell 'gur' \(decoder.cell\)"):
        evaluate_run(run_dir, facts={})
    assert built == []


def test_evaluate_with_a_beam_names_and_records_it(trained_run, capsys):
    code, out, err = run_cli(capsys, "evaluate", "--run", str(trained_run), "--split", "test", "--beam", "2")
    assert code == 0, err
    metrics = json.loads((trained_run / "evaluation_test_beam2.json").read_text())
    assert metrics["generation"]["sampler"] == "beam" and metrics["generation"]["beam_width"] == 2


def test_evaluations_with_different_overrides_keep_separate_files(trained_run, capsys):
    """Evaluating again with other --set values must not overwrite the first result."""
    for size in ("0", "3"):
        code, out, err = run_cli(capsys, "evaluate", "--run", str(trained_run), "--split", "test", "--beam", "2",
                                 "--set", f"generation.no_repeat_ngram_size={size}")
        assert code == 0, err
    files = sorted(trained_run.glob("evaluation_test_set-*_beam2.json"))
    assert len(files) == 2
    recorded = {json.loads(path.read_text())["generation"]["no_repeat_ngram_size"] for path in files}
    assert recorded == {0, 3}
    assert {tuple(json.loads(path.read_text())["overrides"]) for path in files} == {
        ("generation.no_repeat_ngram_size=0",), ("generation.no_repeat_ngram_size=3",)}


def test_caption_takes_generation_overrides(trained_run, tmp_path, capsys):
    """Top-k sampling with k = 1 is greedy, so it must print the greedy caption; k = 1 with
    a tiny nucleus (top_p) as well."""
    path = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8)).save(path)
    captions = []
    for overrides in ([], ["--set", "generation.sampler=top_k", "generation.top_k=1"],
                      ["--set", "generation.sampler=top_p", "generation.top_p=0.01"]):
        code, out, err = run_cli(capsys, "caption", str(path), "--run", str(trained_run), *overrides)
        assert code == 0, err
        captions.append(out.strip())
    assert captions[0] and captions[1] == captions[0] and captions[2] == captions[0]
    code, out, err = run_cli(capsys, "caption", str(path), "--run", str(trained_run), "--set", "generation.sampler=top")
    assert code != 0 and "top_k" in err  # the error lists the valid samplers
