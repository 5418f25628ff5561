"""DeepFaceLab file formats: JPEG segments, the APP15 metadata pickle, XSeg and landmark masks.

Nothing here imports torch, so ``torchsae inspect`` and the index sidecar stay light.
"""
