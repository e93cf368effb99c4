"""Apps: front ends beside the command line, batch captioning of files and folders and the web demo.
"""
