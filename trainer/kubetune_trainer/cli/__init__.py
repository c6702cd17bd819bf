"""The command-line entry points, on top of everything else; no other trainer module imports them.

kubetune        (kubetune.py)        validate or run a FineTuneJob manifest on this machine
kubetune-train  (kubetune_train.py)  the trainer pod's entrypoint: trainer.json in, summary out
"""
