"""Image encoders: images -> a grid of region features ``(batch, regions, channels)``.

A registry maps ``encoder.name`` to a builder, so one test covers every encoder:

    encoder = build_encoder(config.encoder, image_shape=(64, 64, 3))
    features = encoder(images)  # (batch, 16, 256) for four pooling blocks on 64 px

Pretrained backbones (``vgg16``, ``mobilenet``, ``resnet50``, ``inception_v3``,
``efficientnet_b0``) share one code path: weights "imagenet", a local file or "none";
frozen, fully trainable, with the last block fine-tuned, or with its top N weighted layers
trainable for the second phase of a fine-tuned run (``build_encoder(..., fine_tuning=True)``,
see training/phases.py). Each encoder also names the normalization the image loader must apply
(``normalization_for(config.encoder)``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import keras
from keras import layers, ops

from captioning.config import ConfigError, EncoderConfig

ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu", "elu")


class EncoderWeightsError(ValueError):
    """Pretrained weights could not be found, downloaded or loaded."""


@keras.saving.register_keras_serializable(package="captioning")
class ConvStack(layers.Layer):
    """Blocks of Conv2D -> [BatchNorm] -> activation -> MaxPool(2), trained from scratch.

    images: (batch, height, width, 3) float32 in [0, 1].
    Returns (batch, height / 2**blocks * width / 2**blocks, filters[-1]).
    """

    normalization = "unit"  # the images.py scheme: pixels / 255, in [0, 1]

    def __init__(self, filters=(32, 64, 128, 256), kernel_size=3, batch_norm=True, activation="relu", **kwargs):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown encoder activation '{activation}' (encoder.activation); valid: {', '.join(ACTIVATIONS)}")
        if not filters:
            raise ConfigError("conv_stack needs at least one block (encoder.filters is empty)")
        self.filters = list(filters)
        self.kernel_size = kernel_size
        self.batch_norm = batch_norm
        self.activation = activation
        self.blocks = []
        for index, count in enumerate(self.filters):
            block = [layers.Conv2D(count, kernel_size, padding="same", use_bias=not batch_norm, name=f"conv_{index}")]
            if batch_norm:
                # momentum 0.9, not Keras' 0.99: runs of a few hundred steps need moving
                # statistics that have caught up by the time validation uses them.
                block.append(layers.BatchNormalization(momentum=0.9, name=f"batch_norm_{index}"))
            block.append(layers.Activation(activation, name=f"{activation}_{index}"))
            block.append(layers.MaxPooling2D(2, name=f"pool_{index}"))
            self.blocks.append(block)

    def build(self, input_shape):
        shape = tuple(input_shape)
        for block in self.blocks:
            for layer in block:
                layer.build(shape)
                shape = layer.compute_output_shape(shape)

    def call(self, images, training=None):
        features = images  # (batch, height, width, 3)
        for block in self.blocks:
            for layer in block:
                features = layer(features, training=training) if isinstance(layer, layers.BatchNormalization) else layer(features)
        # (batch, grid_height, grid_width, channels) -> (batch, regions, channels)
        batch, grid_height, grid_width, channels = ops.shape(features)
        return ops.reshape(features, (batch, grid_height * grid_width, channels))

    def feature_maps(self, images) -> list[tuple[str, object]]:
        """What each block hands the next, for inspection: (its pooling layer's name,
        (batch, height, width, channels)), first block first, in inference mode."""
        maps, features = [], images  # (batch, height, width, 3)
        for block in self.blocks:
            for layer in block:
                features = layer(features, training=False) if isinstance(layer, layers.BatchNormalization) else layer(features)
            maps.append((block[-1].name, features))  # (batch, height / 2**(k + 1), width / 2**(k + 1), filters[k])
        return maps

    def first_convolution(self) -> layers.Conv2D:
        """The convolution that reads the image; its kernel is (size, size, 3, filters[0])."""
        return self.blocks[0][0]

    def grid_shape(self, image_shape) -> tuple[int, int]:
        """(grid_height, grid_width) of the regions for images of (height, width, 3)."""
        scale = 2 ** len(self.filters)
        return (image_shape[0] // scale, image_shape[1] // scale)

    def compute_output_shape(self, input_shape):
        grid_height, grid_width = self.grid_shape(tuple(input_shape)[1:])
        return (input_shape[0], grid_height * grid_width, self.filters[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "batch_norm": self.batch_norm,
            "activation": self.activation,
        }


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A keras.applications network used as a feature extractor."""

    constructor: Callable
    normalization: str  # the images.py scheme matching the backbone's preprocess_input
    last_block_start: str  # fine_tune_last_block unfreezes this layer and every layer after it
    weights_file_hint: str  # the file keras downloads for weights="imagenet"
    takes_alpha: bool = False  # MobileNet's width multiplier (encoder.alpha)


