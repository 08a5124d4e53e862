"""Progress: bars on a terminal only, one line per stage otherwise, --json output never mixed with them."""

from __future__ import annotations

import json
import sys

from convert.base import Pass, PassResult, RunContext
from convert.registry import register_pass


@register_pass
class Slow(Pass):
    """Iterates with a progress bar, as calibration and evaluation do."""

    name = "toy_progress"
    output = "text"

    def run(self, inputs, out, ctx):
        n = sum(1 for _ in ctx.bar(range(40), desc="items"))
        (out / "n.txt").write_text(str(n))
        return PassResult("text", "n.txt", {}, {"n": n})


SPEC = "stages: {a: {pass: toy_progress}, b: {pass: toy_progress, with: {}}}"


def _stage_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[")]


def test_no_bars_when_not_a_terminal_one_line_per_stage_and_clean_json(cli, tmp_path):
    (tmp_path / "s.yaml").write_text(SPEC)
    code, out, err = cli("run", "s.yaml", "--json")  # captured stderr is not a terminal
    assert code == 0 and json.loads(out)["stages"][0]["summary"] == {"n": 40}
    assert len(_stage_lines(err)) == 2 and "\r" not in err and "items" not in err


def test_bars_on_a_terminal_unless_no_progress(cli, tmp_path, monkeypatch):
    (tmp_path / "s.yaml").write_text(SPEC)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    code, out, err = cli("run", "s.yaml", "--json", "--force", "a")
    assert code == 0 and json.loads(out)["stages"][0]["status"] == "ran"  # stdout: the JSON only
    assert "a: items" in err and "\r" in err
    code, out, err = cli("run", "s.yaml", "--json", "--force", "a", "--no-progress")
    assert code == 0 and "items" not in err and "\r" not in err and len(_stage_lines(err)) == 2


def test_run_context_bar_is_named_after_the_stage_and_silent_when_off(capsys):
    assert list(RunContext("calibrate", progress=False).bar(range(3), desc="images")) == [0, 1, 2]
    assert capsys.readouterr().err == ""
    bar = RunContext("calibrate", progress=True).bar(range(3), desc="images")
    assert bar.desc == "calibrate: images" and list(bar) == [0, 1, 2]
    assert "calibrate: images" in capsys.readouterr().err
