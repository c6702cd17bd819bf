"""kubetune-api: an OpenAI-compatible fine-tuning API (files and fine_tuning.jobs) over FineTuneJobs.

It never imports torch, the training libraries or the operator: it ships in the operator image.
Pure mapping (OpenAI objects <-> FineTuneJob) lives in `mapping`; `app` holds thin aiohttp handlers.
"""

__version__ = "0.1.0"
