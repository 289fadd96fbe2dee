"""A zero-shot sanity gate run before the first round.

Class names that do not name the classes (all numbers, as in ``nelorth/oxford-flowers``) or
that are not in label order (the reference code's set-ordered DomainNet and Office-Caltech10
names, behind its chance-level zero-shot rows) make every prompt-learning number meaningless
while nothing crashes. Two cheap signs are checked: numeric class names, and zero-shot accuracy
of the pretrained backbone at or below chance on (a sample of) the clients' test images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedmoap.backbones.base import Backbone
from fedmoap.data.sources import SourceData
from fedmoap.inputs.features import FeatureCache

__all__ = ["SAMPLE", "TEMPLATE", "numeric_names", "zero_shot_check"]

SAMPLE = 512
"""Test images the zero-shot check looks at (a seeded sample of the clients' test rows)."""
TEMPLATE = "a photo of a {}."


def numeric_names(classnames: list[str]) -> str | None:
    """A warning if every class name is a number, else None."""
    if classnames and all(n.replace(".", "").replace(" ", "").isdigit() for n in classnames):
        return (
            f"every class name is a number ({', '.join(classnames[:3])}, ...): prompts will not "
            "name the classes; set data.classnames to the real names in label order"
        )
    return None


@torch.no_grad()
def zero_shot_check(
    backbone: Backbone, source: SourceData, test_rows: np.ndarray, cache: FeatureCache, image_column: str, seed: int
) -> dict:
    """Zero-shot top-1 accuracy of ``TEMPLATE`` on up to :data:`SAMPLE` of ``test_rows``, with
    the chance level, and a warning if it is at or below chance."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.permutation(np.unique(test_rows))[:SAMPLE])
    feats = cache.get(source.test, source.test_id, rows, image_column)
    slots = backbone.prepare_prompts([TEMPLATE.format(c) for c in source.classnames], 0)
    text = F.normalize(backbone.encode_prompts(slots), dim=-1)
    pred = (feats.to(text.device) @ text.t()).argmax(-1).cpu().numpy()
    labels = source.test_labels[rows]
    acc = float((pred == labels).mean()) if len(rows) else float("nan")
    chance = float(np.bincount(labels).max() / len(labels)) if len(rows) else float("nan")
    out = {"acc": acc, "chance": chance, "images": int(len(rows)), "template": TEMPLATE}
    if len(rows) and acc <= chance:
        out["warning"] = (
            f"zero-shot accuracy {acc:.1%} is at or below chance ({chance:.1%}, the "
            "most frequent class) on the clients' test images: the class names are "
            "likely not aligned with the labels (check data.classnames' order)"
        )
    return out
