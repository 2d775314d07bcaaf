"""The control wing: the kernel side that owns and talks to runners.

The manager (runners by name, eviction, memory pre-flight), the HTTP connection
and its streams, and who owns a runner's processes (one local process, a rank
group, nobody for a remote runner). It never imports MLX or :mod:`mlx_notebook.runner`.
"""
