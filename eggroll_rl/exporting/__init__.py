"""`eggroll-rl export`: a run as a Hugging Face model folder, or a PEFT LoRA adapter of what it learned.

The modules, each importing only those above it in this list:

    plan.py      what an export is: ExportPlan (which step, from where), ExportResult, AdapterReport,
                 ExportError, and plan_export
    model.py     the merged model's files: weights (checkpoint or replay), config, tokenizer, checks
    adapter.py   the learned change ΔW as a PEFT LoRA adapter, its report and evals
    card.py      the model card (README.md with Hub metadata) and the training-curve plot
    run.py       export_run: plan, write into a temporary folder, card, manifest, rename into place

Named `exporting` because `eggroll_rl.export` is the Python API's function (api.py).
"""

from .plan import AdapterReport, ExportError, ExportPlan, ExportResult
from .run import MANIFEST, export_run, list_files

__all__ = ["MANIFEST", "AdapterReport", "ExportError", "ExportPlan", "ExportResult", "export_run", "list_files"]
