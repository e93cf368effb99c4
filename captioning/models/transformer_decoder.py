"""The Transformer decoder (``decoder.name = "transformer"``): keras-hub TransformerDecoder blocks.

    regions = region_projection(norm(features)) + region positions      (images, regions, width)
    x = token embedding + position embedding                            (rows, length, width)
    x = block_k(x, regions) for each of ``transformer_layers`` blocks     causal self-attention,
                                                                        cross-attention to the regions
    logits = OutputHead([norm(x), token embedding])                     as the RNN decoders' deep output

Every block is keras-hub's ``TransformerDecoder`` (pre-layer-norm), so training runs every
position of a caption at once. Generation is incremental: the cache holds each block's
self-attention keys and values (``(batch, 2, max_length, heads, head_width)``, written one
position per step) and its cross-attention keys and values, computed once per image, so a
step costs one token's work whatever the caption's length. The cache is a dict of tensors
with the batch first, like the RNN decoders', so search.py (greedy, beam, top-k, top-p,
n-gram blocking) and self-critical training run it unchanged.

The attention shown in pictures (``has_attention``) is the last block's cross-attention,
averaged over its heads: ``ScoredCrossAttention`` is keras-hub's cached attention layer that
also keeps the weights it computed.
"""

from __future__ import annotations

import keras
import keras_hub
from keras import layers, ops

# The attention layer TransformerDecoder builds; keras-hub does not export it under keras_hub.layers.
from keras_hub.src.layers.modeling.cached_multi_head_attention import CachedMultiHeadAttention  # noqa: E402

from captioning.models.decoder_base import CaptionDecoder, OutputHead, float32_logits


class ScoredCrossAttention(CachedMultiHeadAttention):
    """keras-hub's cached attention that also keeps its attention weights.

    After a call, ``scores`` holds (batch, heads, queries, keys) float32. It has no weights
    or settings of its own: CaptionTransformerBlock gives its cross-attention layer this
    class after keras-hub built it, so the saved weights are keras-hub's.
    """

    def call(self, query, value, key=None, attention_mask=None, cache=None, cache_update_index=None,
             return_attention_scores=False, training=None):
        outputs = super().call(query, value, key=key, attention_mask=attention_mask, cache=cache,
                               cache_update_index=cache_update_index, return_attention_scores=True, training=training)
        self.scores = ops.cast(outputs[1], "float32")  # (batch, heads, queries, keys)
        if return_attention_scores:
            return outputs
        return outputs[0] if cache is None else (outputs[0], outputs[2])


@keras.saving.register_keras_serializable(package="captioning")
class CaptionTransformerBlock(keras_hub.layers.TransformerDecoder):
    """keras-hub's TransformerDecoder whose cross-attention reports its weights
    (``cross_attention_scores``: (batch, heads, queries, regions) of the last call)."""

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        super().build(decoder_sequence_shape, encoder_sequence_shape)
        if self._cross_attention_layer is not None:
            self._cross_attention_layer.__class__ = ScoredCrossAttention  # same weights, scores kept

    @property
    def cross_attention_scores(self):
        return self._cross_attention_layer.scores


