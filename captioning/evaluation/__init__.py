"""Evaluation: BLEU, CIDEr-D and the COCO caption metrics, attention statistics, and scoring a run
on a split (with the metrics a data set adds, such as the shapes data set's spatial words).
"""
