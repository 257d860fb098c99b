"""Prune a model and write a vLLM-ready directory from Python: one call, the same job as ``prunenet-export``.

    python examples/python_api.py [MODEL] [OUT]      # default: SmolLM2-135M-Instruct -> out-api

Pre-flight memory check, planning, the export's self-check, the quality report and the vLLM check all
run; ``SELF_DATA=0`` plans from the weights alone (faster), ``HEAL=1`` heals before writing.
"""

import os
import sys

import prunenet

report = prunenet.export(
    sys.argv[1] if len(sys.argv) > 1 else None,
    ratio=0.3, target="vllm", out=sys.argv[2] if len(sys.argv) > 2 else "out-api", force=True,
    self_data=int(os.environ.get("SELF_DATA", 2048)), align=int(os.environ.get("ALIGN", 64)),
    heal=os.environ.get("HEAL") == "1",
)
quality = report["quality"] or {}
print(f"widths {report['widths']}; {report['stats']['param_reduction']:.1%} fewer parameters; "
      f"{report['export']['architecture']}; KL {quality.get('kl', float('nan')):.4f}")
for warning in report["warnings"]:
    print("warning:", warning)
