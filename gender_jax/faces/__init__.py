"""Faces in photos: BlazeFace detection, alignment to the bundle's template, one jitted program.

  from gender_jax.faces.detect import Detector
  Detector("full")([uint8_image, ...])  # → per image a list of faces {box, keypoints, score}

Classifying the faces found is inference's work (`gender_jax.inference.photos`).

Modules, bottom up: tflite.py (flatbuffer reader), blazeface.py (the NNX networks),
anchors.py (anchors, decoding, weighted NMS), align.py (similarity transform + bilinear warp,
templates), tiles.py (a large photo's overlapping windows, merged), detect.py
(detection alone, jitted),
template.py (measuring a template on training crops), crops.py (photos → aligned crops),
from_tflite.py (the offline .tflite → weights/ step), scenes.py (synthetic photos with
ground truth, for tests and benchmarks).
"""
