"""kubetune operator (Kopf). Never imports torch."""
