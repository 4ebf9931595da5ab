"""ShiftWiseNet (and the peer families) as MMDetection / MMSegmentation backbones.

    backbone=dict(type='ShiftWiseNet', arch='tiny', out_indices=(0, 1, 2, 3), drop_path_rate=0.4,
                  layer_scale_init_value=1.0, frozen_stages=-1, norm_eval=False, with_cp=False,
                  sparse=False, deploy=False,
                  init_cfg=dict(type='Pretrained', checkpoint='work_dirs/cls/last.ckpt', prefix='backbone.'))

The wrapper builds the network with ``swtasks.create_model(name, features_only=True, ...)`` and *shares* its
parameter/buffer/submodule tables, so the backbone's state-dict names are the network's own
(``downsample_layers.*``, ``stages.{s}.{b}.*``, ``norm{i}.*`` for the output norms) and a detector checkpoint
reads ``backbone.stages.0.0...`` - the same names the layer-wise lr decay and the checkpoint converters use.
"""

from __future__ import annotations

import copy
import logging
import numbers
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from swtasks.checkpoint import CheckpointMismatchError, LoadReport, load_into, read_checkpoint
from swtasks.mm.checkpoint_io import loading_options
from swtasks.sparse import apply_weight_masks, mask_summary, masks_from_weights, masks_from_zero_weights

