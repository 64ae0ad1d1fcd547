"""The language models and their loading: config, Helium + depth decoder, conditioners, weights."""
