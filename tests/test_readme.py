"""Every ```python block of README.md runs as written, so the guide cannot rot."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def _title(block: str) -> str:
    first = next(
        (
            line
            for line in block.splitlines()
            if line.strip() and not line.startswith(("import", "from"))
        ),
        "block",
    )
    return first.strip()[:40]


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.fixture(scope="session")
def readme_wire() -> Iterator[Any]:
    """The local wire server the README's ChatOpenAI / ChatAnthropic examples talk to."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "wire"))
    from wire_server import Reply, WireServer

    server = WireServer(
        default=Reply(
            text="Refunds take five working days.",
            input_tokens=2_400,
            cached_tokens=1_800,
            cache_write_5m=400,
            output_tokens=120,
        )
    ).start()
    yield server
    server.stop()


@pytest.mark.parametrize("block", BLOCKS, ids=[_title(b) for b in BLOCKS])
def test_readme_block_runs(
    block: str,
    store: object,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    readme_wire: Any,
) -> None:
    monkeypatch.chdir(tmp_path)
    # Provider clients find the wire server through their documented environment variables.
    monkeypatch.setenv("OPENAI_BASE_URL", readme_wire.openai_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-readme")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", readme_wire.anthropic_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-readme")
    # A real module, so libraries that resolve annotations (TypedDict states) can find names.
    module = types.ModuleType("readme_block")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(block, str(README), "exec"), module.__dict__)
