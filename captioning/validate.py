"""validate(config): every check of every config section in one pass, before any work.

    config = load_config("experiments/shapes_conv_gru.toml", ["decoder.cell=gur"])
    validate(config)   # ConfigError: unknown decoder cell 'gur' (decoder.cell); valid: lstm, gru

``load_config`` already refuses unknown fields and values of the wrong type; this checks
what a value means: a name that no registry holds, a number out of its range, or settings
of two sections that cannot run together (augmentation with a frozen encoder). Every error
is a ConfigError naming the field, the value and what would be valid.

train, evaluation and compare call it first, so a mistake costs seconds, not the epochs
trained before the component that would have refused it was built (compare validates every
experiment file and seed before it trains any). Nothing is built here except, with
``encoder.fine_tune_layers``, the backbone without its weights, to count its layers.

One function per section (``check_data`` ... ``check_training``), then the checks that read
several sections. validate.py sits below training/, evaluation/ and reports/, which import
it: it imports only config, data and models.
"""

from __future__ import annotations

from captioning.config import (
    ConfigError,
    DataConfig,
    DecoderConfig,
    EncoderConfig,
    ExperimentConfig,
    ImagesConfig,
    RuntimeConfig,
    TrainingConfig,
)
from captioning.data.datasets import DATASETS, SPLITS
from captioning.data.splits import check_splits
from captioning.models.caption_model import image_shape
from captioning.models.decoder_base import OUTPUT_LAYERS, check_choice
from captioning.models.decoders import ATTENTION_PLACEMENTS, CELL_CLASSES, DECODERS, IMAGE_POOLINGS, PENALTY_SCALES
from captioning.models.encoders import ACTIVATIONS, build_encoder, check_encoder_name, encoder_is_frozen, is_pretrained
from captioning.models.precision import check_precision
from captioning.models.search import check_generation

# The valid ``runtime.strategy`` values; distribution.py builds each.
STRATEGIES = ("default", "mirrored", "multi_worker")
# The fields of [images] holding an augmentation factor; 0 turns that augmentation off.
AUGMENT_FACTOR_FIELDS = ("augment_rotation", "augment_zoom", "augment_contrast")


def validate(config: ExperimentConfig) -> None:
    """Raises ConfigError for the first value of ``config`` that training, evaluation or
    captioning would refuse; returns None when every section is valid."""
    check_data(config.data)
    check_images(config.images)
    check_encoder(config.encoder)
    check_decoder(config.decoder)
    check_generation(config.generation)
    check_training(config.training)
    check_runtime(config.runtime)
    # Settings of several sections that must agree.
    check_splits(config)
    check_augmentation(config)
    check_gradient_logging(config)
    check_fine_tuning(config)
    check_self_critical(config)


def check_at_least(key: str, value, lowest, meaning: str = "") -> None:
    if value < lowest:
        raise ConfigError(f"{key}={value} must be at least {lowest}{f' ({meaning})' if meaning else ''}")


# ---------------------------------------------------------------------------------------
# One section at a time
# ---------------------------------------------------------------------------------------

def check_data(data: DataConfig) -> None:
    check_choice("data set", data.name, "data.name", sorted(DATASETS))
    check_at_least("data.captions_per_image", data.captions_per_image, 1)


def check_images(images: ImagesConfig) -> None:
    check_at_least("images.x_size", images.x_size, 1, "pixels")
    check_at_least("images.y_size", images.y_size, 1, "pixels")
    for field in AUGMENT_FACTOR_FIELDS:
        value = getattr(images, field)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"images.{field}={value} must be at least 0 (off) and below 1")


def check_encoder(encoder: EncoderConfig) -> None:
    check_encoder_name(encoder.name)
    if encoder.fine_tune_layers < 0:
        raise ConfigError(f"encoder.fine_tune_layers={encoder.fine_tune_layers} is negative; "
                          "valid: 0 (no fine-tuning phase) or the number of top layers to unfreeze")
    if is_pretrained(encoder.name):
        return
    check_choice("encoder activation", encoder.activation, "encoder.activation", ACTIVATIONS)
    if not encoder.filters:
        raise ConfigError("conv_stack needs at least one block (encoder.filters is empty)")
    for index, count in enumerate(encoder.filters):
        check_at_least(f"encoder.filters[{index}]", count, 1, "output channels")
    check_at_least("encoder.kernel_size", encoder.kernel_size, 1)
    if encoder.fine_tune_layers:
        raise ConfigError(f"encoder.fine_tune_layers={encoder.fine_tune_layers} applies to pretrained backbones; "
                          f"{encoder.name} always trains end to end (set it to 0)")