# variant aliases between families that spell sizes differently (shiftwise_tiny vs unireplknet_t)
_SIZE_ALIASES = {
    "tiny": "t",
    "small": "s",
    "base": "b",
    "large": "l",
    "t": "tiny",
    "s": "small",
    "b": "base",
    "l": "large",
}
_SHARED_TABLES = (
    "_parameters",
    "_buffers",
    "_non_persistent_buffers_set",
    "_modules",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


class RegistryBackbone(BaseModule):
    """An mmengine ``BaseModule`` around a ``swtasks`` registry network with ``features_only=True``.

    Args:
        arch: a variant name of the family (``'tiny'``, ``'small'``, ..., or the full registry name such as
            ``'shiftwise_tiny'``), or a dict of architecture overrides (``depths``, ``dims``,
            ``kernel_sizes``, ...; ``base`` picks the variant they modify, default ``'tiny'``).
        out_indices: stages whose output maps are returned (each through its own LayerNorm).
        frozen_stages: -1 trains everything; 0 freezes the stem; k >= 1 freezes the stem and stages 1..k
            with their downsampling layers (no gradients, BatchNorm in eval mode): the network's
            ``freeze_stages(k)``, the rule tools/train_cls.py's ``--model.freeze_stages`` applies too. The
            output norms stay trainable (they are new layers).
        norm_eval: keep every BatchNorm in eval mode during training (statistics fixed).
        with_cp: gradient checkpointing of the blocks (less memory, more compute).
        drop_path_rate: stochastic depth rising linearly to this value over the blocks.
        layer_scale_init_value: layer-scale init (1.0 for dense tasks, the reference's setting); ignored by
            families without layer scale when None.
        sparse: keep the sparsity pattern of the loaded weights fixed while fine-tuning (masks on the
            shift-wise operators' zero small kernels).
        deploy: build the re-parameterised inference structure (training-form checkpoints are
            re-parameterised while loading).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH_OR_URL, prefix='backbone.')``; extra keys
            ``strict`` (default True: any missing / unexpected / mis-shaped key is an error) and
            ``map_location``. Other init types go to mmengine's initialisers.
        **model_kwargs: further keyword arguments of the registry factory (validated there).
    """

    family = ""

    def __init__(
        self,
        arch: str | Mapping = "tiny",
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        with_cp: bool = False,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = 1.0,
        sparse: bool = False,
        deploy: bool = False,
        init_cfg: dict | list | None = None,
        **model_kwargs,
    ):
        super().__init__(init_cfg=init_cfg)
        name, overrides = self._resolve_arch(arch)
        num_stages = len(overrides.get("depths", ())) or 4
        self.out_indices = self._check_out_indices(out_indices, num_stages)
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, numbers.Integral):
            raise TypeError(f"frozen_stages must be an int, got {frozen_stages!r}")
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f"frozen_stages must be in [-1, {num_stages}], got {frozen_stages}")
        if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, numbers.Real):
            raise TypeError(f"drop_path_rate must be a float, got {drop_path_rate!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.frozen_stages = int(frozen_stages)
        self.norm_eval = _check_bool("norm_eval", norm_eval)
        self.with_cp = _check_bool("with_cp", with_cp)
        self.sparse = _check_bool("sparse", sparse)
        self.deploy = _check_bool("deploy", deploy)
        if self.sparse and self.deploy:
            raise ValueError(
                "sparse=True needs the training structure; it cannot be combined with deploy=True"
            )
        self.arch = copy.deepcopy(arch)
        self.model_name = name
        self._arch_overrides = dict(overrides)
        kwargs = {**overrides, **model_kwargs}
        if layer_scale_init_value is not None:
            kwargs["layer_scale_init_value"] = layer_scale_init_value
        self._create_kwargs = dict(
            features_only=True,
            out_indices=self.out_indices,
            drop_path_rate=float(drop_path_rate),
            **kwargs,
        )
        self._adopt(self._create(deploy=self.deploy))
        if self.with_cp:
            if not hasattr(self._net, "set_grad_checkpointing"):
                raise ValueError(f"with_cp=True: {type(self._net).__name__} has no set_grad_checkpointing()")
            self._net.set_grad_checkpointing(True)
        self._net.freeze_stages(self.frozen_stages)  # the network's own rule (swtasks.models.common.StageFreezing)

    # ------------------------------------------------------------------ construction

    @classmethod
    def available_archs(cls) -> list[str]:
        from swtasks.models import list_models

        names = list_models(f"{cls.family}_*")
        return [n[len(cls.family) + 1 :] for n in names]

    @classmethod
    def _resolve_arch(cls, arch) -> tuple[str, dict]:
        from swtasks.models import is_model

        if isinstance(arch, Mapping):
            overrides = dict(arch)
            base = overrides.pop("base", "tiny")
            name, _ = cls._resolve_arch(base)
            return name, overrides
        if not isinstance(arch, str):
            raise TypeError(f"arch must be a variant name or a dict of overrides, got {arch!r}")
        candidates = [f"{cls.family}_{arch}", arch]
        if arch in _SIZE_ALIASES:
            candidates.append(f"{cls.family}_{_SIZE_ALIASES[arch]}")
        for cand in candidates:
            if cand.startswith(f"{cls.family}_") and is_model(cand):
                return cand, {}
        known = ", ".join(repr(a) for a in cls.available_archs()) or "(none registered)"
        raise ValueError(f"unknown arch {arch!r} for {cls.__name__}; available: {known}")

    @staticmethod
    def _check_out_indices(out_indices, num_stages: int) -> tuple[int, ...]:
        if isinstance(out_indices, numbers.Integral) and not isinstance(out_indices, bool):
            out_indices = (out_indices,)
        if not isinstance(out_indices, Sequence) or isinstance(out_indices, str) or not out_indices:
            raise TypeError(f"out_indices must be a non-empty sequence of ints, got {out_indices!r}")
        out = []
        for i in out_indices:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):
                raise TypeError(f"out_indices must hold ints, got {i!r} in {out_indices!r}")
            if not -num_stages <= i < num_stages:
                raise ValueError(
                    f"out_indices value {i} is out of range for {num_stages} stages (valid: 0..{num_stages - 1})"
                )
            out.append(int(i) % num_stages)
        if len(set(out)) != len(out):
            raise ValueError(f"out_indices has duplicates: {tuple(out_indices)!r}")
        return tuple(sorted(out))

    def _create(self, deploy: bool) -> nn.Module:
        from swtasks.models import create_model

        return create_model(self.model_name, deploy=deploy, **self._create_kwargs)

    def _adopt(self, net: nn.Module) -> None:
        """Share ``net``'s module tables: the wrapper's children, parameters and buffers ARE the network's."""
        object.__setattr__(self, "_net", net)
        for table in _SHARED_TABLES:
            if hasattr(net, table):
                object.__setattr__(self, table, getattr(net, table))
        # the registry protocol: a features_only network lists exactly its returned maps in feature_info
        chans = [int(f["num_chs"]) for f in net.feature_info]
        self.out_channels = chans

    # ------------------------------------------------------------------ nn.Module behaviour

    @property
    def net(self) -> nn.Module:
        """The wrapped registry network (shares every parameter and buffer with this module)."""
        return self._net

    @property
    def feature_info(self):
        return getattr(self._net, "feature_info", None)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self._net(x))

    def train(self, mode: bool = True):
        super().train(mode)
        self._net.train(mode)  # the network keeps its frozen stages in eval mode (StageFreezing.train)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def no_weight_decay(self):
        fn = getattr(self._net, "no_weight_decay", None)
        return set(fn()) if callable(fn) else set()

    # the family's own layer-id rule for layer-wise lr decay, when it has one (swtasks.models.param_groups)
    @property
    def layer_id(self):
        return getattr(self._net, "layer_id", None)

    @property
    def stage_id(self):
        return getattr(self._net, "stage_id", None)

    @property
    def num_layer_ids(self):
        return getattr(self._net, "num_layer_ids", None)

    @property
    def depths(self):
        stages = getattr(self._net, "stages", None)
        return [len(s) for s in stages] if stages is not None else None

    def reparameterize(self) -> None:
        """Turn the training structure into the deploy structure in place (eval semantics)."""
        self._net.reparameterize()
        self.deploy = True
        self.sparse = False

    switch_to_deploy = reparameterize

    # ------------------------------------------------------------------ weights

    def _pretrained_cfg(self) -> tuple[dict | None, list]:
        cfgs = self.init_cfg
        if cfgs is None:
            return None, []
        cfgs = [cfgs] if isinstance(cfgs, Mapping) else list(cfgs)
        pretrained = [c for c in cfgs if c.get("type") == "Pretrained"]
        others = [c for c in cfgs if c.get("type") != "Pretrained"]
        if len(pretrained) > 1:
            raise ValueError(f"init_cfg has {len(pretrained)} Pretrained entries; give one")
        return (dict(pretrained[0]) if pretrained else None), others

    def init_weights(self) -> None:
        pretrained, others = self._pretrained_cfg()
        if others:
            from mmengine.model import initialize

            initialize(self, others)
        if pretrained is not None:
            if "checkpoint" not in pretrained or not pretrained["checkpoint"]:
                raise ValueError(f"init_cfg {pretrained!r} has no 'checkpoint'")
            self.load_pretrained(
                pretrained["checkpoint"],
                prefix=pretrained.get("prefix"),
                strict=pretrained.get("strict", True),
                map_location=pretrained.get("map_location", "cpu"),
            )
        elif self.sparse:
            print_log(
                f"{type(self).__name__}: sparse=True without a Pretrained checkpoint: masks come from the "
                "initial weights (dense: no mask)",
                logger="current",
                level=logging.WARNING,
            )
            self._apply_sparse_masks()
        self._is_init = True

    @torch.no_grad()
    def load_pretrained(
        self, checkpoint, prefix: str | None = None, strict: bool = True, map_location="cpu",
        trust_pickle: bool = False,
    ) -> dict:
        """Load backbone weights from a checkpoint file / URL / state dict with ``swtasks.checkpoint.load_into``
        (weights-only reading, prefix as a hint, the family's published layout converted, every mismatch
        named). A training-structure file for a ``deploy=True`` backbone is loaded into the training
        structure and re-parameterised. Returns a report dict (``source``, ``selected``, ``loaded``, ``new``,
        ``ignored``). With ``strict=False`` the fitting tensors load and the rest is logged.
        """
        source = checkpoint if isinstance(checkpoint, str) else "state dict"
        if isinstance(checkpoint, str):
            # the run's opt-ins (--trust-pickle, --allow-download: swtasks.mm.checkpoint_io), never the config's
            opts = loading_options()
            checkpoint = read_checkpoint(checkpoint, trust_pickle=trust_pickle or opts.trust_pickle,
                                         map_location=map_location, allow_download=opts.allow_download)
        target = f"{type(self).__name__}(arch={self.arch!r}{', deploy=True' if self.deploy else ''})"
        try:
            report = load_into(self._net, checkpoint, prefix=prefix, strict=True, source=source)
        except CheckpointMismatchError as err:
            report = self._load_training_form(checkpoint, prefix, source) if self.deploy else None
            if report is None:
                if strict:
                    raise CheckpointMismatchError(f"{err} (loading {target})") from None
                report = load_into(self._net, checkpoint, prefix=prefix, strict=False, source=source)
                print_log(f"{err} -- loading the fitting tensors (strict=False)", logger="current",
                          level=logging.WARNING)
        print_log(
            f"{type(self).__name__}: loaded {report.loaded} tensors from {source} ({report.selected}"
            f"{', converted from the published layout' if report.converted else ''}); "
            f"kept at init: {', '.join(report.new) or 'nothing'}; ignored: {', '.join(report.ignored) or 'nothing'}",
            logger="current",
        )
        if self.sparse:
            self._apply_sparse_masks()
        return {"source": source, "selected": report.selected, "loaded": report.loaded, "new": report.new,
                "ignored": report.ignored}

    def _load_training_form(self, checkpoint, prefix, source) -> LoadReport | None:
        """A training-structure checkpoint for a deploy backbone: load it into the training structure, fold,
        copy the deploy weights over. None when the file does not fit the training structure either."""
        train = self._create(deploy=False)
        try:
            report = load_into(train, checkpoint, prefix=prefix, strict=True, source=source)
        except CheckpointMismatchError:
            return None
        train.eval()
        train.reparameterize()
        load_into(self._net, train.state_dict(), strict=True, source=source)
        report.selected += " (training structure, re-parameterised while loading)"
        return report

    # sparse=True: how the loaded weights' zeros become masks (swtasks.sparse), and the report's words
    _sparse_masks = staticmethod(masks_from_weights)
    _sparse_report = ("shift-wise layers", "kernel")

    def _apply_sparse_masks(self) -> dict:
        masks = self._sparse_masks(self._net)
        print_log(f"{type(self).__name__}: sparse=True: {mask_summary(masks, *self._sparse_report)}", logger="current")
        return masks


