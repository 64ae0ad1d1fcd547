"""`moshi-mlx serve`: the model family behind the protocols its clients already speak.

One thread owns every MLX object (`worker.ModelThread`); aiohttp serves the network side.
"""
