"""The rule table: op type -> (kind, parameters), loaded from TOML data files."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import OnnxInitError


@dataclass(frozen=True)
class Rule:
    op: str
    kind: str
    params: dict = field(default_factory=dict)

    def get(self, key, default=None):
        return self.params.get(key, default)


def _builtin_text() -> str:
    try:
        return resources.files("onnxinit._rules").joinpath("ops.toml").read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        return (Path(__file__).resolve().parent.parent / "rules" / "ops.toml").read_text()


def _parse(text: str, source: str, known_kinds) -> dict:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise OnnxInitError(f"{source}: not a valid rules file ({exc})") from exc
    table = {}
    for op, entry in data.items():
        if not isinstance(entry, dict) or "kind" not in entry:
            raise OnnxInitError(f"{source}: entry [{op}] needs a `kind`")
        kind = entry["kind"]
        if kind not in known_kinds:
            raise OnnxInitError(f"{source}: entry [{op}] has unknown kind {kind!r} "
                                f"(known: {', '.join(sorted(known_kinds))})")
        table[op] = Rule(op, kind, {k: v for k, v in entry.items() if k != "kind"})
    return table


class RuleTable:
    """Built-in rules, optionally extended or overridden by user files."""

    def __init__(self, extra_files=()):
        from .kinds import KINDS
        self.rules = _parse(_builtin_text(), "built-in rules", KINDS)
        for path in extra_files:
            path = Path(path)
            if not path.is_file():
                raise OnnxInitError(f"{path}: rules file not found")
            self.rules.update(_parse(path.read_text(), str(path), KINDS))

    def lookup(self, node) -> Rule | None:
        domain = node.domain if node.domain not in ("", "ai.onnx") else ""
        if domain:
            return self.rules.get(f"{domain}::{node.op_type}")
        return self.rules.get(node.op_type)
