"""The law-family catalogue, shipped as `bayescale.models`: one module per family.

Each module defines `Law` objects (see `bayescale.law`); `bayescale.laws()` finds every one of them.
A module's docstring names its source paper and form; each parameter's description and the comment by its
prior give the prior's reasoning.
"""