def check_decoder(decoder: DecoderConfig) -> None:
    check_choice("decoder", decoder.name, "decoder.name", DECODERS)
    check_choice("decoder cell", decoder.cell, "decoder.cell", CELL_CLASSES)
    check_choice("image_pooling", decoder.image_pooling, "decoder.image_pooling", IMAGE_POOLINGS)
    check_choice("attention_placement", decoder.attention_placement, "decoder.attention_placement",
                 ATTENTION_PLACEMENTS)
    check_choice("attention_penalty_scale", decoder.attention_penalty_scale, "decoder.attention_penalty_scale",
                 PENALTY_SCALES)
    check_choice("output_layer", decoder.output_layer, "decoder.output_layer", OUTPUT_LAYERS)
    for field in ("embedding_dim", "units", "attention_units", "transformer_layers", "transformer_heads"):
        check_at_least(f"decoder.{field}", getattr(decoder, field), 1)
    if not 0.0 <= decoder.dropout < 1.0:
        raise ConfigError(f"decoder.dropout={decoder.dropout} must be at least 0 (off) and below 1")
    if decoder.attention_regularization < 0:
        raise ConfigError(f"decoder.attention_regularization must be 0 or more, got {decoder.attention_regularization}")
    check_at_least("decoder.max_length", decoder.max_length, 2, "<start> and at least one word")
    check_at_least("decoder.min_word_count", decoder.min_word_count, 1)
    DECODER_CHECKS.get(decoder.name, lambda decoder: None)(decoder)


def check_transformer_decoder(decoder: DecoderConfig) -> None:
    if decoder.embedding_dim % decoder.transformer_heads:
        raise ConfigError(f"decoder.embedding_dim={decoder.embedding_dim} must divide by "
                          f"decoder.transformer_heads={decoder.transformer_heads}")


# decoder.name -> the checks of the fields only that decoder reads, beyond check_decoder's.
DECODER_CHECKS = {"transformer": check_transformer_decoder}


def check_training(training: TrainingConfig) -> None:
    check_at_least("training.epochs", training.epochs, 0)
    check_at_least("training.batch_size", training.batch_size, 1)
    if training.learning_rate <= 0:
        raise ConfigError(f"training.learning_rate={training.learning_rate} must be positive")
    check_at_least("training.patience", training.patience, 0)
    check_learning_rate_decay(training)
    check_choice("evaluation split", training.evaluation_split, "training.evaluation_split", SPLITS)
    for field in ("holdout_images", "max_train_images", "max_eval_images", "validation_bleu_images"):
        check_at_least(f"training.{field}", getattr(training, field), 0)


def check_learning_rate_decay(training: TrainingConfig) -> None:
    if not 0 < training.learning_rate_decay <= 1:
        raise ConfigError(f"training.learning_rate_decay={training.learning_rate_decay} must be above 0 and at most 1 "
                          "(1 keeps the learning rate fixed)")


def check_runtime(runtime: RuntimeConfig) -> None:
    check_checkpointing(runtime)
    check_strategy(runtime)
    check_precision(runtime)


def check_checkpointing(runtime: RuntimeConfig) -> None:
    if runtime.checkpoint_every_steps < 0:
        raise ConfigError(f"runtime.checkpoint_every_steps={runtime.checkpoint_every_steps} is negative "
                          "(0 checkpoints at epoch ends only)")


def check_strategy(runtime: RuntimeConfig) -> None:
    if runtime.strategy not in STRATEGIES:
        raise ConfigError(f"unknown runtime.strategy '{runtime.strategy}'; valid: {', '.join(STRATEGIES)}")


# ---------------------------------------------------------------------------------------
# Settings of several sections
# ---------------------------------------------------------------------------------------