BACKBONES = {
    "vgg16": Backbone(
        constructor=keras.applications.VGG16,
        normalization="vgg16",
        last_block_start="block5_conv1",
        weights_file_hint="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "mobilenet": Backbone(
        constructor=keras.applications.MobileNet,
        normalization="minus_one_to_one",
        last_block_start="conv_dw_13",
        weights_file_hint="mobilenet_<alpha>_<size>_tf_no_top.h5",
        takes_alpha=True,
    ),
    "resnet50": Backbone(
        constructor=keras.applications.ResNet50,
        normalization="vgg16",  # ResNet50 uses the same caffe-style preprocessing as VGG16
        last_block_start="conv5_block1_1_conv",
        weights_file_hint="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "inception_v3": Backbone(
        constructor=keras.applications.InceptionV3,
        normalization="minus_one_to_one",
        last_block_start="mixed9",
        weights_file_hint="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "efficientnet_b0": Backbone(
        constructor=keras.applications.EfficientNetB0,
        normalization="none",  # EfficientNet rescales 0..255 inputs itself
        last_block_start="block7a_expand_conv",
        weights_file_hint="efficientnetb0_notop.h5",
    ),
}


# Layers holding statistics rather than learned filters: never unfrozen, never counted.
NORMALIZATION_LAYERS = (layers.BatchNormalization, layers.Normalization)


def fine_tunable_layers(network: keras.Model) -> list[layers.Layer]:
    """The layers ``encoder.fine_tune_layers`` counts, bottom to top: those with weights
    (convolutions, depthwise convolutions) except normalization layers (BatchNormalization,
    whose statistics stay frozen when fine-tuning, and EfficientNet's input Normalization).
    VGG16 has 13, MobileNet 27, ResNet50 53, InceptionV3 94, EfficientNetB0 81."""
    return [layer for layer in network.layers if layer.weights and not isinstance(layer, NORMALIZATION_LAYERS)]


