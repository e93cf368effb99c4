"""Reports: experiment comparisons, the generated results page and encoder inspection.
"""
