"""The method: modules, Eq. 10 scores, criteria, masks, parameter/FLOP accounting, pruned files.

Imports nothing from `dimap.training`.
"""
