"""Faces in photos: BlazeFace detection, alignment to the bundle's template, one jitted program.

  from gender_jax import faces
  pipeline = faces.FacePipeline(bundle, detector="full", max_faces=8)
  pipeline([uint8_image, ...])  # → per image a list of faces {box, keypoints, score, label, …}

Modules: tflite.py (flatbuffer reader), convert.py (the offline .tflite → weights/ step),
blazeface.py (the NNX networks), anchors.py (anchors, decoding, weighted NMS), align.py
(similarity transform + bilinear warp, templates), pipeline.py (the fused program).
"""


def __getattr__(name):
  # Lazy, so `faces.align` (read by Bundle) does not pull the detector in.
  if name in ("FacePipeline", "Detector"):
    from gender_jax.faces import pipeline
    return getattr(pipeline, name)
  raise AttributeError(f"module 'gender_jax.faces' has no attribute {name!r}")
