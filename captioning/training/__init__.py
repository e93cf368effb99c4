"""Training: the run loop (loop.py) and its phases (the feature cache, fine-tuning, self-critical
training), checkpoints, validation, gradient logging, augmentation and distribution.
"""
