"""mlx_notebook: local LLMs in Jupyter."""
