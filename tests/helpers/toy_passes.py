"""Toy passes for testing the core without torch: they write text files."""

from __future__ import annotations

import time

from pydantic import Field

from convert.base import Input, InputPath, Pass, PassConfig, PassResult
from convert.registry import register_pass


class WriteConfig(PassConfig):
    text: str = Field("hello", description="text to write")
    src: InputPath | None = Field(None, description="a file whose content is appended")
    sleep: float = Field(0.0, ge=0, description="seconds to sleep after writing a 'started' marker")
    marker: str | None = Field(None, description="path of the marker file written when the pass starts")


@register_pass
class Write(Pass):
    """Writes text (and a file's content) to out.txt."""

    name = "toy_write"
    Config = WriteConfig
    output = "text"

    def run(self, inputs, out, ctx):
        c = self.config
        text = c.text + (c.src.read_text() if c.src else "")
        (out / "out.txt").write_text(text)
        if c.marker:
            open(c.marker, "w").close()
        time.sleep(c.sleep)
        return PassResult("text", "out.txt", {"length": len(text)}, {"length": len(text)})


class UpperConfig(PassConfig):
    times: int = Field(1, ge=1, description="how many times to repeat")
    fail: bool = Field(False, description="raise an unexpected error")


@register_pass
class Upper(Pass):
    """Upper-cases its input's text."""

    name = "toy_upper"
    Config = UpperConfig
    inputs = {"model": Input(("text",))}
    output = "text"

    def run(self, inputs, out, ctx):
        if self.config.fail:
            raise RuntimeError("boom")
        text = inputs["model"].file.read_text().upper() * self.config.times
        (out / "out.txt").write_text(text)
        return PassResult("text", "out.txt", dict(inputs["model"].meta))


@register_pass
class NeedsMissing(Pass):
    """Needs a module that is not installed."""

    name = "toy_missing"
    inputs = {"model": Input(("text",))}
    output = "text"
    requires = ("surely_not_installed_module_xyz",)

    def run(self, inputs, out, ctx):  # never reached: the manager checks `requires` first
        raise AssertionError



@register_pass
class Join(Pass):
    """Concatenates the texts of several inputs."""

    name = "toy_join"
    inputs = {"parts": Input(("text",), many=True)}
    output = "text"

    def run(self, inputs, out, ctx):
        (out / "out.txt").write_text("+".join(a.file.read_text() for a in inputs["parts"]))
        return PassResult("text", "out.txt")


class NestedConfig(PassConfig):
    sub: WriteConfig = Field(default_factory=WriteConfig, description="a nested config with a file field")


@register_pass
class Nested(Pass):
    """Writes its nested config's text and file content (a file field one level down)."""

    name = "toy_nested"
    Config = NestedConfig
    output = "text"

    def run(self, inputs, out, ctx):
        c = self.config.sub
        (out / "out.txt").write_text(c.text + (c.src.read_text() if c.src else ""))
        return PassResult("text", "out.txt", {})


@register_pass
class Clock(Pass):
    """Writes the wall-clock time: an output that differs on every build, like a benchmark's."""

    name = "toy_clock"
    Config = UpperConfig
    inputs = {"model": Input(("text",))}
    output = "text"
    machine_dependent = True

    def run(self, inputs, out, ctx):
        (out / "out.txt").write_text(repr(time.time()))
        return PassResult("text", "out.txt", {})


class MeetConfig(PassConfig):
    me: str = Field(description="path of the marker this stage writes when it starts")
    peer: str = Field(description="path of the marker of the stage it waits for")
    timeout: float = Field(60.0, description="seconds to wait for the peer before failing")


@register_pass
class Meet(Pass):
    """Writes its marker, then waits for its peer's: two such stages finish only if they run at once."""

    name = "toy_meet"
    Config = MeetConfig
    output = "text"

    def run(self, inputs, out, ctx):
        import os

        open(self.config.me, "w").close()
        deadline = time.monotonic() + self.config.timeout
        while not os.path.exists(self.config.peer):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.config.peer} never appeared: the stages did not run at once")
            time.sleep(0.05)
        (out / "out.txt").write_text(self.config.me)
        return PassResult("text", "out.txt", {})
