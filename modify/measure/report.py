"""The block report: every residual block found, what a conversion does to it, MACs before and after.

Example:
    >>> import torchvision, modify
    >>> model = torchvision.models.resnet18(weights=None)
    >>> rows = block_report(model, modify.convert(model, input_size=64), input_size=64)
    >>> [(r.name, r.k) for r in rows if r.converted]
    [('layer1.1', 1), ('layer2.1', 2), ('layer3.1', 4), ('layer4.1', 8)]
"""

from __future__ import annotations

import dataclasses

from torch import nn

from modify.conversion.pipeline import ConversionResult
from modify.measure.profiling import ProfileReport, profile_model

__all__ = ["BlockRow", "ConversionSummary", "block_report", "summarize"]


@dataclasses.dataclass(frozen=True)
class BlockRow:
    """One residual block of the model."""

    name: str  # qualified name ("layer3.1")
    block_type: str  # its class, or "inline"
    stage: int
    index: int
    channels: int  # C
    k: int | None  # channels processed after conversion (a narrowed block's inner width at C, 0 deleted); None if kept
    reason: str | None  # why it stays standard
    macs_before: int | None  # the block's MACs in the original (None for inline blocks)
    macs_after: int | None  # its MACs in the converted model
    action: str = "keep"  # mod | narrow | delete | keep
    fraction: float | None = None  # narrow: the share of every inner width kept

    @property
    def converted(self) -> bool:
        """Whether the conversion changed the block (MoD, narrowed or deleted)."""
        return self.action != "keep"


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
    """Whole-model numbers before and after, and the per-block rows."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    rows: tuple[BlockRow, ...]
    note: str | None = None  # e.g. which default capacity was chosen and why

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["rows"] = [dataclasses.asdict(r) for r in self.rows]
        return data


def block_report(
    original: nn.Module,
    result: ConversionResult,
    *,
    input_size: int = 224,
    before: ProfileReport | None = None,
    after: ProfileReport | None = None,
) -> list[BlockRow]:
    """A row per discovered block, in model order."""
    before = before or profile_model(original, input_size=input_size)
    after = after or profile_model(result.model, input_size=input_size)
    changed = {c.name: c for c in result.converted}
    modules = {c.name: c.module for c in result.converted}
    rows = []
    for plan in result.plans:
        site = plan.site
        skipped = next((s for s in result.skipped if s.name == site.name), None)
        done = changed.get(site.name)
        k = done.k if done is not None else None
        reason = skipped.reason if skipped is not None else None
        if k is None and not site.convertible:
            reason = site.reason  # why it could not be converted says more than "not selected"
        inline = ":" in site.name or site.block_type == "inline"
        target = modules.get(site.name, site.name)
        rows.append(
            BlockRow(
                name=site.name,
                block_type=site.block_type,
                stage=site.stage,
                index=site.index,
                channels=site.channels,
                k=k,
                reason=reason,
                macs_before=None if inline else before.macs_by_module.get(site.name),
                macs_after=(
                    after.macs_by_module.get(target, 0)
                    if done is not None
                    else None
                    if inline
                    else after.macs_by_module.get(target)
                ),
                action=done.action if done is not None else "keep",
                fraction=done.fraction if done is not None else None,
            )
        )
    return rows


def summarize(original: nn.Module, result: ConversionResult, *, input_size: int = 224) -> ConversionSummary:
    """Parameters and MACs of both models plus the block rows."""
    before = profile_model(original, input_size=input_size)
    after = profile_model(result.model, input_size=input_size)
    return ConversionSummary(
        params_before=before.params,
        params_after=after.params,
        macs_before=before.macs,
        macs_after=after.macs,
        rows=tuple(block_report(original, result, input_size=input_size, before=before, after=after)),
        note="; ".join(n for n in (getattr(result, "default_reason", None), *getattr(result, "notes", ())) if n)
        or None,
    )
