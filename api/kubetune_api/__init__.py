"""kubetune API types shared by the operator and the trainer: no torch, no Kubernetes client.

spec.py                 the FineTuneJob spec model (the CRD's spec schema is generated from it)
status.py               the FineTuneJob status model (the CRD's status schema), phases, conditions
protocol.py             the messages between trainer and operator, and the failure table
trainer_config.py       spec -> trainer.json (TrainerConfig), and reading a manifest
validation_messages.py  pydantic errors worded as a person would, for every surface
crd.py, docs.py         generators: the CRD YAML, and the reference tables in docs/
"""
