"""Models: the CNN encoders, the caption decoders on their shared base, the trainable model, search
(greedy, beam, sampling), mixed precision and the one-file model.
"""
