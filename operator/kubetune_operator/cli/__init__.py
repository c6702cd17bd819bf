"""Entry points: one module per command, named after it. Nothing else imports from here."""
