"""``truncate_head``: make the detection head return its raw per-level maps."""

from __future__ import annotations

import shutil

from convert.base import Input, Pass, PassConfig, PassResult
from convert.errors import PassError


class TruncateHeadConfig(PassConfig):
    """No parameters: the head's layout is recorded in the artifact's ``head`` metadata."""


class TruncateHead(Pass):
    """Cut post-processing off the head: raw per-level maps out (no decode, sigmoid or concat)."""

    name = "truncate_head"
    version = 1
    Config = TruncateHeadConfig
    inputs = {"model": Input(("torch",), doc="a torch model whose head supports truncate_head()")}
    output = "torch"
    tools = ("torch",)

    def run(self, inputs, out, ctx) -> PassResult:
        from convert.torchmodel import load_module

        art = inputs["model"]
        if art.meta.get("truncated"):
            raise PassError("the model is already truncated.", hint="remove the duplicate truncate_head stage.")
        module = load_module(art)
        if not hasattr(module, "truncate_head") or not hasattr(module, "head_meta"):
            raise PassError(f"the model ({type(module).__name__}) has no truncate_head()/head_meta().",
                            hint="truncation supports YOLOv5-family models; for a python factory model, "
                            "return a module with these methods or drop this stage.")
        module.truncate_head()
        head = module.head_meta()  # names the raw outputs p3, p4, p5 once truncated
        shutil.copyfile(art.file, out / "model.pt")  # same weights: the truncation lives in the metadata
        meta = {**art.meta, "truncated": True, "head": head}
        return PassResult("torch", "model.pt", meta, {"levels": len(head["outputs"])})