class ShiftWiseNet(RegistryBackbone):
    """ShiftWiseNet (shift-wise large-kernel ConvNet) backbone; see :class:`RegistryBackbone`."""

    family = "shiftwise"


class UniRepLKNet(RegistryBackbone):
    """UniRepLKNet backbone (``arch`` 'a', 'f', 'p', 'n', 't'/'tiny', 's'/'small', 'b', 'l', 'xl'); see
    :class:`RegistryBackbone`. The published dense-task checkpoints (``backbone.`` keys, ``norm0..3``) load
    as they are; ``deploy=True`` re-parameterises a training-structure file while loading. UniRepLKNet is
    trained dense: ``sparse=True`` is refused."""

    family = "unireplknet"

    def __init__(self, *args, sparse: bool = False, **kwargs):
        if sparse:
            raise ValueError("UniRepLKNet has no sparse training: sparse=True is for ShiftWiseNet and SLaK")
        super().__init__(*args, sparse=False, **kwargs)


class SLaK(RegistryBackbone):
    """SLaK backbone (``arch`` 't'/'tiny', 's'/'small', 'b'/'base'); see :class:`RegistryBackbone`.

    ``sparse=True`` keeps the sparsity pattern of the loaded weights while fine-tuning, as the published
    dense-task backbone does: every conv and linear weight that is exactly zero in the checkpoint is masked
    (``weight_mask`` buffers, swtasks.sparse.unstructured), and the masks are re-applied before every forward
    and before every state-dict export, so masked weights stay zero in the detector's checkpoints."""

    family = "slak"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.sparse:
            self.register_forward_pre_hook(lambda module, args: apply_weight_masks(module._net))
            self._net.register_state_dict_pre_hook(lambda module, prefix, keep_vars: apply_weight_masks(module))

    _sparse_masks = staticmethod(masks_from_zero_weights)
    _sparse_report = ("conv/linear layers", "weight")


