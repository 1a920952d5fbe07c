"""The table a GPU run (benchmarks/gpu.py) ends with: one row per figure worth a glance, each
beside the one-H100 reference figures the run is read against."""
from __future__ import annotations

import json

# One H100 SXM, batch 256, 224 px, bf16, synthetic on-device batches, torch channels_last:
# the figures this run is read against (train img/s eager / torch.compile, inference img/s).
REFERENCE_H100 = {
    "resnet50": dict(eager=3990, compile=5673, inference=12949),
    "resnet18": dict(eager=12034, compile=16304, inference=36119),
    "vgg16": dict(eager=3351, inference=7919),
}


def summary(results: dict) -> list[dict]:
  """One row per figure worth a glance: the table the run ends with."""
  rows = []
  probe_result = results.get("probe", {}).get("result", {})
  measured = probe_result.get("ceilings", {}).get("matmul_tflops")
  for name, record in results.items():
    result = record.get("result") or {}
    if record["status"] != "ok" and not result:
      rows.append(dict(part=name, what=record["status"], value=None, unit="", note=""))
      continue
    if name.startswith(("train_", "torch_")):
      peers = _peer_rates(results.get("torch_" + name.removeprefix("train_")))
      for r in result.get("rows", []):
        if "img_s" not in r:
          rows.append(dict(part=name, what=f"{r.get('arch')} {r.get('impl')}", value=None,
                           unit="img/s", note=r.get("error", "")[:80]))
          continue
        note = [f"MFU {r['mfu']:.1%}" if r.get("mfu") else "",
                f"measured-peak MFU {r['tflops'] / measured:.1%}"
                if measured and r.get("tflops") else "",
                f"compile {r['compile_s']:.1f} s" if r.get("compile_s") else "",
                f"peak {r['peak_gib']:.2f} GiB" if r.get("peak_gib") else ""]
        ref = REFERENCE_H100.get(r.get("arch"), {}).get(
            {"torch eager": "eager", "torch.compile": "compile"}.get(r["impl"], ""))
        if ref:
          note.append(f"reference H100 {ref:,}")
        if r["impl"] == "gender_jax" and r.get("arch") == peers.get("arch"):
          note += [f"× {peer} {r['img_s'] / rate:.2f}" for peer, rate in peers.items()
                   if peer != "arch"]
        rows.append(dict(part=name, what=f"{r['arch']} {r['impl']} {r.get('mode', '')}".strip(),
                         value=r["img_s"], unit="img/s", note=", ".join(n for n in note if n)))
    elif name.startswith("predict_"):
      for r in result.get("rows", []):
        ref = REFERENCE_H100.get(r.get("arch"), {}).get("inference")
        note = f"latency {r['latency_ms']:.2f} ms" + (
            f", reference H100 eager {ref:,} at 256" if ref and r["impl"] == "torch eager"
            and r["batch"] == 256 else "")
        rows.append(dict(part=name, what=f"{r['arch']} {r['impl']} batch {r['batch']}",
                         value=r["img_s"], unit="img/s", note=note))
    elif name == "photos":
      for r in result.get("rows", []):
        rows.append(dict(part=name, what=f"{r['detector']} {r['metric']}", value=r["value"],
                         unit="photos/s", note=r.get("note", "")))
    elif name == "end_to_end":
      for r in result.get("rows", []):
        rows.append(dict(part=name, what=r["run"], value=r["img_s"], unit="img/s",
                         note=f"{r['fraction']:.0%} of on-device" if r.get("fraction") else ""))
      rows.append(dict(part=name, what="grain settings", value=None, unit="",
                       note=json.dumps(result.get("grain"))))
    elif name == "probe":
      c = result.get("ceilings", {})
      rows.append(dict(part=name, what=f"bf16 matmul {c.get('matmul_n')}^3",
                       value=c.get("matmul_tflops"), unit="TFLOP/s",
                       note=result.get("device", {}).get("device_kind", "")))
      rows.append(dict(part=name, what="device copy (read + write)", value=c.get("copy_gbs"),
                       unit="GB/s", note=f"jax {result.get('versions', {}).get('jax')}"))
    if record["status"] != "ok":
      rows.append(dict(part=name, what=record["status"], value=None, unit="", note=""))
  return rows


def _peer_rates(record: dict | None) -> dict:
  """{"arch": …, "torch eager": img/s, "torch.compile": img/s} of a torch_ part's rows."""
  rows = [r for r in ((record or {}).get("result") or {}).get("rows", []) if "img_s" in r]
  out = {r["impl"]: r["img_s"] for r in rows}
  if rows:
    out["arch"] = rows[0]["arch"]
  return out


SUMMARY_COLUMNS = [("part", "part", ""), ("what", "what", ""), ("value", "value", ",.1f"),
                   ("unit", "unit", ""), ("note", "note", "")]
