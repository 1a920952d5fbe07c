"""Faces in photos: BlazeFace detection, alignment to the bundle's template, one jitted program.

  from gender_jax.faces.fused import FacePipeline
  pipeline = FacePipeline(bundle, detector="full", max_faces=8)
  pipeline([uint8_image, ...])  # → per image a list of faces {box, keypoints, score, label, …}

Modules, bottom up: tflite.py (flatbuffer reader), blazeface.py (the NNX networks),
anchors.py (anchors, decoding, weighted NMS), align.py (similarity transform + bilinear warp,
templates), tiles.py (a large photo's overlapping windows, merged), fused.py (the
detect → align → classify program, and detection alone),
template.py (measuring a template on training crops), crops.py (photos → aligned crops),
from_tflite.py (the offline .tflite → weights/ step), scenes.py (synthetic photos with
ground truth, for tests and benchmarks).
"""
