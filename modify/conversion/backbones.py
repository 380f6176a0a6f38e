"""Dense-task models: convert the CNN backbone of a segmentation or detection model in place.

A detection model does not trace with torch.fx as a whole (its transform, anchor generator
and heads iterate over Python lists of tensors), and a segmentation model's head is no concern
of a MoD conversion; both hold their CNN as a module that traces on its own:

| model | backbone module | what it is |
|---|---|---|
| FCN, DeepLabV3, LR-ASPP (torchvision.models.segmentation) | ``model.backbone`` | IntermediateLayerGetter over a (dilated) ResNet or MobileNetV3 |
| Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS (torchvision.models.detection) | ``model.backbone.body`` | IntermediateLayerGetter over a ResNet or MobileNetV3, before the FPN |

`convert_backbone` converts that module with `modify.convert` and puts it back into a copy of the
whole model. Dilated stages (FCN's and DeepLab's ``replace_stride_with_dilation``) keep their
dilation and padding in the reduced blocks, so the feature maps keep their size.

Example:
    >>> import torchvision
    >>> model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None)
    >>> result = convert_backbone(model, input_size=64)
    >>> type(result.model).__name__, result.converted[0].name
    ('FCN', 'layer1.1')
"""  # noqa: E501 (a Markdown table keeps one row per line)

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from torch import nn

from modify.conversion.pipeline import ConversionResult, convert
from modify.errors import ConversionError
from modify.io import provenance

__all__ = ["BACKBONE_PATHS", "find_backbone", "convert_backbone"]

# Where torchvision's dense-task models keep their CNN, most specific first.
BACKBONE_PATHS: tuple[str, ...] = ("backbone.body", "backbone")


def find_backbone(model: nn.Module) -> str:
    """The qualified name of the CNN backbone of a segmentation or detection model.

    Returns:
        ``"backbone.body"`` for detection models (the CNN before the FPN), ``"backbone"`` for
        segmentation models.

    Raises:
        ConversionError: the model has neither; the message says what to do instead.

    Example:
        >>> import torchvision
        >>> find_backbone(torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None))
        'backbone.body'
    """
    names = {name for name, _ in model.named_modules()}
    for path in BACKBONE_PATHS:
        if path in names:
            return path
    raise ConversionError(
        f"{type(model).__name__} has no 'backbone' or 'backbone.body' module; expected a torchvision "
        "segmentation model (its CNN is .backbone) or detection model (.backbone.body). For another "
        "model, convert the module that holds its CNN: model.part = modify.convert(model.part, ...).model."
    )


def convert_backbone(model: nn.Module, *, backbone: str | None = None, **kwargs: Any) -> ConversionResult:
    """Converts the CNN backbone of a dense-task model; ``model`` itself is left untouched.

    Args:
        model: a torchvision segmentation or detection model (or any model with such a module).
        backbone: the backbone's qualified name; default `find_backbone`'s answer.
        **kwargs: passed to `modify.convert` (``k``, ``c``, ``recipe``, ``input_size``,
            ``example_inputs``, ``init``, ``leaf_modules``, ``strict``). The example input is
            an image batch as the backbone receives it, default (1, 3, input_size, input_size).

    Returns:
        The `ConversionResult` of the backbone, with ``.model`` the whole model (a copy of
        ``model`` whose backbone is the converted one); block names are relative to the
        backbone (``layer3.1``). `modify.save` / `modify.load` rebuild it when ``model`` came from
        `modify.get_model` (or an import path), as every model the CLI builds does.

    Raises:
        ConversionError: no backbone found; and whatever `modify.convert` raises.
    """
    path = backbone or find_backbone(model)
    try:
        part = model.get_submodule(path)
    except AttributeError:
        raise ConversionError(
            f"backbone {path!r} names no module of {type(model).__name__}; expected a qualified module name "
            "as in model.named_modules()."
        ) from None
    result = convert(part, **kwargs)  # converts a copy; `part` stays as it is
    # A copy of the whole model in which the backbone is the converted one (and not copied again).
    whole = copy.deepcopy(model, {id(part): result.model})
    # What `modify.save` needs to rebuild it: the backbone's conversion, and where it lives.
    provenance.record(whole, "convert", {**provenance.of(result.model).steps[-1].data, "module": path}, base=model)
    return dataclasses.replace(result, model=whole)
