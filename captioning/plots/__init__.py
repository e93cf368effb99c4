"""Plots: PNG pictures of learning curves, metric bars, gradient norms and attention maps.
"""
