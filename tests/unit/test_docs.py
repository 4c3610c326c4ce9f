"""The reference pages and the example config agree with the code that defines them."""
import pathlib
import re

import pytest
import tomllib

from humwatch.agent.config import SECTIONS, load_config
from humwatch.docs import PAGES

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "agent" / "service" / "humwatch.example.toml"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_the_committed_reference_pages_are_what_the_code_generates(name):
    committed = (ROOT / "docs" / name).read_text()
    assert committed == PAGES[name](), \
        f"docs/{name} differs from the code: regenerate it with `humwatch docs` from the repository root"


def test_the_example_config_loads_and_every_key_it_mentions_exists_with_its_default():
    """Set lines must load; commented-out `#key = value` lines show the default, or an example of a setting that
    is unset by default."""
    text = EXAMPLE.read_text()
    load_config(EXAMPLE)
    section = None
    mentioned = 0
    for line in text.splitlines():
        if header := re.fullmatch(r"\[(\w+)\]", line):
            section = SECTIONS[header.group(1)]
        elif setting := re.fullmatch(r"#?(\w+) = (.+)", line):
            key, value = setting.groups()
            field = section.__dataclass_fields__.get(key)
            assert field is not None, f"{EXAMPLE.name}: {line!r} is not a setting of its section"
            if line.startswith("#") and field.default is not None:
                shown = tomllib.loads(f"v = {value}")["v"]
                assert shown == field.default, f"{EXAMPLE.name}: {line!r} is not the default"
            mentioned += 1
    assert mentioned >= 20