class ConvNeXt(RegistryBackbone):
    """ConvNeXt backbone (the published layout; ``arch`` 't', 's', 'b' or 'tiny', 'small', 'base'); see
    :class:`RegistryBackbone`. ``layer_scale_init_value=1.0`` is the published dense-task setting."""

    family = "convnext"


class _KWBackbone(RegistryBackbone):
    """A KernelWarehouse family's backbone. ``arch``: a registry name (``'kw_resnet50_1x'``), the same without
    ``kw_`` (``'resnet50_1x'``) or without the network name (``'50_1x'``), or a dict of overrides with ``base``.
    The attention temperature is fixed at 0 (dense-task fine-tuning, as published). ``frozen_stages`` also
    freezes a warehouse when every layer that draws from it is frozen (a stage's warehouse also serves the
    next stage's first block, so with frozen_stages=1 the stage-1 warehouse keeps training, as published)."""

    family = "kw"
    network = ""
    default_arch = ""

    def __init__(self, arch=None, *args, layer_scale_init_value: float | None = None, sparse: bool = False,
                 **kwargs):
        if sparse:
            raise ValueError(f"sparse=True applies to shift-wise operators; {type(self).__name__} has none")
        super().__init__(self.default_arch if arch is None else arch, *args,
                         layer_scale_init_value=layer_scale_init_value, sparse=False, **kwargs)
        self._net.set_temperature(0.0)

    @classmethod
    def available_archs(cls) -> list[str]:
        from swtasks.models import list_models

        return [n[len("kw_"):] for n in list_models(f"kw_{cls.network}*")]

    @classmethod
    def _resolve_arch(cls, arch) -> tuple[str, dict]:
        from swtasks.models import is_model

        if isinstance(arch, Mapping):
            overrides = dict(arch)
            name, _ = cls._resolve_arch(overrides.pop("base", cls.default_arch))
            return name, overrides
        if not isinstance(arch, str):
            raise TypeError(f"arch must be a variant name or a dict of overrides, got {arch!r}")
        for cand in (arch, f"kw_{arch}", f"kw_{cls.network}{arch}", f"kw_{cls.network}_{arch}"):
            if cand.startswith(f"kw_{cls.network}") and is_model(cand):
                return cand, {}
        known = ", ".join(repr(a) for a in cls.available_archs())
        raise ValueError(f"unknown arch {arch!r} for {cls.__name__}; available: {known}")


