"""Data: the data sets, image loading and its cache, the vocabulary, the tf.data pipeline and the splits.

The first stage of the pipeline (loader -> encoder -> decoder -> search -> evaluation); it imports
nothing of the package's other stages.
"""
