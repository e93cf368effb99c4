"""Evaluation: BLEU, CIDEr-D and the COCO caption metrics, the shapes data set's spatial words,
attention statistics, and scoring a run on a split.
"""
