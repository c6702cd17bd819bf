"""Object identifiers: `file-<random>` and `ftjob-<random>`, as OpenAI's look.

A job id is also the FineTuneJob's name, so it is lowercase letters and digits only (an RFC 1123
name), short enough that the operator's child names (`<name>-train-<attempt>`) stay under 63.
"""

from __future__ import annotations

import secrets
import string

ALPHABET = string.ascii_lowercase + string.digits
RANDOM_LENGTH = 24
FILE_PREFIX = "file-"
JOB_PREFIX = "ftjob-"


def _random() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))


def new_file_id() -> str:
    return FILE_PREFIX + _random()


def new_job_id() -> str:
    return JOB_PREFIX + _random()


def is_file_id(value: str) -> bool:
    rest = value.removeprefix(FILE_PREFIX)
    return value.startswith(FILE_PREFIX) and 0 < len(rest) <= 64 and all(c in ALPHABET for c in rest)


def is_job_id(value: str) -> bool:
    rest = value.removeprefix(JOB_PREFIX)
    return value.startswith(JOB_PREFIX) and 0 < len(rest) <= 40 and all(c in ALPHABET for c in rest)
