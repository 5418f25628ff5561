"""The training side of TorchSAE: the loop, checkpoints, previews, logging and torchrun set-up.

Import the pieces from their modules (``torchsae.train.checkpoint``, ``torchsae.train.trainer``, ...);
this package file stays empty so that reading a checkpoint does not import the whole trainer.
"""
