"""How the MONAI adapters (:mod:`svdharm_cli.transforms.monai`) handle one item: a
MetaTensor's meta kept, a decomposition rebuilt, a sample's mask and a key's kind found,
one draw shared by a sample's keys."""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping
from typing import Any

from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.utils import convert_to_dst_type, convert_to_tensor

from svdharm_cli import transforms as core
from svdharm_cli.core.decomposition import Decomposition
from svdharm_cli.transforms._inputs import kind_for


def run_on(fn: Any, img: Any, mask: Any = None) -> Any:
    """``fn`` on the plain array or tensor of ``img``, the result in ``img``'s type (a
    MetaTensor keeps its meta; a decomposition of a MetaTensor gives one back)."""
    if isinstance(img, Decomposition):
        return rebuild(fn(img, mask=mask), img)
    data = img.as_tensor() if isinstance(img, MetaTensor) else img
    out = fn(data, mask=mask)
    if isinstance(img, MetaTensor):
        result, *_ = convert_to_dst_type(out, dst=img)
        return result
    return out


def rebuild(out: Any, d: Decomposition) -> Any:
    """A result computed from ``d`` as the ``MetaTensor`` it was decomposed from."""
    template = d.template
    if not isinstance(template, MetaTensor):
        return out
    if not get_track_meta():
        return convert_to_tensor(out, track_meta=False)
    return MetaTensor(
        out,
        meta=dict(template.meta),
        applied_operations=list(template.applied_operations),
    )


def as_is(img: Any) -> Any:
    """An input not drawn (``prob``), as MONAI's random transforms return it: a tensor."""
    if isinstance(img, Decomposition):
        return rebuild(img.input(), img)
    return convert_to_tensor(img, track_meta=get_track_meta())


def channel_count(img: Any) -> int:
    if len(img.shape) not in (3, 4):
        raise ValueError(
            f"expected a channel-first image (C, H, W) or volume (C, H, W, D), got shape "
            f"{tuple(img.shape)}; add EnsureChannelFirst before this transform"
        )
    return int(img.shape[0])


def of_kind(transform: core.SVDHarmonize, kind: str | None) -> core.SVDHarmonize:
    """``transform``, or its twin for another ``kind`` (the same reference and options)."""
    if kind is None or kind == transform.kind:
        return transform
    twin = copy.copy(transform)
    twin.kind = kind
    return twin


def mask_of(d: Mapping[Hashable, Any], key: Hashable | None) -> Any:
    if key is None:
        return None
    if key not in d:
        raise KeyError(f"mask_key {key!r} is not in the sample")
    mask = d[key]
    mask = mask.as_tensor() if isinstance(mask, MetaTensor) else mask
    return mask > 0


def shared_draw(
    outer: Any, array: Any, data: Mapping[Hashable, Any], harmonize_always: bool = False
) -> dict[Hashable, Any]:
    """Draw once for the sample (``outer.prob``, then ``array``'s coefficients from the
    first key) and apply the draw to every key."""
    d = dict(data)
    outer.randomize(None)
    first = outer.first_key(d)
    if first == ():
        return d
    mask = mask_of(d, outer.mask_key)
    if outer._do_transform:
        array.randomize(d[first])
    else:
        array.coefficients = None
    if array.coefficients is None and not harmonize_always:
        for key in outer.key_iterator(d):
            d[key] = as_is(d[key])
        return d
    channels = channel_count(d[first])
    for key in outer.key_iterator(d):
        if channel_count(d[key]) != channels:
            raise ValueError(
                f"key {key!r} has {channel_count(d[key])} channels but {first!r} has {channels}: "
                "one draw is shared by the keys of a sample"
            )
        mine = mask_for(d[key], mask, outer.mask_key)
        kind = getattr(outer, "kind", None)
        if kind is None:  # a transform of no reference
            d[key] = array(d[key], mine, randomize=False)
        else:
            d[key] = array(d[key], mine, randomize=False, kind=kind_for(kind, key))
    return d


def mask_for(item: Any, mask: Any, key: Hashable | None) -> Any:
    """The mask to pass with ``item``: none for a decomposition, which carries the mask it
    was made with (refused when it has none but ``mask_key`` names one)."""
    if not isinstance(item, Decomposition):
        return mask
    if mask is not None and item.mask is None:
        raise ValueError(
            f"mask_key {key!r} names a mask, but the decomposition was made without one: "
            "give mask_key to SVDDecomposed"
        )
    return None
