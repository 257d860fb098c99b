"""Prune a model and write a vLLM-ready directory from Python, in a dozen lines.

    python examples/python_api.py [MODEL] [OUT]      # default: SmolLM2-135M-Instruct -> out-api
"""

import os
import sys
from pathlib import Path

from exporters import EXPORTERS, ExportConfig
from exporters.staging import staged_output
from prunenet.planning.planner import PruneConfig, make_plan
from prunenet.planning.stats import parameter_stats
from prunenet.source.resolve import resolve_model

source = resolve_model(sys.argv[1] if len(sys.argv) > 1 else None)
out = Path(sys.argv[2] if len(sys.argv) > 2 else "out-api")
config = PruneConfig(ratio=0.3, align=int(os.environ.get("ALIGN", 64)), self_data=int(os.environ.get("SELF_DATA", 2048)))
result = make_plan(source.path, config)  # trains the policy, allocates widths, selects neurons
with staged_output(out, force=True) as stage:  # appears atomically, or not at all
    report = EXPORTERS["vllm"](source.path, result.plan, stage, ExportConfig())
stats = parameter_stats(source.path, result.plan)
print(f"widths {result.plan.widths}; {stats['param_reduction']:.1%} fewer parameters; {report['architecture']}")
