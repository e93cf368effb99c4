"""Experiment configuration: one dataclass per section, loaded from TOML with overrides.

An experiment file states only what differs from these defaults, or from another
experiment file named by a top-level ``base`` key (a path relative to the file; a base may
have a base of its own):

    base = "../shapes_conv_gru.toml"
    [decoder]
    cell = "lstm"   # the one change: does the LSTM catch up with the GRU?

The experiment's name is its own ``name`` key, else its file name; it is never inherited.

Overrides use ``section.field=value`` (``decoder.units=256``); the value is parsed as TOML
(so ``[32, 64]``, ``true`` and ``"text"`` work) and falls back to a bare string.
An unknown section or field, or a value of the wrong type, raises ``ConfigError`` naming
the key and listing the valid ones.

Sections, one per component that reads them (each receives its own, ``build_encoder(config.encoder)``):

    [data] [images] [encoder] [decoder] [generation]   what is read, how it is encoded and decoded
    [training]       phase 1 and what all phases share: epochs, batches, learning rate and its
                     decay, patience, seed, which images train, stop early and report
    [fine_tune]      phase 2 (with encoder.fine_tune_layers > 0): its epochs and learning rate
    [self_critical]  the self-critical phase: epochs, learning rate, samples, reward_end
    [runtime]        how a run uses the machine: mixed_precision (and its dtype), jit_compile, strategy,
                     checkpoint_every_steps

[fine_tune], [self_critical] and [runtime] were split out of [training]; the old keys
(``training.fine_tune_epochs``, ``training.self_critical_samples``, ``training.strategy``,
... the whole list is MOVED_KEYS) still load, in experiment files, overrides, run
directories' config.toml and model files, at their new place and with a
``ConfigMigrationWarning`` naming it (once per key). An old and a new key for the same
setting, with different values, in one file or override are a ConfigError.

Field comments say what a field does and why its default is what it is; measured scores
and timings live in docs/results.md, to which they point.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
import warnings
from pathlib import Path


class ConfigError(ValueError):
    """A config file or override names an unknown key or gives a value of the wrong type."""


class ConfigMigrationWarning(FutureWarning):
    """A config names a key by its old place (``training.fine_tune_epochs``); it loads at the new one."""


# Old key -> new key, for files, overrides, run directories and model files written before the
# [training] split. Keep the entries: a saved run or model file must load as long as it exists.
MOVED_KEYS = {
    "training.fine_tune_epochs": "fine_tune.epochs",
    "training.fine_tune_learning_rate": "fine_tune.learning_rate",
    "training.self_critical_epochs": "self_critical.epochs",
    "training.self_critical_learning_rate": "self_critical.learning_rate",
    "training.self_critical_samples": "self_critical.samples",
    "training.self_critical_reward_end": "self_critical.reward_end",
    "training.mixed_precision": "runtime.mixed_precision",
    "training.jit_compile": "runtime.jit_compile",
    "training.strategy": "runtime.strategy",
    "training.checkpoint_every_steps": "runtime.checkpoint_every_steps",
}
_reported_moves: set[str] = set()  # old keys already reported in this process (one message per key)


@dataclasses.dataclass
class DataConfig:
    # Which caption source reads ``root`` ("shapes" is generated on first use, no network).
    name: str = "shapes"
    # Folder holding the data set; relative paths are taken from the working directory.
    root: str = "data/shapes"
    # Captions per image seen in one training example; the five of Flickr8k and shapes.
    # Images with fewer captions are padded with empty (ignored) captions.
    captions_per_image: int = 5
    # Shapes generator only: side of the drawn PNGs (the loader resizes them anyway).
    shapes_image_size: int = 128
    # Shapes generator only: images per split (train / val / test), from the spec.
    shapes_train_size: int = 4000
    shapes_val_size: int = 500
    shapes_test_size: int = 500
    # Shapes generator only: base seed; each split derives its own seed from it.
    shapes_seed: int = 1234
    # Karpathy's split file (dataset_flickr8k.json, dataset_flickr30k.json, dataset_coco.json),
    # relative to root unless absolute. Empty by default so each source keeps its own
    # split: flickr8k's split files, the sorted-name rule for flickr30k, coco's train/val
    # files (no test). The "karpathy" source then uses the one dataset_*.json under root.
    karpathy_file: str = ""
    # Images folder relative to root. Empty by default: each source looks for the folder
    # its release unpacks to (Flicker8k_Dataset, Images, flickr30k_images, ...) and takes
    # the one that holds the named images. coco ignores it: its annotations name the folder.
    images_dir: str = ""
    # csv source only: the caption table (image,caption[,split]), relative to root; the
    # name the csv source's documentation uses.
    csv_file: str = "captions.csv"
    # coco only: which annotations to read (2014 or 2017). 0 picks the year present under
    # root, and 2014 when both are: the images Karpathy's split and most papers use.
    coco_year: int = 0


@dataclasses.dataclass
class ImagesConfig:
    # Every image is resized to x_size x y_size before the encoder; 512 is the seed notes'
    # default. Experiments on small synthetic images set it lower to fit 2 CPU cores.
    x_size: int = 512
    y_size: int = 512
    # Normalized arrays are cached here, keyed by file content, size and normalization.
    cache_dir: str = "data/cache/images"
    # A frozen encoder's features are computed once per split and kept here.
    feature_cache_dir: str = "data/cache/features"
    # training.strategy = "multi_worker" only: feature_cache_dir is on a filesystem every
    # worker sees, so each worker extracts 1/n of the images and the chief joins the shards.
    # True because a cluster shares its data set folder anyway; false makes every worker
    # extract all images itself (worker i > 0 into feature_cache_dir/worker-<i>).
    feature_cache_shared: bool = True
    # Turn the on-disk cache off to measure raw decoding speed.
    cache: bool = True
    # Training-time augmentation (augment.py): random changes to each training image, drawn
    # anew every epoch, so a from-scratch encoder sees more than the same few thousand
    # pictures. Training batches only, never early stopping, evaluation or captioning.
    # Off by default: runs without it stay comparable with earlier ones. A frozen encoder's
    # features are cached once, before any change, so with one only the mirror works: the
    # features of the mirrored training images are cached beside the originals, and each
    # epoch draws one of the two per image (training_data.py; phase 1 only: the
    # self-critical phase has its own switch, self_critical.mirror).
    augment: bool = False
    # With augment: mirror each image left-right with probability 1/2; the words "left" and
    # "right" of that image's captions are swapped with it. On by default: with the swap it
    # is the one change here that keeps every caption true.
    augment_flip: bool = True
    # With augment: rotate by up to this fraction of a full turn (keras RandomRotation's
    # factor: 0.03 is up to 11 degrees either way). 0 (off) by default: a rotation moves the
    # objects' centroids, so a pair near the "left of" / "above" boundary changes its word.
    augment_rotation: float = 0.0
    # With augment: zoom out by up to this fraction (0.2: the picture shrinks to 80-100 % of
    # the frame). Out only, because zooming in crops, and a cropped-away object would stay in
    # the caption. 0 (off) by default: the margins it adds repeat the border pixels.
    augment_zoom: float = 0.0
    # With augment: multiply each image's contrast by a random factor in [1 - c, 1 + c]
    # (keras RandomContrast). 0 (off) by default: colour words depend on the pixel values.
    augment_contrast: float = 0.0


@dataclasses.dataclass
class EncoderConfig:
    # Registry name: "conv_stack" (trained from scratch) or a pretrained backbone:
    # "vgg16", "mobilenet", "resnet50", "inception_v3", "efficientnet_b0".
    name: str = "conv_stack"
    # conv_stack: output channels of each Conv2D -> activation -> MaxPool block.
    filters: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 128, 256])
    # conv_stack: square kernel side; 3 is the VGG choice (two 3x3 see as far as one 5x5).
    kernel_size: int = 3
    # conv_stack: batch norm after each convolution speeds up training from scratch.
    batch_norm: bool = True
    # conv_stack: the block's non-linearity; the seed notes compare these
    # (relu, sigmoid, tanh, leaky_relu, elu).
    activation: str = "relu"
    # Pretrained backbones: "imagenet" (downloads on a connected machine), a local
    # weights file path, or "none" for random initialization.
    weights: str = "imagenet"
    # Pretrained backbones: frozen by default so the decoder trains on stable features.
    # true trains the whole backbone end to end from the first epoch (one phase).
    trainable: bool = False
    # Pretrained backbones: unfreeze the last convolutional block from the first epoch (one
    # phase, beside a still random decoder); fine_tune_layers is the two-phase alternative.
    fine_tune_last_block: bool = False
    # Pretrained backbones: N > 0 adds a second training phase. Phase 1 trains the decoder on
    # the frozen backbone's cached features for training.epochs; phase 2 then unfreezes the
    # top N layers with weights (convolutions; BatchNormalization is not counted and stays
    # frozen, in inference mode) and trains encoder and decoder together on images for
    # training.fine_tune_epochs at training.fine_tune_learning_rate. 0 by default: phase 2
    # runs the backbone forward and backward on every image of every epoch, far slower than
    # phase 1 on cached features, and pays off only where the data differ from ImageNet's.
    fine_tune_layers: int = 0
    # MobileNet only: width multiplier; 0.75 matches the ImageNet weights shipped offline here.
    alpha: float = 1.0


@dataclasses.dataclass
class DecoderConfig:
    # A name in decoders.DECODERS: "rnn" (Show and Tell: the image only sets the initial
    # state; the cheapest), "attention" (Show, Attend and Tell: soft attention over the
    # region grid at every step) or "transformer" (transformer_decoder.py: self-attention over
    # the words, cross-attention to the regions).
    name: str = "rnn"
    # "lstm" or "gru".
    cell: str = "lstm"
    # Word embedding width; 256 is plenty for vocabularies of a few thousand words.
    embedding_dim: int = 256
    # Recurrent units; 512 is the Show-and-Tell size.
    units: int = 512
    # Dropout on embeddings and on the recurrent output, against over-fitting small data.
    dropout: float = 0.3
    # How the region grid becomes the initial state: "mean" (pretrained features) or
    # "flatten" (keeps where things are; small from-scratch encoders need it for "left of").
    # "rnn" only: the attention decoder starts from the mean region and looks at each
    # region's position through attention.
    image_pooling: str = "mean"
    # Layer-normalize the pooled image vector before it is projected ("rnn"), or every
    # region's vector ("attention", before attention and the initial state). Pretrained
    # features (e.g. MobileNet's ReLU6 outputs averaged over the grid) have channels of very
    # different scales; normalized, the projection trains faster. On Flickr8k with frozen
    # MobileNet it lifted dev BLEU-4 (docs/results.md, the decoder sweep). Off by default: the
    # shapes configs were measured without it.
    image_norm: bool = False
    # "rnn" only: also feed the projected image beside every word ("par-inject", Tanti et al.
    # 2018), not only as the initial state, so the decoder cannot forget it over a long caption.
    # Costs one Dense and a wider LSTM input; off by default like image_norm.
    image_every_step: bool = False
    # Attention only: width of the additive attention's hidden layer (v^T tanh(W_f f + W_h h));
    # 256 is below the 512 recurrent units, enough to score a few dozen regions, and
    # W_f f is computed for every region of every caption.
    attention_units: int = 256
    # Attention only: scale the context by a gate sigmoid(w h) per step. Show, Attend and
    # Tell found it made the attention weights emphasize objects; the cost is units + 1 weights.
    attention_gate: bool = True
    # Attention only: lambda of the doubly stochastic penalty lambda * sum_i (1 - sum_t alpha_ti)^2,
    # which makes every region get about as much attention over the caption; 1 is the
    # paper's value (it reported better BLEU and richer captions with it). 0 turns it off.
    attention_regularization: float = 1.0
    # Attention only: what the penalty is measured against. "per_token" divides each
    # caption's penalty by its number of predicted tokens, the scale of the training loss
    # (a mean per token), so lambda weighs the two terms as the paper's per-caption sums did.
    # "per_caption" (the sum over the 49 regions alone, before this option) was most of the
    # training loss on Flickr8k and kept the attention nearly uniform
    # (docs/notes/attention-study.md, "Why the attention stays flat").
    attention_penalty_scale: str = "per_token"
    # Attention only: where the context enters. "input": Show, Attend and Tell (Xu et al.,
    # 2015): the previous hidden state attends and the context is fed to the cell with the
    # word. "output": the spatial attention of Lu et al. (2017, "Knowing When to Look"): the
    # cell sees the word and the mean image, its new hidden state attends, and the context
    # goes to the output layer only. Lu et al. measured "output" above "input" on COCO and
    # Flickr30k; here it keeps the time loop as small as the rnn decoder's (the attention
    # runs over every step at once), so a step costs less (docs/guide/speed-and-scale.md).
    # "between": "output" with a second (language) cell that reads [context, hidden] at every
    # step before the output layer, as in Anderson et al.'s (2018) two-layer decoder without
    # its top-down feedback: a recurrent layer sees what was looked at before. One more cell
    # loop, and the attention at every step, padding included.
    attention_placement: str = "input"
    # "transformer" only: Transformer blocks (keras-hub TransformerDecoder, each causal
    # self-attention, cross-attention to the regions and a feed-forward layer units wide) and
    # attention heads per block; embedding_dim is the model width and must divide by the heads.
    # 3 blocks of 8 heads at width 256 is a small model (about the rnn decoder's size) that
    # a few thousand training images can fit.
    transformer_layers: int = 3
    transformer_heads: int = 8
    # How the per-token outputs become vocabulary logits (decoder_base.OutputHead): "deep" goes
    # through the embedding width first, L_o(E y + L_hz [h, z]) as in Show, Attend and Tell;
    # "wide" is one Dense from [h, (z,) E y] to the vocabulary. Deep by default: the wide
    # layer of the attention decoder was about half of its training FLOPs (1,536 x 2,500
    # per token against 1,280 x 256 + 256 x 2,500) for no measured gain (docs/results.md).
    output_layer: str = "deep"
    # Longest caption in tokens, start and end tokens included; longer ones are cut.
    max_length: int = 24
    # Words seen fewer times than this in training captions become the unknown token.
    min_word_count: int = 1


@dataclasses.dataclass
class GenerationConfig:
    # A name in search.SAMPLERS: "greedy" (one decoder row per image, the fastest), "beam",
    # or "top_k" / "top_p" (random sampling, for varied captions).
    sampler: str = "greedy"
    # Beam search only: beams kept per image. 3 is where Show-and-Tell's authors settled
    # (Vinyals et al., 2016, after starting at 20); each beam costs one more decoder row
    # per step, and wider beams favour short, generic captions unless length_penalty > 0.
    beam_width: int = 3
    # Beam search only: GNMT's alpha, ranking by log_prob / ((5 + length) / 6) ** alpha.
    # 0 ranks by the summed log-probability (plain beam search); ~0.6 favours longer captions.
    length_penalty: float = 0.0
    # Every sampler: never repeat an n-gram of this many tokens within a caption (0: off).
    # 3 is the usual trigram blocking; it stops loops such as "a white shirt and a white
    # shirt" while "in a ... in a" (a repeated bigram) stays possible.
    no_repeat_ngram_size: int = 0
    # "top_k" and "top_p" only: sample each word among the top_k likeliest, or among the
    # likeliest whose probabilities add up to top_p (nucleus sampling), from the
    # probabilities at this temperature (below 1: sharper). Varied captions, less accurate
    # ones than greedy or beam; the seed makes a run's samples repeatable.
    top_k: int = 10
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int = 0


@dataclasses.dataclass
class TrainingConfig:
    # Phase 1's epochs (the fields below are shared by every phase: batches, seed, early
    # stopping, which images train and which report). 20 is a ceiling: `patience` may stop a
    # run sooner, and experiments set their own from their learning curves.
    epochs: int = 20
    # Images per batch, each with its data.captions_per_image captions; under a
    # runtime.strategy it is the global batch.
    batch_size: int = 32
    # Adam's rate in phase 1: Keras' Adam default.
    learning_rate: float = 1e-3
    # Stop when the early-stopping loss has not improved for this many epochs (per phase).
    patience: int = 3
    # Below 1: an epoch that does not improve the early-stopping loss (and does not end the
    # run) sends the model back to the best epoch's weights and multiplies the learning rate
    # by this factor, so training goes on from the best point in smaller steps instead of
    # wandering off it. 1 (default) keeps the rate fixed; 0.2 takes Adam's 1e-3 to 2e-4.
    learning_rate_decay: float = 1.0
    # Seeds Python, NumPy, TensorFlow and Keras so a run repeats.
    seed: int = 0
    # Which images decide early stopping and the best epoch: "val", or "train_tail" (the
    # last holdout_images of the train split, held out from training) for a copy whose
    # only other split is the one being reported (the shared Flickr8k has train and dev).
    early_stopping_split: str = "val"
    holdout_images: int = 500
    # The split `make train` reports; never the early-stopping or training split.
    evaluation_split: str = "test"
    # Limit the training images (0 = all): quick experiments and tests.
    max_train_images: int = 0
    # Limit the evaluated images (0 = all).
    max_eval_images: int = 0
    # Early-stopping images greedy-captioned after every epoch for the validation BLEU-4
    # curve (0 = off). 200 costs a few seconds an epoch and shows whether the captions
    # improve; the loss alone can keep falling while BLEU has stopped.
    validation_bleu_images: int = 200
    # Record the gradient norm of each encoder convolution during the first epoch into the
    # run's gradient_norms.csv and .png (gradients.py): gradients vanishing with depth
    # (sigmoid without batch norm) show there before they show in the loss. Off by default:
    # each measurement costs one more forward and backward pass.
    log_gradient_norms: bool = False
    # Training steps between two measurements (plus one before the first step); 5 gives 25
    # points over a 125-step shapes epoch (4,000 images / 32) for a fifth more first-epoch time.
    gradient_norm_interval: int = 5


@dataclasses.dataclass
class FineTuneConfig:
    """Phase 2, which runs only with encoder.fine_tune_layers > 0 (that field stays in [encoder]:
    it says which backbone layers train). Encoder and decoder train together on images."""

    # Phase 2's epochs, after the training.epochs of phase 1. A few: each costs a backward
    # pass through the unfrozen layers for every image, and the phase stops early on
    # training.patience like phase 1.
    epochs: int = 5
    # Adam's rate in phase 2, a hundredth of training.learning_rate (the Keras
    # transfer-learning guide's 1e-5): large steps would wreck the pretrained filters whose
    # features the decoder has just learned to read.
    learning_rate: float = 1e-5


@dataclasses.dataclass
class SelfCriticalConfig:
    """Self-critical sequence training (self_critical.py; Rennie et al. 2017), after phase 1."""

    # Epochs in which the decoder samples `samples` captions per image and learns from their
    # CIDEr-D against the references, each caption's baseline being the mean reward of the
    # image's other samples. 0 (default) skips the phase: it is a fine-tuning of a trained
    # decoder, not a way to train one. Frozen encoders only (it trains on the cached
    # features). With training.validation_bleu_images > 0 the run keeps the epoch (phase
    # 1's decoder counting as epoch 0) whose greedy captions of the early-stopping images
    # have the best CIDEr-D; otherwise the last.
    epochs: int = 0
    # Adam's rate in this phase: small, since it starts from a trained decoder (Rennie et al.
    # fine-tuned at 5e-5) and sampled-caption gradients are noisy.
    learning_rate: float = 5e-5
    # Captions sampled per image. At least 2 (the baseline is the others' mean); 5 matches
    # the references per image, and each more sample is one more decoder row per step.
    samples: int = 5
    # Score each sample with its end token, as the reference implementations do: the
    # references end in "<end>" too, so a caption cut off mid-phrase ("a dog runs on the")
    # misses the n-grams that end a real caption. Without it the captions shrank each epoch
    # on Flickr8k and BLEU's brevity penalty grew
    # (docs/results.md#flickr8k-self-critical-epoch-after-the-decay-runs).
    reward_end: bool = True
    # Sample each training image mirrored left-right with probability 1/2 (drawn anew each
    # epoch): its features from the feature cache's mirrored entry (made once, as
    # images.augment makes it for phase 1), its references with "left" and "right" swapped.
    # Off by default: runs without it stay comparable with earlier ones.
    mirror: bool = False


@dataclasses.dataclass
class RuntimeConfig:
    """How training runs on the machine: precision, compilation, devices, checkpoints. None of
    these changes what a run learns beyond rounding, but mixed_precision and jit_compile
    change the rounding, so runs are only comparable with the same settings."""

    # Compute in float16, keep weights, logits and the loss in float32 (Keras policy
    # "mixed_float16", with dynamic loss scaling). Off by default: it pays only on GPUs with
    # tensor cores; on CPU float16 is slower than float32 (and so was bfloat16 on an AVX2
    # CPU without AVX512-BF16), and the loss differs from a float32 run by rounding, more
    # as training goes on. Measured: docs/results.md#mixed-precision-xla-and-bfloat16-on-cpu.
    mixed_precision: bool = False
    # The 16-bit type mixed_precision computes in: "float16" (Keras "mixed_float16", with
    # dynamic loss scaling; fast on GPUs with tensor cores) or "bfloat16" ("mixed_bfloat16":
    # float32's exponent range, so no loss scaling; fast on CPUs with AVX512-BF16 or AMX and
    # on TPUs). Default float16: the type Keras and most GPU recipes mean by mixed precision.
    # benchmarks/bench.py reports what each buys on the machine at hand (make bench PART=decoders).
    mixed_precision_dtype: str = "float16"
    # Compile the training step with XLA (model.compile(jit_compile=...)). Off by default:
    # on 2 CPU cores a Flickr8k-sized step was slower with it, after a long compile of each
    # batch shape (docs/results.md#mixed-precision-xla-and-bfloat16-on-cpu); feature batches
    # are trimmed to their longest caption, so there are many shapes; and Keras' "auto" would
    # switch it on for GPUs only, making a run's numbers depend on the machine. Under XLA the
    # decoders unroll their time loop and compute the output layer on every position (static
    # shapes).
    jit_compile: bool = False
    # How training is spread over devices (see distribution.py): "default" (one device),
    # "mirrored" (every GPU of this machine, or its logical CPU devices; synchronous
    # all-reduce), or "multi_worker" (MultiWorkerMirroredStrategy across the machines named
    # by the TF_CONFIG environment variable). Default: one device needs no set-up, and
    # training.batch_size is then the batch of that device. Under a strategy,
    # training.batch_size is the global batch, split evenly over the replicas.
    strategy: str = "default"
    # Training steps between two mid-epoch checkpoints (checkpoints.py; 0: at epoch ends
    # only). 100 bounds what a killed run loses to a few minutes even at the slowest step
    # measured (Flickr8k from scratch on 2 CPU cores), while a save costs little next to the
    # steps between two; the step and save times:
    # docs/results.md#flickr8k-training-time-and-memory.
    checkpoint_every_steps: int = 100


@dataclasses.dataclass
class ExperimentConfig:
    name: str = "default"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    images: ImagesConfig = dataclasses.field(default_factory=ImagesConfig)
    encoder: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)
    decoder: DecoderConfig = dataclasses.field(default_factory=DecoderConfig)
    generation: GenerationConfig = dataclasses.field(default_factory=GenerationConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    fine_tune: FineTuneConfig = dataclasses.field(default_factory=FineTuneConfig)
    self_critical: SelfCriticalConfig = dataclasses.field(default_factory=SelfCriticalConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)


SECTIONS = [field.name for field in dataclasses.fields(ExperimentConfig) if field.name != "name"]


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(ExperimentConfig)
    return {name: hints[name] for name in SECTIONS}


def _check_value(key: str, value, expected):
    """Returns ``value`` converted to ``expected`` or raises ConfigError naming ``key``."""
    origin = typing.get_origin(expected)
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {item_type.__name__}, got {value!r}")
        return [_check_value(f"{key}[{index}]", item, item_type) for index, item in enumerate(value)]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if expected is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{key}: expected {expected.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _apply_section(section_name: str, section, values: dict, source: str):
    hints = typing.get_type_hints(type(section))
    valid = sorted(hints)
    for field_name, value in values.items():
        key = f"{section_name}.{field_name}"
        if field_name not in hints:
            raise ConfigError(f"{source}: unknown key '{key}'; valid keys in [{section_name}]: {', '.join(valid)}")
        setattr(section, field_name, _check_value(f"{source}: {key}", value, hints[field_name]))


def migrate_values(values: dict, source: str) -> dict:
    """``values`` with every key of MOVED_KEYS at its new place, and one ConfigMigrationWarning
    line naming ``source`` and the new place of each old key it holds (each old key is named
    once per process: a model file or many old runs would repeat them all). An old key and
    its new key with different values in the same ``source`` are a ConfigError naming both."""
    moved = {section: dict(fields) if isinstance(fields, dict) else fields for section, fields in values.items()}
    renamed = []
    for old_key, new_key in MOVED_KEYS.items():
        old_section, old_field = old_key.split(".")
        new_section, new_field = new_key.split(".")
        fields = moved.get(old_section)
        if not isinstance(fields, dict) or old_field not in fields:
            continue
        value = fields.pop(old_field)
        target = moved.setdefault(new_section, {})
        if not isinstance(target, dict):
            continue  # apply_values reports the malformed section
        if new_field in target and target[new_field] != value:
            raise ConfigError(f"{source}: {old_key} = {value!r} and {new_key} = {target[new_field]!r} name the same "
                              f"setting ({old_key} is its old place); keep only {new_key}")
        target.setdefault(new_field, value)
        if old_key not in _reported_moves:
            _reported_moves.add(old_key)
            renamed.append(f"{old_key} is now {new_key}")
    if renamed:
        warnings.warn(f"{source}: loaded old keys at their new place ([training] was split): {', '.join(renamed)}",
                      ConfigMigrationWarning, stacklevel=3)
    return moved


def apply_values(config: ExperimentConfig, values: dict, source: str) -> ExperimentConfig:
    """Applies a nested dict ``{"section": {"field": value}}`` (and top-level ``name``); keys
    of MOVED_KEYS are applied at their new place (``migrate_values``)."""
    values = migrate_values(values, source)
    for section_name, section_values in values.items():
        if section_name == "name":
            config.name = _check_value(f"{source}: name", section_values, str)
            continue
        if section_name not in SECTIONS:
            raise ConfigError(f"{source}: unknown section '{section_name}'; valid sections: name, {', '.join(SECTIONS)}")
        if not isinstance(section_values, dict):
            raise ConfigError(f"{source}: '{section_name}' must be a table of fields, got {section_values!r}")
        _apply_section(section_name, getattr(config, section_name), section_values, source)
    return config


def parse_override(text: str) -> tuple[str, str, object]:
    """``"decoder.units=256"`` -> ``("decoder", "units", 256)``."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override '{text}' must look like section.field=value, e.g. decoder.units=256")
    key, raw_value = text.split("=", 1)
    section_name, field_name = key.strip().split(".", 1)
    raw_value = raw_value.strip()
    try:
        value = tomllib.loads(f"value = {raw_value}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw_value  # a bare word such as gru or a path
    if _is_text_field(section_name, field_name) and not isinstance(value, str):
        value = raw_value  # data.root=2024 names a folder, not a number
    return section_name, field_name, value


def _is_text_field(section_name: str, field_name: str) -> bool:
    section_name, field_name = MOVED_KEYS.get(f"{section_name}.{field_name}", f"{section_name}.{field_name}").split(".", 1)
    section_type = _section_types().get(section_name)
    return section_type is not None and typing.get_type_hints(section_type).get(field_name) is str


def apply_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    for text in overrides:
        section_name, field_name, value = parse_override(text)
        apply_values(config, {section_name: {field_name: value}}, source=f"override '{text}'")
    return config


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> ExperimentConfig:
    """Defaults, then the experiment file's bases (if any), the file itself, then ``section.field=value`` overrides."""
    config = ExperimentConfig()
    if path is not None:
        own_values = _apply_experiment_file(config, Path(path), chain=[])
        config.name = own_values.get("name", Path(path).stem)  # a base's name is not inherited
    return apply_overrides(config, list(overrides))


def _read_experiment_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: experiment config file not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def _apply_experiment_file(config: ExperimentConfig, path: Path, chain: list[Path]) -> dict:
    """Applies ``path``'s base file first (recursively), then ``path``'s own values; returns those values."""
    if path.resolve() in chain:
        cycle = " -> ".join(str(step) for step in [*chain, path.resolve()])
        raise ConfigError(f"{path}: experiment files name each other as base: {cycle}")
    values = _read_experiment_file(path)
    base = values.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base must be the path of another experiment file, got {base!r}")
        base_path = path.parent / base
        if not base_path.is_file():
            raise ConfigError(f"{path}: base '{base}' not found (looked for {base_path})")
        _apply_experiment_file(config, base_path, [*chain, path.resolve()])
    apply_values(config, values, source=str(path))
    return values


def to_dict(config: ExperimentConfig) -> dict:
    return dataclasses.asdict(config)


def to_toml(config: ExperimentConfig) -> str:
    """The resolved config as TOML, readable back with ``load_config``."""
    values = to_dict(config)
    lines = [f"name = {_toml_value(values.pop('name'))}"]
    for section_name, section_values in values.items():
        lines.append(f"\n[{section_name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in section_values.items())
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    # TOML basic strings cannot hold raw control characters (a newline in a name would
    # make the run's config.toml unreadable); write them as \uXXXX escapes.
    escaped = re.sub(r"[\x00-\x1f\x7f]", lambda match: f"\\u{ord(match.group()):04x}", escaped)
    return f'"{escaped}"'


def flatten(values: dict) -> dict:
    """``{"decoder": {"cell": "gru"}}`` -> ``{"decoder.cell": "gru"}`` (top-level ``name`` stays)."""
    flat = {}
    for section, fields in values.items():
        if isinstance(fields, dict):
            flat.update({f"{section}.{field}": value for field, value in fields.items()})
        else:
            flat[section] = fields
    return flat

