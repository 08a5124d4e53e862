"""Rebuilds a ``torch`` artifact into an ``nn.Module``.

A torch artifact stores a state dict (``model.pt``, read with ``weights_only=True``: no code
runs) and a recipe in ``meta["model"]`` saying how to build the module it belongs to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convert.base import Artifact
from convert.errors import ConvertError


def import_factory(spec: str):
    """Imports ``package.module:function``.

    Raises:
        ConvertError: Malformed spec, missing module or attribute.
    """
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConvertError(f"factory {spec!r} is not of the form 'package.module:function'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConvertError(f"factory {spec!r}: cannot import {module_name!r} ({e}).",
                           hint="install the package or put it on PYTHONPATH.") from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ConvertError(f"factory {spec!r}: {module_name!r} has no {attr!r}.") from None
    return obj


def build_module(recipe: dict[str, Any]):
    """Builds an untrained module from a recipe (see the module docstring)."""
    from convert.models import ARCHITECTURES, architecture

    if recipe["source"] in ARCHITECTURES:
        return architecture(recipe["source"]).from_recipe(recipe)
    if recipe["source"] == "python":
        import torch

        module = import_factory(recipe["factory"])(**recipe.get("kwargs", {}))
        if not isinstance(module, torch.nn.Module):
            raise ConvertError(f"factory {recipe['factory']!r} returned {type(module).__name__}, "
                               "not a torch.nn.Module.")
        return module.eval()
    raise ConvertError(f"unknown model recipe source {recipe['source']!r}.")


def load_module(artifact: Artifact):
    """Rebuilds the module of a ``torch`` artifact, weights loaded, in eval mode and float32."""
    import torch

    module = build_module(artifact.meta["model"])
    state = torch.load(Path(artifact.file), map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    if artifact.meta.get("truncated"):
        module.truncate_head()
    return module.float().eval()


def save_state(module, path: Path) -> None:
    """Writes a module's state dict (float32, contiguous) deterministically."""
    import torch

    torch.save({k: v.detach().float().contiguous() if v.is_floating_point() else v.detach().contiguous()
                for k, v in module.state_dict().items()}, path)
