"""Generate the quickstart dataset: every number 0..999 in words, mapped to its digits.

    python examples/quickstart/make_dataset.py > examples/quickstart/numbers.jsonl

"seven hundred and two =>" -> " 702". Deterministic: the file in the repo is this
script's output. The trainer holds out 20% of the rows (seeded), so exact match on
them measures generalisation to numbers the model never saw.
"""

from __future__ import annotations

import json
import random
import sys

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEENS = [
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def in_words(n: int) -> str:
    if n < 10:
        return ONES[n]
    if n < 20:
        return TEENS[n - 10]
    if n < 100:
        tens, ones = divmod(n, 10)
        return TENS[tens] + ("" if ones == 0 else "-" + ONES[ones])
    hundreds, rest = divmod(n, 100)
    head = f"{ONES[hundreds]} hundred"
    return head if rest == 0 else f"{head} and {in_words(rest)}"


def main() -> None:
    numbers = list(range(1000))
    random.Random(7).shuffle(numbers)
    for n in numbers:
        sys.stdout.write(json.dumps({"prompt": f"{in_words(n)} =>", "completion": f" {n}"}) + "\n")


if __name__ == "__main__":
    main()
