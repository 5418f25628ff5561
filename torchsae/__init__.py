"""TorchSAE: DeepFaceLab's SAEHD face-swap autoencoder in PyTorch.

Importing the package is cheap and torch-free: ``torchsae.dfl`` and ``torchsae.config`` work without
torch so that the file-format tools run anywhere.
"""

__version__ = "0.1.0"
