#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Check the declared vLLM surface against vLLM releases without installing them.

    python scripts/check_vllm_surface.py 0.32.0 0.33.0          # downloads each release wheel
    python scripts/check_vllm_surface.py path/to/vllm-X.whl      # or reads a wheel you have
    python scripts/check_vllm_surface.py --installed             # the vLLM in this environment

For each release it reads the wheel's Python sources (``pip download --no-deps vllm==X``, about
240-340 MB each, kept in ``--download-dir``), checks every name of
``mipruner_vllm.integration.vllm_surface.SURFACE`` that the release needs (present, and overridden
methods with the same parameters; release-aware entries only on their releases, per-release
locations only on theirs), and prints a Markdown table: one row per release, then where each
name with more than one location resolved on each release (what moved). Exit status 1 if any
release has a problem.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from mipruner_vllm.integration.vllm_surface import (
    SURFACE,
    VllmSource,
    check,
    resolved_location,
)
from mipruner_vllm.integration.vllm_surface.releases import needed_on


def wheel_for(version: str, download_dir: Path) -> Path:
    found = sorted(download_dir.glob(f"vllm-{version}-*.whl"))
    if not found:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                f"vllm=={version}",
                "-d",
                str(download_dir),
            ],
            check=True,
        )
        found = sorted(download_dir.glob(f"vllm-{version}-*.whl"))
    if not found:
        raise SystemExit(f"pip download gave no wheel for vllm=={version} in {download_dir}")
    return found[0]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("releases", nargs="*", help="vLLM versions (0.33.0) or wheel files")
    parser.add_argument("--installed", action="store_true", help="also check the installed vLLM")
    parser.add_argument(
        "--download-dir", type=Path, default=Path(tempfile.gettempdir()) / "vllm-wheels"
    )
    args = parser.parse_args()
    if not args.releases and not args.installed:
        parser.error("give at least one release or --installed")

    sources: list[tuple[str, VllmSource]] = []
    if args.installed:
        installed = VllmSource.installed()
        sources.append((f"{installed.version} (installed)", installed))
    for release in args.releases:
        path = Path(release)
        if not path.is_file():
            args.download_dir.mkdir(parents=True, exist_ok=True)
            path = wheel_for(release, args.download_dir)
        wheel = VllmSource.wheel(path)
        sources.append((wheel.version, wheel))

    failed = False
    print("| vLLM | names it needs (of declared) | problems |\n|---|---|---|")
    moved: list[str] = []
    for label, source in sources:
        problems = check(source)
        failed |= bool(problems)
        needs = sum(needed_on(name, source.version) for name in SURFACE)
        print(f"| {label} | {needs} (of {len(SURFACE)}) | {len(problems) or 'none'} |")
        for problem in problems:
            print(f"|   | | {problem} |")
        for name in SURFACE:
            if len(name.locations) > 1 and needed_on(name, source.version):
                where = resolved_location(source, name)
                moved.append(f"- vllm {label}: `{name.key}` from `{where}`")
    if moved:
        print("\nNames with more than one location (resolved per release):")
        print("\n".join(moved))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
