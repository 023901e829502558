# Sourced by scripts/test and the bench scripts: installs, with apt-get, the
# Debian/Ubuntu packages behind each named need that this machine lacks.
#
#   install_missing postgresql redis nginx curl venv [chromium] [node] [perf]
#                   [prometheus] [openssl] [systemd]

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_missing() {
  local packages=() need
  for need in "$@"; do
    case "$need" in
      postgresql) compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || packages+=(postgresql) ;;
      redis) command -v redis-server >/dev/null || packages+=(redis-server) ;;
      nginx) [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || packages+=(nginx) ;;
      curl) command -v curl >/dev/null || packages+=(curl) ;;
      venv) python3 -c 'import ensurepip, venv' 2>/dev/null || packages+=(python3-venv) ;;
      chromium) [ -x /usr/bin/chromium ] || packages+=(chromium) ;;
      node) command -v node >/dev/null || packages+=(nodejs npm) ;;
      perf) command -v perf >/dev/null || packages+=(linux-perf) ;;
      prometheus) command -v promtool >/dev/null && command -v prometheus >/dev/null || packages+=(prometheus) ;;
      openssl) command -v openssl >/dev/null || packages+=(openssl) ;;
      systemd) command -v systemd-analyze >/dev/null || packages+=(systemd) ;;
      *) echo "install_missing: unknown need $need" >&2; return 1 ;;
    esac
  done
  [ ${#packages[@]} -gt 0 ] || return 0
  printf '\n==> installing %s\n' "${packages[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
}