@keras.saving.register_keras_serializable(package="captioning")
class PretrainedBackbone(layers.Layer):
    """A keras.applications backbone without its top, as a region-feature encoder.

    images: (batch, height, width, 3) preprocessed as the backbone expects.
    Returns (batch, grid_height * grid_width, channels), e.g. (batch, 49, 512) for VGG16 at 224.
    weights: "imagenet", a local weights file, or "none".
    trainable_top_layers: N > 0 makes the top N of ``fine_tunable_layers`` trainable and keeps
    everything else frozen, BatchNormalization included; the network then always runs in
    inference mode, so batch norm uses (and keeps) its pretrained moving statistics, as the
    Keras transfer-learning guide does. A small data set would otherwise drag the statistics
    ImageNet estimated towards its own batches, and every layer above would see shifted inputs.
    """

    def __init__(self, backbone="vgg16", image_shape=(224, 224, 3), weights="imagenet", trainable_backbone=False,
                 fine_tune_last_block=False, alpha=1.0, trainable_top_layers=0, **kwargs):
        super().__init__(**kwargs)
        if backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone '{backbone}'; valid: {', '.join(BACKBONES)}")
        self.backbone = backbone
        self.image_shape = tuple(image_shape)
        self.weights_source = weights
        self.trainable_backbone = trainable_backbone
        self.fine_tune_last_block = fine_tune_last_block
        self.alpha = alpha
        self.trainable_top_layers = trainable_top_layers
        spec = BACKBONES[backbone]
        options = {"alpha": alpha} if spec.takes_alpha else {}
        self.network = _construct_backbone(spec, backbone, self.image_shape, weights, options)
        if trainable_top_layers:
            self._unfreeze_top_layers(trainable_top_layers)
        else:
            self.network.trainable = trainable_backbone or fine_tune_last_block
        if fine_tune_last_block and not trainable_backbone:
            names = [layer.name for layer in self.network.layers]
            if spec.last_block_start not in names:
                raise ConfigError(f"{backbone} has no layer '{spec.last_block_start}' to start fine-tuning from")
            first_trainable = names.index(spec.last_block_start)
            for index, layer in enumerate(self.network.layers):
                layer.trainable = index >= first_trainable

    def _unfreeze_top_layers(self, count: int) -> None:
        if self.trainable_backbone or self.fine_tune_last_block:
            raise ConfigError("encoder.fine_tune_layers fine-tunes in a second phase after a frozen first one; "
                              "it cannot be combined with encoder.trainable or encoder.fine_tune_last_block")
        candidates = fine_tunable_layers(self.network)
        if not 0 < count <= len(candidates):
            raise ConfigError(f"encoder.fine_tune_layers={count}: {self.backbone} has {len(candidates)} layers with "
                              f"weights (BatchNormalization not counted); valid: 0 (no fine-tuning phase) to "
                              f"{len(candidates)}")
        top = {id(layer) for layer in candidates[-count:]}
        for layer in self.network.layers:
            layer.trainable = id(layer) in top

    def call(self, images, training=None):
        # A frozen backbone always runs in inference mode (batch norm statistics stay put);
        # so does one whose top layers are fine-tuned (see the class docstring).
        training = training if (self.trainable_backbone or self.fine_tune_last_block) else False
        features = self.network(images, training=training)  # (batch, grid_height, grid_width, channels)
        batch, grid_height, grid_width, channels = ops.shape(features)
        return ops.reshape(features, (batch, grid_height * grid_width, channels))

    def feature_maps(self, images) -> list[tuple[str, object]]:
        """For inspection: (layer name, (batch, height, width, channels)) at the end of each
        resolution the network passes through (``resolution_ends``), largest first, in
        inference mode. One multi-output model over the backbone computes them all."""
        chosen = resolution_ends(self.network)
        probe = keras.Model(self.network.input, [layer.output for layer in chosen])  # shares the layers
        outputs = probe(images, training=False)
        return [(layer.name, output) for layer, output in zip(chosen, outputs)]

    def first_convolution(self) -> layers.Conv2D:
        """The convolution that reads the (normalized) RGB image: its kernel is (size, size, 3, filters)."""
        return next(layer for layer in self.network.layers
                    if isinstance(layer, layers.Conv2D) and layer.kernel.shape[2] == 3)

    def grid_shape(self, image_shape) -> tuple[int, int]:
        """(grid_height, grid_width) of the regions for images of (height, width, 3)."""
        grid = self.network.compute_output_shape((None, *image_shape))
        return (grid[1], grid[2])

    def compute_output_shape(self, input_shape):
        grid = self.network.compute_output_shape(tuple(input_shape))
        return (grid[0], grid[1] * grid[2], grid[3])

    def get_config(self):
        return {
            **super().get_config(),
            "backbone": self.backbone,
            "image_shape": self.image_shape,
            "weights": self.weights_source,
            "trainable_backbone": self.trainable_backbone,
            "fine_tune_last_block": self.fine_tune_last_block,
            "alpha": self.alpha,
            "trainable_top_layers": self.trainable_top_layers,
        }


def resolution_ends(network: keras.Model) -> list[layers.Layer]:
    """The representative layers to look at: at each spatial resolution of the network, the
    widest (most channels) and, among those, the last layer, largest resolution first. That
    is the output of the last block at that size, before the network downsamples: VGG16 at
    224 px gives block1_conv2 (224), block2_conv2 (112), block3_conv3, block4_conv3,
    block5_conv3, block5_pool (7); ResNet50 conv1_relu, conv2_block3_out ... conv5_block3_out;
    InceptionV3 mixed2 and mixed7 rather than the narrower branches of the reduction blocks
    that follow them.

    Layers before the first convolution (input scaling) and zero padding are skipped; so is
    a resolution whose layer comes before a larger one's (EfficientNet's squeeze-and-
    excitation branches are 1 x 1 inside blocks of every size)."""
    first = next(index for index, layer in enumerate(network.layers) if isinstance(layer, layers.Conv2D))
    best_at = {}  # (height, width) -> (channels, index) of the widest, then last, layer of that size
    for index in range(first, len(network.layers)):
        layer = network.layers[index]
        shape = layer.output.shape
        if isinstance(layer, layers.ZeroPadding2D) or len(shape) != 4:
            continue
        best_at[(shape[1], shape[2])] = max(best_at.get((shape[1], shape[2]), (0, -1)), (shape[3], index))
    chosen = []
    for size in sorted(best_at, key=lambda size: size[0] * size[1], reverse=True):
        index = best_at[size][1]
        if not chosen or index > chosen[-1]:
            chosen.append(index)
    return [network.layers[index] for index in chosen]


