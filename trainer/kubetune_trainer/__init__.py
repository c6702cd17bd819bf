"""kubetune trainer: stages a model and data, trains a LoRA adapter, publishes the result.

Importing this package does not import torch; the training modules do.
"""

__version__ = "0.1.0"
