"""What both packages stand on: the error base and the one exit-code table, signals that unwind
like Ctrl-C, atomic writes, opening files someone else named, bounded JSON, and progress lines.

This package imports nothing from `mirror` or `trainer`: it is the bottom layer, and each of its
modules is usable on its own.
"""
