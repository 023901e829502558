# shellcheck shell=bash disable=SC2034
# Sourced by scripts/backup and scripts/restore: their configuration (the
# variables Sluice itself reads, optionally from an env file), the Python
# helper's venv, and PostgreSQL's client tools. Nothing here prints a secret.

# The PyPI packages the helper (scripts/backup-tool.py) needs, pinned.
BACKUP_REQUIREMENTS="boto3==1.44.5 redis==8.1.0"

# Sluice's tables, all in the schema public: every table its migrations
# create (MIGRATIONS in actors/backends/src/store/postgres.rs) and
# sluice_migrations. The backup dumps only these (their indexes, constraints
# and sequences come along) and the restore drops and makes again only
# these: any other table of the database is never read nor touched. A unit
# test there (backup_tables_are_the_migrations_tables) fails when a
# migration creates a table missing here: keep this one line as it is.
SLUICE_TABLES="sessions messages files responses settings sluice_migrations"

backup_root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
backup_tool="$backup_root_dir/scripts/backup-tool.py"

die() { echo "${0##*/}: $*" >&2; exit 1; }
say() { echo "${0##*/}: $*" >&2; }

# Reads KEY=VALUE lines of a docker-compose style env file into the
# environment (the file's values win over the environment's). Blank lines
# and `#` comments are skipped; `export ` before a name is allowed; a value
# in single or double quotes is taken as written between them; an unquoted
# value ends at ` #`. The file is parsed, never executed.
load_env_file() {
  local file="$1" line name value n=0
  [ -r "$file" ] || die "cannot read the env file $file"
  while IFS= read -r line || [ -n "$line" ]; do
    n=$((n + 1))
    line="${line%$'\r'}"
    [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
    if [[ ! "$line" =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
      die "$file:$n: not a NAME=VALUE line"
    fi
    name="${BASH_REMATCH[2]}"
    value="${BASH_REMATCH[3]}"
    if [[ "$value" =~ ^\"(.*)\"[[:space:]]*(#.*)?$ ]] || [[ "$value" =~ ^\'(.*)\'[[:space:]]*(#.*)?$ ]]; then
      value="${BASH_REMATCH[1]}"
    else
      value="${value%%[[:space:]]#*}"
      value="${value%"${value##*[![:space:]]}"}"
    fi
    export "$name=$value"
  done <"$file"
}

# Resolves the backends' settings from the environment, as Sluice does
# (src/config.rs): the SLUICE_ name first, then its alias.
resolve_config() {
  PG_URL="${SLUICE_POSTGRES_URL:-${POSTGRES_URL:-}}"
  export BK_S3_ENDPOINT="${SLUICE_S3_ENDPOINT:-}"
  export BK_S3_BUCKET="${SLUICE_S3_BUCKET:-sluice}"
  export BK_S3_REGION="${SLUICE_S3_REGION:-us-east-1}"
  export BK_S3_ACCESS_KEY="${SLUICE_S3_ACCESS_KEY:-}"
  export BK_S3_SECRET_KEY="${SLUICE_S3_SECRET_KEY:-}"
  local chroma="${SLUICE_CHROMA_URL:-}"
  if [ -z "$chroma" ] && [ -n "${CHROMA_HOST:-}" ]; then
    local host="$CHROMA_HOST"
    [[ "$host" == *:* && "$host" != \[* ]] && host="[$host]"
    chroma="http://$host:${CHROMA_PORT:-8000}"
  fi
  export BK_CHROMA_URL="${chroma%/}"
  export BK_REDIS_URL="${SLUICE_REDIS_URL:-${REDIS_URL:-}}"
  if [ -n "$BK_S3_ENDPOINT" ] && { [ -z "$BK_S3_ACCESS_KEY" ] || [ -z "$BK_S3_SECRET_KEY" ]; }; then
    die "SLUICE_S3_ENDPOINT is set but SLUICE_S3_ACCESS_KEY or SLUICE_S3_SECRET_KEY is not"
  fi
}

# The Python interpreter with the helper's packages: $SLUICE_BACKUP_PYTHON
# if set (an interpreter that already has them, for machines without PyPI),
# else a venv made on first use under the cache directory.
ensure_python() {
  if [ -n "${SLUICE_BACKUP_PYTHON:-}" ]; then
    BK_PYTHON="$SLUICE_BACKUP_PYTHON"
    "$BK_PYTHON" -c 'import boto3, redis' 2>/dev/null ||
      die "SLUICE_BACKUP_PYTHON ($BK_PYTHON) cannot import boto3 and redis"
    return
  fi
  local venv="${XDG_CACHE_HOME:-$HOME/.cache}/sluice/backup-venv"
  BK_PYTHON="$venv/bin/python"
  if [ -x "$BK_PYTHON" ] && [ "$(cat "$venv/requirements" 2>/dev/null)" = "$BACKUP_REQUIREMENTS" ]; then
    return
  fi
  mkdir -p "$(dirname "$venv")"
  (
    # One installer at a time (two backups starting together).
    command -v flock >/dev/null && flock 9
    if [ -x "$BK_PYTHON" ] && [ "$(cat "$venv/requirements" 2>/dev/null)" = "$BACKUP_REQUIREMENTS" ]; then
      exit 0
    fi
    say "installing $BACKUP_REQUIREMENTS into $venv (once)"
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    # shellcheck disable=SC2086
    "$venv/bin/pip" install -q --disable-pip-version-check $BACKUP_REQUIREMENTS >&2 ||
      { rm -rf "$venv"; die "pip install $BACKUP_REQUIREMENTS failed"; }
    echo "$BACKUP_REQUIREMENTS" >"$venv/requirements"
  ) 9>"$(dirname "$venv")/backup-venv.lock"
}

# PostgreSQL's client tools: the newest /usr/lib/postgresql/*/bin, else PATH.
# (pg_dump must be at least as new as the server it dumps.)
pg_tool() {
  local name="$1" newest
  newest="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -1)"
  if [ -n "$newest" ] && [ -x "$newest/$name" ]; then
    echo "$newest/$name"
  elif command -v "$name" >/dev/null; then
    command -v "$name"
  else
    die "no $name (install PostgreSQL's client: apt-get install postgresql-client)"
  fi
}

# Splits $PG_URL into a URL without its password (PG_URL_SAFE, fine on a
# command line and in a log) and the password (exported as PGPASSWORD for
# libpq), so the password never shows in `ps`: neither `user:password@` nor
# a `password=` query parameter stays in the URL (the query's wins, as in
# Sluice's driver). The URL is read as Sluice's driver (tokio-postgres)
# reads it, not as a browser would: the userinfo ends at the first `@`, so
# a password may hold `#`, `?` and `/` as they are (only `@` and `%` need
# percent-encoding); see pg_url in backup-tool.py. Also sets PG_URL_HOST
# and PG_URL_DB (for messages and MANIFEST.json; empty if the URL has
# none). The URL goes to Python in the environment, never in argv, and the
# answer comes back NUL-separated (a password may hold a newline).
split_pg_url() {
  local fields=()
  mapfile -d '' -t fields < <(PG_URL="$PG_URL" python3 "$backup_tool" pg-url)
  [ "${#fields[@]}" = 4 ] || die "cannot read the PostgreSQL URL (SLUICE_POSTGRES_URL or POSTGRES_URL)"
  PG_URL_SAFE="${fields[0]}"
  PG_URL_HOST="${fields[2]}"
  PG_URL_DB="${fields[3]}"
  if [ -n "${fields[1]}" ]; then export PGPASSWORD="${fields[1]}"; fi
}

# `sluice --version`, if a binary can be found ($SLUICE_BIN, PATH, this
# checkout's target directory); empty otherwise.
sluice_version() {
  local bin
  for bin in "${SLUICE_BIN:-}" "$(command -v sluice 2>/dev/null || true)" \
    "${CARGO_TARGET_DIR:-$backup_root_dir/target}/release/sluice" \
    "${CARGO_TARGET_DIR:-$backup_root_dir/target}/debug/sluice"; do
    if [ -n "$bin" ] && [ -x "$bin" ]; then
      "$bin" --version 2>/dev/null | head -1 && return 0
    fi
  done
  return 0
}
