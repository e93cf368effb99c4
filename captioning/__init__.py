"""Image captioning: encoders, RNN decoders, beam search, training and evaluation.

The Python API (TensorFlow is imported on first use, not by ``import captioning``):

    from captioning import Captioner, load, load_config, train

    captioner = load("models/flickr8k.keras")          # a one-file model, or a run directory
    captioner.caption("photo.jpg")                     # paths, PIL images, numpy arrays, or a list
    config = load_config("experiments/shapes_conv_gru.toml", ["training.epochs=2"])
    train(config, "runs/my_run")                       # then load("runs/my_run")
"""

__all__ = ["Captioner", "load", "load_config", "train", "validate"]

_LAZY = {"Captioner": "captioning.captioner", "load": "captioning.captioner", "load_config": "captioning.config",
         "train": "captioning.training.loop", "validate": "captioning.validate"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'captioning' has no attribute {name!r}")
