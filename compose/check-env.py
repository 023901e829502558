#!/usr/bin/env python3
"""Checks compose/.env.example against docker-compose.yml and src/config.rs.

    python3 compose/check-env.py     (from anywhere; exits 1 on a problem)

1. Every variable docker-compose.yml interpolates (${NAME}, ${NAME:-x},
   ${NAME:?msg}, $NAME; `$$` is a literal dollar) is in .env.example; one
   without a default (${NAME} or ${NAME:?msg}) is set there, not only shown
   commented out.
2. Every variable in .env.example (set, or shown as `# NAME=value`) is one
   compose interpolates, or one Sluice reads: a name or an alias in the
   VARS table of src/config.rs, or one of SEED_NAMES below.
3. Every variable in .env.example has a comment of its own just above it.
4. .env.example does not set a Sluice variable (or an alias of one) that
   the compose file pins to a fixed value for the replicas: the pinned
   canonical name would win and the line would do nothing.
5. No variable is listed twice in .env.example.

Standard library only, so CI can run it anywhere.
"""

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMPOSE = HERE / "docker-compose.yml"
ENV_EXAMPLE = HERE / ".env.example"
CONFIG_RS = ROOT / "src" / "config.rs"

# The seed deployment's names Sluice honours (or ignores with a warning),
# in case one is read outside the VARS table.
SEED_NAMES = {
    "ENV",
    "DEBUG",
    "SECRET_KEY",
    "MAX_WORKERS",
    "PROMETHEUS_ENABLED",
    "SENTRY_DSN",
}

NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# ${NAME}, ${NAME-x}, ${NAME:-x}, ${NAME?x}, ${NAME:?x}, ${NAME+x}, ${NAME:+x}
BRACED = re.compile(r"\$\{(" + NAME + r")(?:(:?[-?+])([^}]*))?\}")
BARE = re.compile(r"\$(" + NAME + r")")
ENV_LINE = re.compile(r"^(#\s?)?([A-Z][A-Z0-9_]*)=(.*)$")


def compose_interpolations(text):
    """{name: needs a value} for every variable the compose file fills in."""
    found = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        line = line.replace("$$", "")  # literal dollars, for the container
        for match in BRACED.finditer(line):
            name, op = match.group(1), match.group(2) or ""
            required = op in ("", "?", ":?")
            found[name] = found.get(name, False) or required
        for match in BARE.finditer(BRACED.sub("", line)):
            found[match.group(1)] = True
    return found


def compose_pinned(text):
    """Sluice variables the compose file sets to a value of its own: an
    `environment` key whose value does not interpolate the same name."""
    pinned = set()
    for line in text.splitlines():
        match = re.match(r"^\s+(" + NAME + r"):\s*(.*)$", line)
        if match and "${" + match.group(1) not in match.group(2):
            pinned.add(match.group(1))
    return pinned


def config_vars(text):
    """{canonical name: [aliases]} from the VARS table of config.rs."""
    start = text.index("pub const VARS")
    end = text.index("\n];", start)
    table = text[start:end]
    variables = {}
    current = None
    for line in table.splitlines():
        name = re.search(r'^\s*name:\s*"([^"]+)"', line)
        if name:
            current = name.group(1)
            variables[current] = []
            continue
        aliases = re.search(r"^\s*aliases:\s*&\[(.*)\]", line)
        if aliases and current:
            variables[current] = re.findall(r'"([^"]+)"', aliases.group(1))
    if not variables:
        raise SystemExit(f"check-env: found no variables in {CONFIG_RS}")
    return variables


def env_example(text):
    """[(name, set, lineno, commented above)] for every variable line."""
    entries = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = ENV_LINE.match(line)
        if not match:
            continue
        # The line above must be a comment that is not itself a variable.
        above = lines[i - 1] if i > 0 else ""
        documented = above.startswith("#") and not ENV_LINE.match(above)
        entries.append((match.group(2), match.group(1) is None, i + 1, documented))
    return entries


def main():
    compose_text = COMPOSE.read_text()
    interpolated = compose_interpolations(compose_text)
    pinned = compose_pinned(compose_text)
    variables = config_vars(CONFIG_RS.read_text())
    sluice_names = set(variables) | {a for al in variables.values() for a in al}
    canonical_of = {a: name for name, al in variables.items() for a in al}
    canonical_of.update({name: name for name in variables})
    entries = env_example(ENV_EXAMPLE.read_text())

    problems = []
    listed = {}
    for name, is_set, lineno, documented in entries:
        where = f".env.example:{lineno}"
        if name in listed:
            problems.append(f"{where}: {name} is listed twice (first on line {listed[name]})")
        listed.setdefault(name, lineno)
        if not documented:
            problems.append(f"{where}: {name} has no comment of its own above it")
        if name not in interpolated and name not in sluice_names and name not in SEED_NAMES:
            problems.append(
                f"{where}: {name} is neither interpolated by docker-compose.yml nor a "
                "variable Sluice reads (src/config.rs VARS)"
            )
        canonical = canonical_of.get(name)
        if is_set and canonical in pinned and name not in interpolated:
            problems.append(
                f"{where}: {name} is set, but docker-compose.yml pins {canonical} for the "
                "replicas, which wins: the line does nothing"
            )

    set_names = {name for name, is_set, _, _ in entries if is_set}
    for name, required in sorted(interpolated.items()):
        if name not in listed:
            problems.append(f"docker-compose.yml interpolates {name}, which .env.example lacks")
        elif required and name not in set_names:
            problems.append(
                f"docker-compose.yml needs {name} (no default), but .env.example only "
                "shows it commented out"
            )

    for problem in problems:
        print(f"check-env: {problem}", file=sys.stderr)
    if problems:
        return 1
    sluice_listed = sorted(n for n in listed if n in sluice_names or n in SEED_NAMES)
    compose_only = sorted(n for n in listed if n not in sluice_names and n not in SEED_NAMES)
    print(
        f"check-env: ok: {len(interpolated)} variables interpolated by docker-compose.yml, "
        f"{len(listed)} in .env.example ({len(sluice_listed)} read by Sluice, "
        f"{len(compose_only)} by compose only: {', '.join(compose_only)}), "
        f"{len(sluice_names)} names and aliases in src/config.rs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
