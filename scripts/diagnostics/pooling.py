"""Zero-shot accuracy of the offline default test set in the full feature space vs after reducing
image and text features to d dims (avg_pool / strided), as the pFedMoAP gating does.

    python scripts/diagnostics/pooling.py
"""
import torch, torch.nn.functional as F
from pathlib import Path
from fedmoap.cli import parse_fit
from fedmoap.backbones import build_backbone
from fedmoap.data.sources import load_source
from fedmoap.data.split import make_split
from fedmoap.features import FeatureCache
from fedmoap.federated_data import gather_features
from fedmoap.gating import reduce_features
from fedmoap.methods.base import PromptClient
cfg,_,_ = parse_fit(["fit","--method","zeroshot","--data.num_clients","10","--data.alpha","0.5"])  # the first offline default
bb = build_backbone(cfg.model, 0)
src = load_source(cfg.data); split = make_split(cfg.data, src, 0)
data = gather_features(cfg.data, src, split, FeatureCache(Path("~/.cache/fedmoap/features").expanduser(), bb, 256, "cpu"))
cl = PromptClient(bb, src.classnames, cfg)
cl.reset(0)
with torch.no_grad(): T = F.normalize(cl.text_features(), dim=-1)
X = F.normalize(data.test_features, dim=-1); y = data.test_labels
def acc(x, t): return ((F.normalize(x,dim=-1) @ F.normalize(t,dim=-1).t()).argmax(1) == y).float().mean().item()
print("full", acc(X, T))
for d in (64,128,256,320,640,1280):
    for how in ("avg_pool","strided"):
        try: print(d, how, acc(reduce_features(X,d,how), reduce_features(T,d,how)))
        except Exception as e: print(d, how, e)
# random projection for comparison
g = torch.Generator().manual_seed(0); P = torch.randn(1280,128,generator=g)
print("randproj128", acc(X@P, T@P))
print("feature min", data.test_features.min().item(), "mean", data.test_features.mean().item())
