"""One OpenAI base URL for every loaded model: a small router process (``%mlx serve --port N``).

Each runner already speaks OpenAI's API behind its own token; tools that take a
single base URL (jupyter-ai, evaluation harnesses) need one address for several
models. The router is a separate process (never an HTTP server inside the
kernel): it holds no model, answers ``/v1/models``, and forwards
``/v1/chat/completions`` and ``/v1/completions`` to the runner named by the
request's ``model``, streaming the answer back as it comes. The kernel sends it
the routing table over its stdin (so runner tokens never travel over HTTP), and
stdin's end is its signal to exit, as for a runner.
"""
