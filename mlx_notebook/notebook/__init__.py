"""The notebook wing: magics, their parsers, streaming display, widgets and teaching views.

Everything a person sees in a cell lives here, on top of :mod:`mlx_notebook.api`;
nothing below imports it. ``%load_ext mlx_notebook`` loads :mod:`.magics`.
"""
