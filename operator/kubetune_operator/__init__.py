"""kubetune operator (Kopf). Never imports torch. Top-down:

cli/kubetune_operator.py  the `kubetune-operator` command
handlers.py               kopf registrations (indices, one daemon per job, delete)
controller.py             observe -> decide -> apply, the API calls (kube.py), metrics.py
decide.py                 the pure state machine: Snapshot -> Decision
status_from_reports.py    trainer reports -> status fields
pod_outcome.py            what a pod's state means: success, or a failure and whether to retry
manifests.py              pure builders: spec -> Jobs, ConfigMaps, Services
validation.py, conditions.py, views.py, patching.py, settings.py
"""
