"""Filter an exported requirements file (uv export) for one target interpreter: keep the requirements whose
environment markers hold there, without their markers, so that ``pip download --python-version ...`` fetches
exactly what an image with that interpreter installs (pip evaluates markers against the running interpreter).

    python scripts/wheelhouse.py IN OUT PYTHON_FULL_VERSION
"""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.markers import Marker


def target(full_version: str) -> dict[str, str]:
    major, minor = full_version.split(".")[:2]
    return {
        "python_full_version": full_version,
        "python_version": f"{major}.{minor}",
        "implementation_name": "cpython",
        "implementation_version": full_version,
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "sys_platform": "linux",
        "os_name": "posix",
    }


def main(source: Path, destination: Path, full_version: str) -> None:
    environment = target(full_version)
    blocks: list[list[str]] = []
    for line in source.read_text().splitlines():
        if line.startswith((" ", "\t")) and blocks:
            blocks[-1].append(line)
        elif line.strip() and not line.startswith("#"):
            blocks.append([line])
    kept = []
    for block in blocks:
        requirement, _, marker = block[0].rstrip(" \\").partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate(environment):
            continue
        kept.append("\n".join([requirement.strip() + " \\", *block[1:]]))
    destination.write_text("\n".join(kept) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
