"""``python -m benchmarks --baseline REF``: erlmcp as of a git ref, run beside the working tree's and compared.

The ref's tree is exported with ``git archive REF | tar -x`` into a cache outside the repository
(``~/.cache/erlmcp-bench/<sha>/``, made once per commit) and its server runs with the same interpreter, argv and
environment as the ``erlmcp`` row, from that directory: ``-m app`` puts the working directory first on
``sys.path`` and PYTHONPATH names it too, so the baseline imports its own ``app``, never the working tree's.
"""

from __future__ import annotations

import compileall
import dataclasses
import os
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.servers_run import ROOT, ServerSpec

__all__ = [
    "CACHE",
    "Baseline",
    "baseline_spec",
    "changed_app_files",
    "check_runs_from",
    "compare",
    "comparison_table",
    "export",
    "imported_app",
]

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "erlmcp-bench"
ACCEPTANCE = 0.97  # the rule for refactors: tools/call at 16 clients within 3 % of the code before the change


@dataclass(frozen=True)
class Baseline:
    """A git ref's tree, exported."""

    ref: str
    sha: str
    short: str
    tree: Path
    reused: bool  # the cache already held it


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"--baseline needs {name} on PATH")
    return found


def _git(*args: str) -> str:
    done = subprocess.run([_tool("git"), "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ValueError(f"git {' '.join(args)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout.strip()


def resolve(ref: str) -> tuple[str, str]:
    """The commit a ref names in this repository: its full and its short sha."""
    if not ref or ref.startswith("-"):
        raise ValueError(f"--baseline {ref!r}: not a git ref")
    try:
        sha = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except ValueError:
        raise ValueError(f"--baseline {ref}: not a commit of the repository {ROOT}") from None
    return sha, _git("rev-parse", "--short", sha)


def export(ref: str, cache: Path = CACHE) -> Baseline:
    """``git archive REF | tar -x`` into ``cache/<sha>/`` (outside the repository), reused when present.

    The tree is unpacked into a staging directory, its app/ byte-compiled (as the working tree's is), and
    renamed into place, so a half-written export is never taken for a finished one.
    """
    sha, short = resolve(ref)
    cache = cache.expanduser().resolve()
    if cache.is_relative_to(ROOT):
        raise ValueError(f"the baseline cache {cache} is inside the repository {ROOT}: choose one outside it")
    tree = cache / sha
    if (tree / "app" / "__init__.py").is_file():
        return Baseline(ref, sha, short, tree, reused=True)
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{sha}.", dir=cache))
    try:
        archive = subprocess.Popen(
            [_tool("git"), "-C", str(ROOT), "archive", "--format=tar", sha], stdout=subprocess.PIPE
        )
        assert archive.stdout is not None
        try:
            unpacked = subprocess.run([_tool("tar"), "-x", "-C", str(staging)], stdin=archive.stdout, check=False)
        finally:
            archive.stdout.close()
        if archive.wait() != 0 or unpacked.returncode != 0:
            raise RuntimeError(f"git archive {sha} | tar -x failed (exit {archive.returncode}, {unpacked.returncode})")
        if not (staging / "app" / "__init__.py").is_file():
            raise ValueError(f"--baseline {ref} ({short}) has no app/ package")
        compileall.compile_dir(staging / "app", quiet=1)  # what the server imports from the tree
        try:
            staging.rename(tree)
        except OSError:
            if not (tree / "app" / "__init__.py").is_file():
                raise
            shutil.rmtree(staging)  # another benchmark exported the same commit meanwhile
            return Baseline(ref, sha, short, tree, reused=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Baseline(ref, sha, short, tree, reused=False)


def baseline_spec(current: ServerSpec, baseline: Baseline) -> ServerSpec:
    """The current erlmcp row's interpreter, argv and environment, run from the baseline's tree."""
    inherited = os.environ.get("PYTHONPATH")
    path = os.pathsep.join([str(baseline.tree), inherited]) if inherited else str(baseline.tree)
    return dataclasses.replace(
        current,
        name=f"erlmcp@{baseline.short}",
        cwd=baseline.tree,
        env={**current.env, "PYTHONPATH": path},
        from_tree=True,
    )


def imported_app(spec: ServerSpec) -> Path:
    """The ``app/__init__.py`` the spec's interpreter imports with the spec's working directory and environment."""
    done = subprocess.run(
        [spec.command[0], "-c", "import app; print(app.__file__)"],
        cwd=spec.cwd,
        env={**os.environ, **spec.env},
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(done.stdout.strip()).resolve()


def check_runs_from(pid: int, spec: ServerSpec) -> None:
    """The started server really runs from the spec's tree: its working directory and PYTHONPATH, from /proc."""
    cwd = Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
    environ = dict(
        item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in item
    )
    first_path = environ.get("PYTHONPATH", "").split(os.pathsep)[0]
    interpreter = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    if cwd != spec.cwd.resolve() or first_path != str(spec.cwd) or interpreter != spec.command[0]:
        raise RuntimeError(
            f"{spec.name} (pid {pid}) runs {interpreter} in {cwd} with PYTHONPATH {first_path!r}, "
            f"not {spec.command[0]} in {spec.cwd}"
        )


def changed_app_files(sha: str) -> list[str]:
    """The tracked files under app/ in which the working tree differs from the commit."""
    return _git("diff", "--name-only", sha, "--", "app").splitlines()


def compare(current: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]], at: int) -> dict[str, Any]:
    """current / baseline at ``at`` clients: of the medians, and per round (each round measured the two in turn)."""

    def cells(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return [next(cell for cell in run["load"] if cell["concurrency"] == at) for run in runs]

    ours, theirs = cells(current), cells(baseline)
    found: dict[str, Any] = {"at_clients": at, "rounds": len(ours)}
    for key in ("req_per_s", "cpu_us_per_req"):
        if not all(cell.get(key) for cell in [*ours, *theirs]):
            continue
        mine, base = [float(cell[key]) for cell in ours], [float(cell[key]) for cell in theirs]
        per_round = [round(a / b, 4) for a, b in zip(mine, base, strict=True)]
        found[key] = {
            "current": statistics.median(mine),
            "baseline": statistics.median(base),
            "ratio": round(statistics.median(mine) / statistics.median(base), 4),
            "round_ratios": per_round,
            "spread": [min(per_round), max(per_round)],
        }
    return found


def comparison_table(found: dict[str, Any], current: str, baseline: str) -> str:
    """The comparison as printed: one line per measure, the ratio and the spread of the rounds' ratios."""
    lines = [
        f"{current} / {baseline}: tools/call at {found['at_clients']} clients, medians of {found['rounds']} rounds "
        "(each round measured the two in turn, the order alternating)",
        f"  {'':20} {'current':>10} {'baseline':>10} {'current/baseline':>17}   rounds' ratios (min..max)",
    ]
    for key, label, digits in (("req_per_s", "req/s", 0), ("cpu_us_per_req", "server CPU us/req", 1)):
        if key in found:
            cell = found[key]
            lines.append(
                f"  {label:20} {cell['current']:>10,.{digits}f} {cell['baseline']:>10,.{digits}f} "
                f"{cell['ratio']:>17.3f}   {cell['spread'][0]:.3f}..{cell['spread'][1]:.3f}"
            )
    if "req_per_s" in found:
        ratio = found["req_per_s"]["ratio"]
        verdict = "holds" if ratio >= ACCEPTANCE else "FAILS"
        lines.append(f"  refactor rule (req/s ratio >= {ACCEPTANCE}): {verdict} at {ratio:.3f}")
    return "\n".join(lines)
