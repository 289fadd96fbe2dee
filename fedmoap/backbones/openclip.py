"""open_clip models as frozen backbones, with an exact truncated text path.

The text transformer is causal: a token attends only to earlier ones, so the features at the
end-of-text token do not depend on anything after it. Running the transformer on the first
``max(eot) + 1`` positions of a batch of prompts is therefore exact, and for class-name prompts it
is 3-4x cheaper than the full 77-token context.

Causality gives a second exact saving. Every prompt starts with the same start token and context
vectors, so their hidden states at those positions are the same for all C classes at every layer.
The shared-prefix encoder runs them once per context tensor and runs each class's own tokens (its
name, '.', end token) attending over [the prefix keys and values ; its own, causally]: at 16
context vectors about 5 of 22 positions per class are left.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import Tensor, nn
from torchvision import transforms as T

from fedmoap.backbones.base import Backbone, PromptSlots, ToRGB, _digest_params
from fedmoap.errors import FedmoapError

__all__ = ["MODEL_CONFIG_DIR", "OpenCLIPBackbone"]

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)


class OpenCLIPBackbone(Backbone):
    """A frozen open_clip model (any architecture with a causal CLIP text transformer)."""

    def __init__(self, model: nn.Module, tokenizer: Callable, name: str) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        text = getattr(model, "text", model)  # CustomTextCLIP keeps its text tower under .text
        if not hasattr(text, "token_embedding") or getattr(text, "cls_emb", None) is not None:
            raise FedmoapError(f"model {name!r}: only CLIP-style causal text transformers are supported")
        self.text = text
        self.pool_type = getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax"))
        if self.pool_type not in ("argmax", "eos"):
            raise FedmoapError(f"model {name!r}: text pooling {self.pool_type!r} is not supported")
        self.causal = getattr(text, "attn_mask", None) is not None
        self.truncate = self.causal
        """Cut prompts after the last end-of-text token (exact for causal towers); False runs the
        full context, as the reference code does (benchmarks compare the two)."""
        self.share_prefix = True
        """Encode the start token and context once per context tensor, not once per prompt, where the
        tower allows it (exact); False runs every prompt's full sequence (benchmarks compare)."""
        self._prefix_ok = _shares_prefix_exactly(text)
        self.eos_id = getattr(text, "text_eos_id", getattr(text, "eos_id", None))
        self.embed_dim = _proj_dim(text)
        self.ctx_width = int(text.token_embedding.weight.shape[1])
        self.logit_scale = float(model.logit_scale.detach().exp())
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        visual = model.visual
        if isinstance(visual, open_clip.transformer.VisionTransformer) and visual.attn_pool is None:
            self.vision_width = int(visual.conv1.out_channels)
            self.vision_layers = len(visual.transformer.resblocks)
        cfg = open_clip.get_model_preprocess_cfg(model)
        self.mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
        self.interpolation = cfg.get("interpolation") or "bicubic"
        """Resize interpolation the weights were trained with (the tag's preprocess config)."""
        self.resize_mode = cfg.get("resize_mode") or "shortest"
        """``shortest`` (resize + centre crop), ``longest`` (fit + pad) or ``squash``."""
        self.fill_color = int(cfg.get("fill_color") or 0)
        self._start_checked = False
        self.freeze()

    @classmethod
    def build(
        cls, arch: str, pretrained: str | None, cache_dir: str | None = None, seed: int = 0
    ) -> "OpenCLIPBackbone":
        """Create ``arch`` with weights from ``pretrained``: an open_clip tag (``openai``), an
        ``hf-hub:org/repo`` id, a local checkpoint file, or None for random weights drawn from
        ``seed`` (tests)."""
        name, kwargs = arch, {}
        if pretrained and pretrained.startswith("hf-hub:"):
            name = pretrained
        elif pretrained:
            if ("/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))) and not Path(
                pretrained
            ).exists():
                raise FedmoapError(f"model.pretrained: checkpoint file {pretrained!r} does not exist")
            kwargs = {"pretrained": pretrained, "cache_dir": cache_dir}
        if not name.startswith("hf-hub:") and arch not in open_clip.list_models():
            raise FedmoapError(f"model.arch: unknown open_clip architecture {arch!r}")
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = open_clip.create_model(name, **kwargs)
            tokenizer = open_clip.get_tokenizer(name)
        except FedmoapError:
            raise
        except Exception as exc:  # open_clip raises many kinds for a bad tag, file or hub id
            raise FedmoapError(f"model: cannot load {arch!r} with pretrained={pretrained!r}: {exc}") from exc
        return cls(model, tokenizer, name if pretrained else f"{arch}(random,seed={seed})")

    # ----- images -----------------------------------------------------------------------------
    def image_transform(self, train: bool) -> Callable:
        """The tag's preprocessing (interpolation, resize mode, mean and std); ``train`` adds
        CoOp's augmentation: random resized crop (area 0.08-1) + horizontal flip."""
        s = self.image_size
        mode = T.InterpolationMode.BILINEAR if self.interpolation == "bilinear" else T.InterpolationMode.BICUBIC
        if train:
            head = [T.RandomResizedCrop(s, scale=(0.08, 1.0), interpolation=mode), T.RandomHorizontalFlip()]
        elif self.resize_mode == "squash":
            head = [T.Resize((s, s), interpolation=mode)]
        elif self.resize_mode == "longest":
            from open_clip.transform import CenterCropOrPad, ResizeKeepRatio

            head = [
                ResizeKeepRatio(s, interpolation=mode, longest=1),
                _Described(CenterCropOrPad(s, fill=self.fill_color), f"CenterCropOrPad({s}, fill={self.fill_color})"),
            ]
        else:
            head = [T.Resize(s, interpolation=mode), T.CenterCrop(s)]
        return T.Compose([ToRGB(), *head, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model.encode_image(images)

    def image_tower_parameters(self) -> list[Tensor]:
        return list(self.model.visual.state_dict().values())

    def text_fingerprint(self) -> str:
        return _digest_params([v for k, v in self.model.state_dict().items() if not k.startswith("visual.")])

    def encode_image_tokens(self, images: Tensor) -> Tensor:
        """Per-patch features (N, T, embed_dim), not normalised. ViTs: the patch tokens after the
        final norm and projection. ModifiedResNet (RN50...): the attention pool's output at every
        spatial position (T = H*W of the last feature map, 49 for RN50 at 224 px), each position
        a query of the same attention that pools the image, as FedOTP's modified CLIP; position 0
        (the mean token's output, left out here) is ``encode_image`` exactly."""
        visual = self.model.visual
        if isinstance(visual, open_clip.modified_resnet.ModifiedResNet):
            return _attnpool_all(visual, images)[:, 1:]
        return super().encode_image_tokens(images)

    def describe(self) -> str:
        return f"{self.name} ({type(self.model.visual).__name__})"

    def _vit(self) -> nn.Module:
        if self.vision_width is None:
            raise self._no_tokens()
        return self.model.visual

    def vit_embed(self, images: Tensor) -> Tensor:
        v = self._vit()  # open_clip's VisionTransformer._embeds, without ln_pre
        x = v.conv1(images)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.patch_dropout(x)

    def vit_pre(self, x: Tensor) -> Tensor:
        return self._vit().ln_pre(x)

    def vit_blocks(self) -> list[Callable[[Tensor], Tensor]]:
        transformer = self._vit().transformer
        if transformer.batch_first:
            return list(transformer.resblocks)
        return [lambda x, r=r: r(x.transpose(0, 1)).transpose(0, 1) for r in transformer.resblocks]

    def vit_head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        v = self._vit()
        pooled, tokens = v._pool(x)
        if v.final_ln_after_pool:  # tokens come out of _pool without the final norm then
            tokens = v.ln_post(tokens)
        if v.proj is not None:
            pooled, tokens = pooled @ v.proj, tokens @ v.proj
        return pooled, tokens

    def adapter_blocks(self, tower: str) -> list[tuple[nn.Module, Callable[[Tensor], Tensor]]]:
        """The residual attention blocks of the text tower, or of a ViT image tower, each with its
        first LayerNorm (``ln_1``); none for a CNN image tower."""
        if tower == "image" and self.vision_width is None:
            return []
        tower_module = self.text if tower == "text" else self.model.visual
        return [(block, block.ln_1) for block in tower_module.transformer.resblocks]

    # ----- text -------------------------------------------------------------------------------
    def _tokenize(self, texts: list[str]) -> Tensor:
        """Token ids of ``texts`` on the token embedding's device, after checking once that the
        tokenizer starts every text with the same start token: the prompt layout puts the context
        right after position 0, so a tokenizer without one (mT5, XLM-V) would overwrite a word."""
        if not self._start_checked:
            probe = self.tokenizer(["X", "cat"])
            if probe[0, 0] != probe[1, 0] or probe[0, 0] == probe[0, 1]:
                raise FedmoapError(
                    f"model: {self.name}'s tokenizer does not begin every text with a "
                    "start token; prompt learning here needs one (choose another model)"
                )
            self._start_checked = True
        return self.tokenizer(texts).to(self.text.token_embedding.weight.device)

    def _end_positions(self, tokens: Tensor) -> Tensor:
        """Position of the token the text features are pooled from, per row."""
        if self.pool_type == "argmax":  # end-of-text has the largest id in CLIP's vocabulary
            return tokens.argmax(dim=-1)
        return (tokens == self.eos_id).int().argmax(dim=-1)

    @property
    def text_context_length(self) -> int:
        return int(self.text.positional_embedding.shape[0])

    def prepare_prompts(self, texts: list[str], n_ctx: int) -> PromptSlots:
        tokens = self._tokenize([("X " * n_ctx) + t for t in texts])
        eot = self._end_positions(tokens)
        if int(eot.max()) + 1 >= tokens.shape[1] and (tokens[:, -1] != 0).any():
            raise FedmoapError(
                f"a prompt with {n_ctx} context tokens (method.n_ctx) is longer than the "
                f"model's {tokens.shape[1]}-token context: {max(texts, key=len)!r}"
            )
        length = int(eot.max()) + 1 if self.truncate else tokens.shape[1]
        with torch.no_grad():
            emb = self.text.token_embedding(tokens[:, :length])
        return PromptSlots(
            prefix=emb[:, :1].clone(), suffix=emb[:, 1 + n_ctx :].clone(), n_ctx=n_ctx, extra={"eot": eot}
        )

    def embed_tokens(self, text: str) -> Tensor:
        tokens = self._tokenize([text])[0]
        end = int(self._end_positions(tokens[None])[0])
        with torch.no_grad():
            return self.text.token_embedding(tokens[1:end]).clone()

    def encode_embeddings(self, embeddings: Tensor, slots: PromptSlots, repeats: int) -> Tensor:
        t = self.text
        length = embeddings.shape[1]
        cast = t.transformer.get_cast_dtype()
        x = embeddings.to(cast) + t.positional_embedding[:length].to(cast)
        mask = t.attn_mask[:length, :length] if self.causal else None
        x = t.transformer(x, attn_mask=mask)
        x = t.ln_final(x)
        eot = slots.extra["eot"].repeat(repeats)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return self._project(x)

    def encode_shared_prefix(self, slots: PromptSlots, ctx: Tensor) -> Tensor | None:
        if not (self.share_prefix and self._prefix_ok) or not torch.equal(
            slots.prefix, slots.prefix[:1].expand_as(slots.prefix)
        ):
            return None
        t = self.text
        cast = t.transformer.get_cast_dtype()
        (e, n_ctx, w), (c, s, _) = ctx.shape, slots.suffix.shape
        p = slots.prefix.shape[1] + n_ctx
        pos = t.positional_embedding.to(cast)
        shared = torch.cat([slots.prefix[:1].expand(e, -1, -1), ctx], 1).to(cast) + pos[:p]
        own = (slots.suffix.to(cast) + pos[p : p + s]).expand(e, -1, -1, -1)
        x = torch.cat([shared.reshape(e * p, w), own.reshape(e * c * s, w)])
        future = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
        *blocks, last = t.transformer.resblocks
        for block in blocks:
            x = _shared_prefix_block(block, x, e, p, c, s, future)
        x = _shared_prefix_block(last, x, e, p, c, s, future, pool=slots.extra["eot"] - p)
        return self._project(t.ln_final(x.view(e, c, w)))

    def _project(self, x: Tensor) -> Tensor:
        proj = self.text.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    # ----- deep text prompts (seed-methods; separate from encode_prompts/encode_embeddings) ---
    @property
    def text_layers(self) -> int:
        return len(self.text.transformer.resblocks)

    def encode_prompts_deep(self, slots: PromptSlots, ctx_layers: Sequence[Tensor]) -> Tensor:
        """Deep text prompts (MaPLe/IVLP): the context slots hold ``ctx_layers[0]`` at the input
        and are overwritten with ``ctx_layers[j]`` before block ``j``; the same truncated causal
        path as :meth:`encode_embeddings` (exact: the slots precede every end-of-text token)."""
        if not 1 <= len(ctx_layers) <= self.text_layers:
            raise ValueError(f"{len(ctx_layers)} context layers for a {self.text_layers}-block text tower")
        t, c, n = self.text, slots.num_prompts, slots.n_ctx
        start = slots.prefix.shape[1]
        cast = t.transformer.get_cast_dtype()
        layers = [ctx.to(cast).unsqueeze(0).expand(c, -1, -1) for ctx in ctx_layers]
        x = torch.cat([slots.prefix.to(cast), layers[0], slots.suffix.to(cast)], dim=1)
        length = x.shape[1]
        x = x + t.positional_embedding[:length].to(cast)
        mask = t.attn_mask[:length, :length] if self.causal else None
        first = t.transformer.batch_first
        for j, block in enumerate(t.transformer.resblocks):
            if 0 < j < len(layers):
                x = torch.cat([x[:, :start], layers[j], x[:, start + n :]], dim=1)
            x = block(x, attn_mask=mask) if first else block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        x = t.ln_final(x)
        x = x[torch.arange(c, device=x.device), slots.extra["eot"]]
        proj = t.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj


class _Described:
    """A transform with a ``repr`` that says everything it does (it enters cache keys)."""

    def __init__(self, transform: Callable, description: str) -> None:
        self.transform, self.description = transform, description

    def __call__(self, img):
        return self.transform(img)

    def __repr__(self) -> str:
        return self.description


def _shares_prefix_exactly(text: nn.Module) -> bool:
    """Whether :func:`_shared_prefix_block` reproduces ``text``'s transformer: CLIP's causal mask and
    open_clip's standard blocks (one q/k/v projection, self-attention only)."""
    mask = getattr(text, "attn_mask", None)
    if mask is None or getattr(text, "use_pad_mask", False):
        return False
    if not torch.equal(mask, torch.full_like(mask, float("-inf")).triu(1)):
        return False
    for block in text.transformer.resblocks:
        attn = getattr(block, "attn", None)
        if (
            type(block) is not ResidualAttentionBlock
            or hasattr(block, "ln_1_kv")
            or not isinstance(attn, nn.MultiheadAttention)
            or attn.in_proj_weight is None
            or attn.bias_k is not None
            or attn.add_zero_attn
        ):
            return False
    return True


def _shared_prefix_block(
    block: ResidualAttentionBlock, x: Tensor, e: int, p: int, c: int, s: int, future: Tensor, pool: Tensor | None = None
) -> Tensor:
    """One transformer block on (e*p + e*c*s, W) rows: the e prefixes (p positions each), then the
    c suffixes (s positions each) of every prefix. Matrix products other than attention take all
    rows at once. With ``pool`` (the c suffix positions features are read from), only those rows
    come out, (e*c, W): in the last block nothing else is read."""
    attn, w = block.attn, x.shape[1]
    h, n = attn.num_heads, e * p
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q_p, k_p, v_p = qkv[:n].view(e, p, 3, h, w // h).permute(2, 0, 3, 1, 4).unbind(0)  # (e, h, p, d)
    q, k, v = qkv[n:].view(e, c, s, 3, h, w // h).permute(3, 0, 4, 1, 2, 5).unbind(0)  # (e, h, c, s, d)
    if pool is None:
        o_p = F.scaled_dot_product_attention(q_p, k_p, v_p, is_causal=True)
        o = _suffix_attention(q, k, v, k_p, v_p, future)
        o = torch.cat([o_p.transpose(1, 2).reshape(n, w), o.permute(0, 2, 3, 1, 4).reshape(-1, w)])
    else:
        classes = torch.arange(c, device=x.device)
        x = x[n:].view(e, c, s, w)[:, classes, pool].reshape(e * c, w)
        o = _suffix_attention(q[:, :, classes, pool].unsqueeze(3), k, v, k_p, v_p, future[pool, None])
        o = o.permute(0, 2, 3, 1, 4).reshape(e * c, w)
    x = x + block.ls_1(attn.out_proj(o))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _suffix_attention(q: Tensor, k: Tensor, v: Tensor, k_p: Tensor, v_p: Tensor, hidden: Tensor) -> Tensor:
    """Softmax attention of (e, h, c, sq, d) suffix queries over [prefix keys (e, h, p, d) ; their own
    keys (e, h, c, s, d) where ``hidden`` (broadcast to (c, sq, s)) is False]. The prefix is shared
    by the c classes, so its scores come from one product with the c*sq queries as rows, and no
    per-class copy of it is made."""
    e, h, c, sq, d = q.shape
    p = k_p.shape[2]
    q = q * d**-0.5
    scores = torch.cat(
        [
            (q.reshape(e, h, c * sq, d) @ k_p.transpose(-1, -2)).view(e, h, c, sq, p),
            (q @ k.transpose(-1, -2)).masked_fill(hidden, float("-inf")),
        ],
        -1,
    ).softmax(-1)
    shared = scores[..., :p].reshape(e, h, c * sq, p) @ v_p
    return shared.view(e, h, c, sq, d) + scores[..., p:] @ v


def _attnpool_all(visual: nn.Module, images: Tensor) -> Tensor:
    """(N, 1 + H*W, D): open_clip's ``AttentionPool2d.forward`` (which already runs every token as
    a query) without its final ``x[0]``: the pooled output, then one output per spatial position."""
    x = visual.stem(images)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
    pool = visual.attnpool
    x = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3]).permute(2, 0, 1)  # (HW)NC
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    x = x + pool.positional_embedding[:, None, :].to(x.dtype)
    x, _ = F.multi_head_attention_forward(
        query=x,
        key=x,
        value=x,
        embed_dim_to_check=x.shape[-1],
        num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True,
        training=pool.training,
        need_weights=False,
    )
    return x.permute(1, 0, 2)


def _proj_dim(text: nn.Module) -> int:
    proj = text.text_projection
    return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])
