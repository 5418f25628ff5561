"""Converters between a DeepFaceLab SAEHD model folder and a TorchSAE training checkpoint.

Why a package above ``train``: a conversion builds the model (``models.registry``), the optimizer
(``optim``) and the typed checkpoint (``train.checkpoint``), while the file formats themselves stay in
the torch-free ``torchsae.dfl`` layer below everything. ``dfl_import`` reads a folder into a checkpoint
``torchsae train --resume`` continues; ``dfl_export`` writes a checkpoint back as a folder.
"""
