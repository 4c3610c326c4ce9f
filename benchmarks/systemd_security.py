"""Print `systemd-analyze security` for the unit `humwatch install-service` would write here: the overall exposure
and every check that still costs points. Offline (systemd >= 252), so it needs no running systemd.

    python benchmarks/systemd_security.py
"""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from humwatch.agent.service.install import UNIT_NAME, packaged, render_unit, systemd_version  # noqa: E402


def main() -> int:
    version = systemd_version()
    with tempfile.TemporaryDirectory() as tmp:
        unit = pathlib.Path(tmp) / "humwatch@pump1.service"
        unit.write_text(render_unit(packaged(UNIT_NAME), pathlib.Path(shutil.which("true")), version))
        done = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                              capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr.strip(), file=sys.stderr)
        return 1
    print(f"systemd {version}")
    for line in done.stdout.splitlines():
        if line.startswith("✗") or "Overall exposure" in line:
            print(" ".join(line.split()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
