"""What a folder holds, byte for byte: a refused command must leave it exactly as it was."""

from __future__ import annotations

from pathlib import Path


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or ``path`` itself), by relative name, with its bytes."""
    path = Path(path)
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def run_study(root: Path, text: str, name: str = "study") -> tuple[Path, Path, str]:
    """``epsl reproduce`` of the preset ``text`` (written to ``root/<name>.toml``) into
    ``root/out``; it must succeed. Returns the preset's path, the out folder and the output."""
    from click.testing import CliRunner

    from epsl.cli.main import main

    preset = root / f"{name}.toml"
    preset.write_text(text)
    out = root / "out"
    result = CliRunner().invoke(main, ["reproduce", "--preset", str(preset), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return preset, out, result.output
