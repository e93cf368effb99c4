"""One-file models: a trained run as a single ``.keras`` file that needs no run directory.

    export_run("runs/flickr8k_mobilenet_lstm", "models/flickr8k.keras")
    packaged = read_model_file("models/flickr8k.keras")   # a PackagedCaptioner
    packaged.experiment_config(), packaged.caption_model, packaged.vocabulary()

The file is Keras 3's own format (a zip of config.json, model.weights.h5 and assets/):

  config.json   the resolved experiment config as a plain dict (image size, encoder and
                so its normalization, decoder, generation defaults) and the vocabulary size
  weights       the whole CaptionModel: encoder (pretrained backbone included) and decoder
  assets/       vocabulary.json, the token list

Loading rebuilds the model from the config with ``build_model(..., load_pretrained=False)``
and reads the weights into it, so it works with ``keras.saving.load_model(path,
safe_mode=True)``: no code (no lambda) is loaded from the file.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras

from captioning.config import ConfigError, ExperimentConfig, apply_overrides, apply_values, to_dict
from captioning.data.vocabulary import Vocabulary
from captioning.files import atomic_path
from captioning.models.caption_model import build_model
from captioning.models.encoders import normalization_for
from captioning.models.precision import precision_policy
from captioning.runs import VOCABULARY_FILE, WEIGHTS_FILE, RunError, load_run_config

MODEL_FILE_SUFFIX = ".keras"
REGISTERED_NAME = "captioning>PackagedCaptioner"


class ModelFileError(ValueError):
    """A file is missing, not a captioning model, or does not load."""


@keras.saving.register_keras_serializable(package="captioning")
class PackagedCaptioner(keras.Model):
    """A CaptionModel with the config that built it and its vocabulary, saved as one file.

    experiment: the resolved ExperimentConfig as a plain dict (``config.to_dict``).
    vocab_size: number of tokens; the tokens themselves are an asset (vocabulary.json).
    tokens: the vocabulary's token list when exporting; None when loading (load_assets fills it).
    inputs of ``call``: as CaptionModel's, {"images": (batch, y, x, 3), "captions": (batch, C, length)}.
    """

    def __init__(self, experiment: dict, vocab_size: int, tokens: list[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.experiment = experiment
        self.vocab_size = vocab_size
        self.tokens = None if tokens is None else list(tokens)
        config = self.experiment_config()
        with precision_policy(config.runtime):  # a mixed-precision run also generates in float16
            self.caption_model = build_model(config, vocab_size, load_pretrained=False)
        self.built = True  # every weight exists now (build_model ran the model on a dummy batch)

    def experiment_config(self, overrides: list[str] = ()) -> ExperimentConfig:
        """A fresh ExperimentConfig from the stored dict, then ``section.field=value`` overrides."""
        config = apply_values(ExperimentConfig(), json.loads(json.dumps(self.experiment)),
                              source="the model file's config")
        return apply_overrides(config, list(overrides))

    def vocabulary(self) -> Vocabulary:
        if self.tokens is None:
            raise ModelFileError("the model file has no vocabulary asset (assets/vocabulary.json)")
        return Vocabulary(self.tokens)

    def call(self, inputs, training=None):
        return self.caption_model(inputs, training=training)  # (batch, captions, length, vocab_size)

    def save_assets(self, dir_path):
        if self.tokens is None:
            raise ModelFileError("cannot save a PackagedCaptioner without its vocabulary tokens")
        Path(dir_path, VOCABULARY_FILE).write_text(json.dumps({"tokens": self.tokens}))

    def load_assets(self, dir_path):
        vocabulary = Vocabulary.load(Path(dir_path, VOCABULARY_FILE))
        if vocabulary.size != self.vocab_size:
            raise ModelFileError(f"the vocabulary asset holds {vocabulary.size} tokens but the model was built "
                                 f"for {self.vocab_size}")
        self.tokens = vocabulary.tokens

    def get_build_config(self):
        return None  # __init__ builds every weight; nothing to rebuild from shapes

    def build_from_config(self, config):
        pass

    def get_config(self):
        return {**super().get_config(), "experiment": self.experiment, "vocab_size": self.vocab_size}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def packaged_from_run(run_dir: str | Path) -> PackagedCaptioner:
    """The run's config, best weights and vocabulary as a PackagedCaptioner (in memory).

    The image cache is switched off in the packaged config: a one-file model must not write
    a cache folder wherever it is used (it returns the same arrays, so captions match)."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir, ["images.cache=false"])
    weights_path = run_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise RunError(f"{run_dir}: no trained weights ({WEIGHTS_FILE}); is training finished?")
    vocabulary = Vocabulary.load(run_dir / VOCABULARY_FILE)
    packaged = PackagedCaptioner(experiment=to_dict(config), vocab_size=vocabulary.size, tokens=vocabulary.tokens,
                                 name="packaged_captioner")
    packaged.caption_model.load_weights(weights_path)
    return packaged


def export_run(run_dir: str | Path, path: str | Path) -> Path:
    """Writes the run as one ``.keras`` file at ``path`` (atomically); returns the path."""
    path = Path(path)
    if path.suffix != MODEL_FILE_SUFFIX:
        raise ModelFileError(f"{path}: a model file must end in {MODEL_FILE_SUFFIX} (Keras' format)")
    packaged = packaged_from_run(run_dir)
    with atomic_path(path) as temporary:
        packaged.save(temporary)
    return path


def check_model_file(path: str | Path) -> None:
    """Raises ModelFileError naming ``path`` unless it looks like a file ``export_run`` wrote."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path}: not a captioning model file (not a .keras zip archive; "
                             "make one with 'make export RUN=dir OUT=file.keras')")
    with zipfile.ZipFile(path) as archive:
        try:
            saved = json.loads(archive.read("config.json"))
        except (KeyError, ValueError) as error:
            raise ModelFileError(f"{path}: not a captioning model file (no readable config.json: {error})") from None
    registered = saved.get("registered_name") if isinstance(saved, dict) else None
    if registered != REGISTERED_NAME:
        raise ModelFileError(f"{path}: a Keras file, but not a captioning model (it holds {registered!r}, "
                             f"expected {REGISTERED_NAME!r})")


def read_model_file(path: str | Path) -> PackagedCaptioner:
    """Loads a file written by ``export_run`` with ``safe_mode=True``."""
    check_model_file(path)
    try:
        packaged = keras.saving.load_model(path, safe_mode=True)
    except (ConfigError, ModelFileError) as error:
        raise ModelFileError(f"{path}: {error}") from None
    except ValueError as error:  # Keras: weights that do not fit the rebuilt model
        raise ModelFileError(f"{path}: the captioning model does not load ({error})") from None
    packaged.vocabulary()  # a file without its vocabulary asset fails here, not at the first caption
    return packaged


def describe(packaged: PackagedCaptioner) -> dict:
    """What a model file holds, for printing after an export."""
    config = packaged.experiment_config()
    return {"name": config.name, "encoder": config.encoder.name,
            "decoder": f"{config.decoder.name} ({config.decoder.cell})",
            "image_size": [config.images.x_size, config.images.y_size],
            "normalization": normalization_for(config.encoder),
            "vocabulary": packaged.vocab_size, "generation": config.generation.sampler,
            "parameters": packaged.caption_model.count_params()}