class KWResNet(_KWBackbone):
    """KernelWarehouse ResNet backbone (``arch`` 'resnet18_1d4x' ... 'resnet50_4x'); maps of layer1..4."""

    network = "resnet"
    default_arch = "resnet50_1x"


class KWMobileNetV2(_KWBackbone):
    """KernelWarehouse MobileNetV2 backbone (``arch`` 'mobilenetv2_100_1x', ...); maps of features.3/6/13/18.
    Stage k of frozen_stages: the feature modules up to its output (the stem: features.0-1)."""

    network = "mobilenetv2"
    default_arch = "mobilenetv2_100_1x"


class KWConvNeXt(_KWBackbone):
    """KernelWarehouse ConvNeXt backbone (``arch`` 'convnext_t_1x'); ``layer_scale_init_value`` as ConvNeXt's
    (the published dense-task setting 1.0)."""

    network = "convnext"
    default_arch = "convnext_t_1x"

    def __init__(self, arch=None, *args, layer_scale_init_value: float | None = 1.0, **kwargs):
        super().__init__(arch, *args, layer_scale_init_value=layer_scale_init_value, **kwargs)


BACKBONES = (ShiftWiseNet, UniRepLKNet, SLaK, ConvNeXt, KWResNet, KWMobileNetV2, KWConvNeXt)