def _construct_backbone(spec: Backbone, name: str, image_shape, weights: str, options: dict):
    common = {"include_top": False, "input_shape": image_shape, **options}
    if weights in ("none", "", None):
        return spec.constructor(weights=None, **common)
    if weights == "imagenet":
        try:
            return spec.constructor(weights="imagenet", **common)
        except Exception as error:  # keras raises plain Exception on a failed download
            raise EncoderWeightsError(
                f"could not get ImageNet weights for {name} ({type(error).__name__}: {error}). Without internet, "
                f"download '{spec.weights_file_hint}' on a connected machine, copy it here, and pass "
                f"encoder.weights=/path/to/{spec.weights_file_hint} (or encoder.weights=none for random weights)."
            ) from None
    path = Path(weights)
    if not path.is_file():
        raise EncoderWeightsError(f"{path}: encoder weights file not found (encoder.weights)")
    try:
        return spec.constructor(weights=str(path), **common)
    except Exception as error:
        raise EncoderWeightsError(f"{path}: could not load {name} weights from this file ({error})") from None


def _build_conv_stack(config: EncoderConfig, image_shape, load_pretrained: bool, fine_tuning: bool):
    if config.fine_tune_layers:
        raise ConfigError(f"encoder.fine_tune_layers={config.fine_tune_layers} applies to pretrained backbones; "
                          "conv_stack always trains end to end (set it to 0)")
    return ConvStack(
        filters=config.filters, kernel_size=config.kernel_size, batch_norm=config.batch_norm,
        activation=config.activation, name="encoder",
    )


def _build_backbone(config: EncoderConfig, image_shape, load_pretrained: bool, fine_tuning: bool):
    if config.fine_tune_layers < 0:
        raise ConfigError(f"encoder.fine_tune_layers={config.fine_tune_layers} is negative; "
                          "valid: 0 (no fine-tuning phase) or the number of top layers to unfreeze")
    return PretrainedBackbone(
        backbone=config.name, image_shape=image_shape,
        weights=config.weights if load_pretrained else "none",
        trainable_backbone=config.trainable, fine_tune_last_block=config.fine_tune_last_block, alpha=config.alpha,
        trainable_top_layers=config.fine_tune_layers if fine_tuning else 0,
        name="encoder",
    )


# The valid ``encoder.name`` values. The pretrained ones are those in BACKBONES; only they can
# be frozen (their features computed once into the feature cache) or fine-tuned.
ENCODERS: dict[str, Callable] = {"conv_stack": _build_conv_stack, **{name: _build_backbone for name in BACKBONES}}


def check_encoder_name(name: str) -> None:
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder '{name}' (encoder.name); valid: {', '.join(ENCODERS)}")


def is_pretrained(name: str) -> bool:
    """Whether encoder ``name`` starts from pretrained weights (a BACKBONES entry), and so can be
    frozen or fine-tuned; conv_stack trains from scratch, always end to end."""
    return name in BACKBONES


def encoder_is_frozen(config: EncoderConfig) -> bool:
    """Only a pretrained backbone that nothing fine-tunes during training.epochs gives the same
    features every epoch; with encoder.fine_tune_layers that is phase 1 (training/loop.py)."""
    return is_pretrained(config.name) and not config.trainable and not config.fine_tune_last_block


def build_encoder(config: EncoderConfig, image_shape, load_pretrained: bool = True,
                  fine_tuning: bool = False) -> layers.Layer:
    """The encoder named by ``config.name`` for images of ``image_shape`` (height, width, 3).

    load_pretrained=False skips downloading/reading pretrained weights (a saved run's own
    weights file restores them). fine_tuning=True builds the second phase's encoder: the
    top ``config.fine_tune_layers`` layers trainable; otherwise those layers are frozen like
    the rest (the first phase, and captioning: the weights are the same variables either way).
    """
    check_encoder_name(config.name)
    return ENCODERS[config.name](config, tuple(image_shape), load_pretrained, fine_tuning)


def normalization_for(config: EncoderConfig) -> str:
    """The image loader's normalization scheme for this encoder."""
    check_encoder_name(config.name)
    return BACKBONES[config.name].normalization if is_pretrained(config.name) else ConvStack.normalization
