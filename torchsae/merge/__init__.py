"""From a trained model to swapped faces, merged frames and video (DeepFaceLab's steps 7 and 8).

* ``merge.model``: ``load_swapper(path)`` -> a :class:`Swapper` over a checkpoint, ``.onnx`` or ``.dfm``.
* ``merge.faces``: aligned faces grouped by source frame, their frame -> model-crop matrices.
* ``merge.blend``: DeepFaceLab's merger basics (mask modes, erode/blur, overlay/seamless) per face.
* ``merge.run``: ``swap_faces`` and ``merge_frames``, the batched loops behind the CLI.
* ``merge.video``: frames from and to video through imageio-ffmpeg (the ``video`` extra).

Importing this package is light (no torch); the submodules load what they need.
"""

from __future__ import annotations

from torchsae.merge.blend import MergeOptions

__all__ = ["MergeOptions"]
