"""Meaningless class names for the ordering study on a dataset of your own
(``configs/studies/ordering.yaml``: zero-shot at chance needs names that mean nothing to the text
tower): prints a ``data.classnames`` value with one word per class of the dataset the given
``fedmoap fit`` arguments select.

    python scripts/nonsense_names.py --data.source DIR [other fit arguments]
"""

from __future__ import annotations

import sys

WORDS = ["blicket", "dax", "wug", "fep", "toma", "zorp", "kiki", "bouba", "gazzer", "mib"]
"""The first 10 words (Fashion-MNIST's in configs/studies/ordering.yaml)."""


def nonsense_names(count: int) -> list[str]:
    """``count`` distinct words: :data:`WORDS`, then consonant-vowel pseudo-words (``bafo``, ...)."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    made = (f"{c1}{v1}{c2}{v2}" for c1 in consonants for v1 in vowels for c2 in consonants for v2 in vowels)
    out = list(WORDS[:count])
    while len(out) < count:
        word = next(made)
        if word not in out:
            out.append(word)
    return out


def main(argv: list[str] | None = None) -> str:
    from fedmoap.data.sources import load_source
    from fedmoap.run.parse import parse_fit

    cfg, _, _ = parse_fit(["fit", *(sys.argv[1:] if argv is None else argv)])
    text = "[" + ", ".join(nonsense_names(len(load_source(cfg.data).classnames))) + "]"
    print(text)
    return text


if __name__ == "__main__":
    main()