def check_augmentation(config: ExperimentConfig) -> None:
    """ConfigError when ``images.augment*`` asks for something training cannot do."""
    images = config.images
    check_images(images)
    if not images.augment:
        return
    if not (images.augment_flip or any(getattr(images, field) for field in AUGMENT_FACTOR_FIELDS)):
        raise ConfigError("images.augment is on but every augmentation is off: set images.augment_flip=true or one of "
                          f"{', '.join(f'images.{field}' for field in AUGMENT_FACTOR_FIELDS)} above 0, or images.augment=false")
    changing = [f"images.{field}={getattr(images, field)}" for field in AUGMENT_FACTOR_FIELDS if getattr(images, field)]
    if encoder_is_frozen(config.encoder) and changing:
        raise ConfigError(
            f"{', '.join(changing)} needs the encoder to see each augmented image, but encoder.name="
            f"'{config.encoder.name}' is frozen: its features are computed once into the feature cache, before any "
            "augmentation (only the mirror, images.augment_flip, is cached too, as a second copy of the features). "
            "Train the encoder (encoder.trainable=true or encoder.fine_tune_last_block=true), use "
            "encoder.name=conv_stack, set those factors to 0, or set images.augment=false")


def check_gradient_logging(config: ExperimentConfig) -> None:
    training = config.training
    if training.gradient_norm_interval < 1:
        raise ConfigError(f"training.gradient_norm_interval={training.gradient_norm_interval} must be at least 1 (steps)")
    if training.log_gradient_norms and encoder_is_frozen(config.encoder):
        raise ConfigError(
            f"training.log_gradient_norms measures the encoder's gradients, but encoder.name='{config.encoder.name}' is "
            "frozen and gets none: train it (encoder.trainable=true or encoder.fine_tune_last_block=true), use "
            "encoder.name=conv_stack, or set training.log_gradient_norms=false")


def check_fine_tuning(config: ExperimentConfig) -> None:
    """Refuses fine-tuning settings that cannot run as asked, before phase 1 spends any time."""
    encoder, fine_tune = config.encoder, config.fine_tune
    if fine_tune.epochs < 0:
        raise ConfigError(f"fine_tune.epochs={fine_tune.epochs} is negative")
    if not encoder.fine_tune_layers:
        return
    # Negative N, conv_stack, encoder.trainable / fine_tune_last_block, N above the backbone's
    # layer count: each is a ConfigError from the phase-2 encoder (built without its weights).
    build_encoder(encoder, image_shape(config), load_pretrained=False, fine_tuning=True)
    if encoder.weights in ("none", ""):
        raise ConfigError("encoder.fine_tune_layers needs pretrained weights (encoder.weights is none): phase 1's cached "
                          "features would come from one random backbone and phase 2 would build another; give "
                          "encoder.weights=imagenet or a weights file")
    if fine_tune.epochs == 0:
        raise ConfigError(f"encoder.fine_tune_layers={encoder.fine_tune_layers} asks for a fine-tuning phase but "
                          "fine_tune.epochs is 0; give it epochs, or set encoder.fine_tune_layers=0")
    if fine_tune.learning_rate <= 0:
        raise ConfigError(f"fine_tune.learning_rate={fine_tune.learning_rate} must be positive")


def check_self_critical(config: ExperimentConfig) -> None:
    """Refuses self-critical settings that cannot run as asked, before phase 1 spends any time."""
    self_critical = config.self_critical
    runtime = config.runtime
    if self_critical.epochs < 0:
        raise ConfigError(f"self_critical.epochs={self_critical.epochs} is negative")
    if self_critical.epochs == 0:
        return
    if not encoder_is_frozen(config.encoder) or config.encoder.fine_tune_layers:
        raise ConfigError("self_critical.epochs trains the decoder on a frozen encoder's cached features; "
                          f"encoder '{config.encoder.name}' here trains (or is fine-tuned). Use a pretrained, frozen "
                          "encoder without encoder.fine_tune_layers, or set self_critical.epochs=0")
    if self_critical.samples < 2:
        raise ConfigError(f"self_critical.samples={self_critical.samples}: each caption's baseline is "
                          "the mean reward of the image's other samples, so at least 2 are needed")
    if self_critical.learning_rate <= 0:
        raise ConfigError(f"self_critical.learning_rate={self_critical.learning_rate} must be positive")
    if runtime.strategy != "default":
        raise ConfigError(f"self_critical.epochs runs on one device; runtime.strategy is "
                          f"'{runtime.strategy}' (set it to default)")
