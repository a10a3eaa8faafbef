"""What the repository declares, read from its files: the workspace's binaries (Cargo `[[bin]]`
names and `src/bin/*.rs`), the configuration sections (`SECTIONS` in platform/src/config.rs),
the Dockerfile's binary list and the configuration profiles. Shared by the tests in this
directory; it never builds or runs anything."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def members():
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    return [ROOT / m for m in cargo["workspace"]["members"]]


def binaries():
    """{binary name: its main source file} over every workspace member."""
    out = {}
    for member in members():
        manifest = tomllib.loads((member / "Cargo.toml").read_text())
        for b in manifest.get("bin", []):
            out[b["name"]] = member / b.get("path", f"src/bin/{b['name']}.rs")
        for src in sorted((member / "src" / "bin").glob("*.rs")):
            out.setdefault(src.stem, src)
        for src in sorted((member / "src" / "bin").glob("*/main.rs")):
            out.setdefault(src.parent.name, src)
    return out


def config_sections():
    text = (ROOT / "platform" / "src" / "config.rs").read_text()
    block = re.search(r"pub const SECTIONS: &\[&str\] = &\[(.*?)\];", text, re.S)
    return set(re.findall(r'"([a-z_]+)"', block.group(1)))


def config_fields():
    """Every `pub <name>:` field declared in a `config.rs` of the workspace (the keys a
    `TALLY_<SECTION>__<KEY>` variable may name)."""
    fields = set()
    for path in ROOT.glob("*/src/**/config.rs"):
        fields.update(re.findall(r"^\s*pub ([a-z_][a-z0-9_]*):", path.read_text(), re.M))
    return fields


def dockerfile_binaries():
    text = (ROOT / "Dockerfile").read_text()
    loop = re.search(r"for bin in (.*?); do", text, re.S)
    return loop.group(1).replace("\\", " ").split()


def profiles():
    return sorted((ROOT / "config" / "profiles").glob("*.toml"))