@keras.saving.register_keras_serializable(package="captioning")
class TransformerCaptionDecoder(CaptionDecoder):
    """Region grid + caption prefix -> next-word logits with Transformer blocks (module docstring).

    embedding_dim: the model width (tokens, regions, every block); units: the blocks'
    feed-forward width; transformer_layers, transformer_heads: blocks and attention heads
    (embedding_dim must divide by heads); max_length: the longest caption in tokens (the
    position table and the generation cache); image_norm: layer-normalize every region
    first, as the other decoders do.
    """

    has_attention = True

    def __init__(self, vocab_size, embedding_dim=256, units=1024, transformer_layers=3, transformer_heads=8,
                 dropout=0.1, max_length=24, image_norm=False, output_layer="deep", **kwargs):
        super().__init__(**kwargs)
        if embedding_dim % transformer_heads:
            raise ValueError(f"decoder.embedding_dim={embedding_dim} must divide by "
                             f"decoder.transformer_heads={transformer_heads}")
        if transformer_layers < 1:
            raise ValueError(f"decoder.transformer_layers must be at least 1, got {transformer_layers}")
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.units = units
        self.transformer_layers = transformer_layers
        self.transformer_heads = transformer_heads
        self.dropout_rate = dropout
        self.max_length = max_length
        self.image_norm = image_norm
        self.output_layer = output_layer
        self.region_normalization = layers.LayerNormalization(name="region_normalization") if image_norm else None
        self.region_projection = layers.Dense(embedding_dim, name="region_projection")
        self.region_positions = None  # built with the grid's size
        self.embedding = keras_hub.layers.TokenAndPositionEmbedding(vocab_size, max_length, embedding_dim,
                                                                    name="embedding")
        self.embedding_dropout = layers.Dropout(dropout)
        self.blocks = [CaptionTransformerBlock(units, transformer_heads, dropout=dropout, normalize_first=True,
                                               name=f"block_{index}") for index in range(transformer_layers)]
        self.final_normalization = layers.LayerNormalization(name="final_normalization")
        self.head = OutputHead(vocab_size, embedding_dim, kind=output_layer, dropout=dropout, name="output_head")

    @property
    def head_width(self) -> int:
        return self.embedding_dim // self.transformer_heads

    def build(self, input_shape):
        features_shape, token_shape = input_shape
        regions, channels = features_shape[1], features_shape[-1]
        if regions is None:
            raise ValueError("the transformer decoder needs the number of regions when it is built")
        if self.region_normalization is not None:
            self.region_normalization.build((None, regions, channels))
        self.region_projection.build((None, regions, channels))
        self.region_positions = keras_hub.layers.PositionEmbedding(regions, name="region_positions")
        self.region_positions.build((None, regions, self.embedding_dim))
        self.embedding.build((None, None))
        sequence_shape = (None, None, self.embedding_dim)
        for block in self.blocks:
            block.build(sequence_shape, (None, regions, self.embedding_dim))
        self.final_normalization.build(sequence_shape)
        self.head.build((None, 2 * self.embedding_dim))

    def image_memory(self, features, training=None) -> dict:
        """features: (images, regions, channels) -> {"regions": (images, regions, embedding_dim)}."""
        if not self.built:  # generation before any teacher-forced call
            self.build((tuple(features.shape), (None, None)))
        if self.region_normalization is not None:
            features = self.region_normalization(features)
        regions = self.region_projection(features)  # (images, regions, embedding_dim)
        return {"regions": regions + self.region_positions(regions)}

    def token_embedding(self, token_ids):
        """The token half of the embedding (no positions): the deep output layer's E y."""
        return self.embedding.token_embedding(token_ids)

    def recur(self, memory, token_ids, training=None):
        x = self.embedding_dropout(self.embedding(token_ids), training=training)  # (rows, length, embedding_dim)
        for block in self.blocks:  # causal: position t sees positions <= t only
            x = block(x, memory["regions"], training=training)
        attention = ops.mean(self.blocks[-1].cross_attention_scores, axis=1)  # (rows, length, regions)
        outputs = ops.concatenate([self.final_normalization(x), self.token_embedding(token_ids)], axis=-1)
        return outputs, attention  # (rows, length, 2 * embedding_dim)

    def initial_cache(self, features) -> dict:
        """{"regions", "position": (batch,) int32, and per block "self_k" (batch, 2, max_length,
        heads, head_width) zeros and "cross_k" (batch, 2, regions, heads, head_width), the
        regions' keys and values, "attention": (batch, regions)}."""
        memory = self.image_memory(features, training=False)
        regions = memory["regions"]
        batch = ops.shape(regions)[0]
        cache = {"regions": regions, "position": ops.zeros((batch,), dtype="int32"),
                 "attention": ops.zeros_like(regions[:, :, 0], dtype="float32")}
        probe = ops.zeros((batch, 1, self.embedding_dim), dtype=regions.dtype)
        for index, block in enumerate(self.blocks):
            self_cache = ops.zeros((batch, 2, self.max_length, self.transformer_heads, self.head_width),
                                   dtype=regions.dtype)
            cross_cache = ops.zeros((batch, 2, ops.shape(regions)[1], self.transformer_heads, self.head_width),
                                    dtype=regions.dtype)
            # one call with cross_attention_cache_update_index=0 computes the regions' keys and values
            _, _, cross_cache = block(probe, regions, self_attention_cache=self_cache, self_attention_cache_update_index=0,
                                      cross_attention_cache=cross_cache, cross_attention_cache_update_index=0)
            cache[f"self_{index}"] = self_cache
            cache[f"cross_{index}"] = cross_cache
        return cache

    def step_cache(self, token_ids, cache: dict):
        """token_ids: (batch,) int32 at position cache["position"] -> logits (batch, vocab_size) and the next cache."""
        position = cache["position"][0]  # every row is at the same position
        x = self.embedding(token_ids[:, None], start_index=position)  # (batch, 1, embedding_dim)
        new_cache = dict(cache)
        for index, block in enumerate(self.blocks):
            x, new_cache[f"self_{index}"], _ = block(
                x, cache["regions"], self_attention_cache=cache[f"self_{index}"],
                self_attention_cache_update_index=position, cross_attention_cache=cache[f"cross_{index}"],
                cross_attention_cache_update_index=None)
        new_cache["attention"] = ops.mean(self.blocks[-1].cross_attention_scores, axis=1)[:, 0]  # (batch, regions)
        new_cache["position"] = cache["position"] + 1
        outputs = ops.concatenate([self.final_normalization(x[:, 0]), self.token_embedding(token_ids)], axis=-1)
        return float32_logits(self.output_logits(outputs)), new_cache

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "embedding_dim": self.embedding_dim,
                "units": self.units, "transformer_layers": self.transformer_layers,
                "transformer_heads": self.transformer_heads, "dropout": self.dropout_rate,
                "max_length": self.max_length, "image_norm": self.image_norm, "output_layer": self.output_layer}
