"""Procedural synthetic faces with ground truth, for the demo, the tests and the quality benchmark.

``make_demo_faceset(out_dir, count, seed)`` writes DeepFaceLab-format A and B facesets plus held-out
truth pairs (one scene rendered as both identities), and with ``frames=N`` full frames for the merger
(``demo.frames``: faces placed into scenes, their aligned faces, the same scenes as B);
``render_face(identity, scene)`` draws one face with its landmarks and mask. Only numpy and OpenCV are needed (no torch).
"""

from __future__ import annotations

from torchsae.demo.faceset import DemoFaceset, make_demo_faceset, scene_for
from torchsae.demo.params import DEMO_IDENTITIES, Identity, Scene, identity_for, sample_scene
from torchsae.demo.render import RenderedFace, render_face

__all__ = [
    "DEMO_IDENTITIES",
    "DemoFaceset",
    "Identity",
    "RenderedFace",
    "Scene",
    "identity_for",
    "make_demo_faceset",
    "render_face",
    "sample_scene",
    "scene_for",
]
