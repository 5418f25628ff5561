"""Modular SAE: per-identity encoders, adapters and decoders that meet in one declared latent.

``latent`` is the contract every part states (what an encoder or adapter produces, what a decoder
consumes); combining parts checks it. The module bank, the training tasks, the part exports and the
hybrid initialisation of SAEHD build on it.
"""
