#!/usr/bin/env bash
# Installs orch as systemd services on a Debian-like host (run as root). A new cluster:
#
#   deploy/install.sh                       the first host: a controller that bootstraps the
#                                           cluster's trust, and an agent beside it
#   deploy/install.sh --role agent --controller ADDR:4647 --join-token-file FILE
#                                           every other host: an agent that joins with the
#                                           token the first host printed
#   deploy/install.sh --wheels DIR          offline, from a wheel folder (deploy/images/build.sh wheels)
#   deploy/install.sh --uninstall [--purge] remove it (keeps /etc/orch and /var/lib/orch unless --purge)
#
# What it does, each step only when something is missing or different (so a second run
# changes nothing):
#   - a virtual environment in /opt/orch with orch in it (from this checkout, dependencies
#     from the package index, or from --wheels offline); orchctl and the daemons linked into
#     /usr/local/bin;
#   - the user `orch` (the controller runs as it; the agent runs as root, see its unit) and
#     the user `orch-task` (process tasks run as it, never as root unless a node allows it);
#   - /etc/orch/controller.toml (bootstrap = true: on its first start the controller makes a
#     CA, its certificate, the operator's, the first gossip key, the join tokens and the
#     management token) and agent.toml (the controller to join through and the join token's
#     file), with this host's address, only when the file does not exist: an existing one is
#     never touched;
#   - the units deploy/systemd/orch-*.service in /etc/systemd/system, enabled and started
#     (restarted when orch or the unit changed) when systemd runs; otherwise it says so;
#   - on the first host, once the controller has made them: the operator's credentials in
#     /root/.config/orch (orchctl.toml, the CLI certificate, the management token; mode
#     0600), where orchctl finds them, and the agent join token for the other hosts.
#
# --root DIR installs into DIR as if it were / (tests, images): the units are enabled there
# with `systemctl --root` and nothing is started.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  cat >&2 <<'EOF'
Options:
  --role agent|controller|both  what this host runs (default: both)
  --prefix DIR                  the virtual environment (default: /opt/orch)
  --root DIR                    install under DIR instead of / (nothing is started)
  --wheels DIR                  install from the wheels in DIR, without an index
  --python PATH                 the Python (>= 3.11) for the environment (default: /usr/bin/python3)
  --advertise ADDR              this host's address for the configuration (default: found)
  --controller ADDR:PORT        role agent: the controller to join through (and stream to)
  --join-token-file FILE        role agent: the join token (orchctl cluster join-token agent)
  --drivers LIST                role agent: task drivers, comma-separated (default: docker;
                                process runs tasks on the host itself, as orch-task)
  --no-start                    enable the units but do not start them
  --uninstall                   remove orch; keep the configuration and the state
  --purge                       with --uninstall: also remove /etc/orch, /var/lib/orch, user orch
EOF
  exit 2
}

ROLE=both PREFIX=/opt/orch ROOT="" WHEELS="" PYTHON="" ADVERTISE="" START=1 UNINSTALL=0 PURGE=0
CONTROLLER="" TOKEN_FILE="" DRIVERS=docker
while [ $# -gt 0 ]; do
  case "$1" in
    --role) ROLE=${2:?}; shift ;;
    --prefix) PREFIX=${2:?}; shift ;;
    --root) ROOT=$(realpath -m "${2:?}"); shift ;;
    --wheels) WHEELS=$(realpath "${2:?}"); shift ;;
    --python) PYTHON=${2:?}; shift ;;
    --advertise) ADVERTISE=${2:?}; shift ;;
    --controller) CONTROLLER=${2:?}; shift ;;
    --join-token-file) TOKEN_FILE=$(realpath "${2:?}"); shift ;;
    --drivers) DRIVERS=${2:?}; shift ;;
    --no-start) START=0 ;;
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 ;;
    -h|--help) usage ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$ROLE" in
  agent) ROLES=(agent) ;;
  controller) ROLES=(controller) ;;
  both) ROLES=(controller agent) ;;
  *) echo "install.sh: --role must be agent, controller or both, not $ROLE" >&2; exit 2 ;;
esac
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || { echo "install.sh: --purge goes with --uninstall" >&2; exit 2; }
if [ "$ROLE" = agent ] && [ "$UNINSTALL" = 0 ] && { [ -z "$CONTROLLER" ] || [ -z "$TOKEN_FILE" ]; }; then
  echo "install.sh: --role agent needs --controller ADDR:4647 and --join-token-file FILE (print" \
       "the token on the first host: orchctl cluster join-token agent)" >&2; exit 2
fi
if [ "$(id -u)" != 0 ] && [ -z "$ROOT" ]; then
  echo "install.sh: run as root (or with --root DIR to install into a folder)" >&2; exit 1
fi

SRC=$(cd "$(dirname "$0")/.." && pwd)
VENV=$ROOT$PREFIX
ETC=$ROOT/etc/orch
UNITS=$ROOT/etc/systemd/system
STATE=$ROOT/var/lib/orch
SYSUSERS=$ROOT/usr/lib/sysusers.d/orch.conf
BIN=$ROOT/usr/local/bin
CHANGED=0      # anything changed by this run
RESTART=0      # orch or a unit changed: running daemons need a restart

say() { printf '==> %s\n' "$*"; }
changed() { say "$*"; CHANGED=1; }

systemd_runs() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

systemctl_() {
  # systemctl on the running system, or on the folder with --root (links only).
  if [ -n "$ROOT" ]; then systemctl --root="$ROOT" "$@"; else systemctl "$@"; fi
}

units_of() { local r; for r in "${ROLES[@]}"; do echo "orch-$r.service"; done; }

# install_file SRC DEST MODE: copy when missing or different; say which.
install_file() {
  if [ -f "$2" ] && cmp -s "$1" "$2"; then return 1; fi
  mkdir -p "$(dirname "$2")"
  install -m "$3" "$1" "$2"
  changed "installed ${2#"$ROOT"}"
}

# --- uninstall ---------------------------------------------------------------------------

uninstall() {
  local u units=()
  for u in $(units_of); do [ -e "$UNITS/$u" ] && units+=("$u"); done
  if [ ${#units[@]} -gt 0 ]; then
    if systemd_runs; then
      systemctl disable --now "${units[@]}" || true
      [ -e "$UNITS/orch-agent.service" ] && stop_tasks
    elif [ -n "$ROOT" ]; then
      systemctl_ disable "${units[@]}" >/dev/null 2>&1 || true
    else
      say "systemd is not running: not stopping or disabling ${units[*]}"
    fi
    for u in "${units[@]}"; do rm -f "$UNITS/$u"; changed "removed ${UNITS#"$ROOT"}/$u"; done
    if systemd_runs; then systemctl daemon-reload; fi
  fi
  # the environment and the links go only when no role is left on this host
  if [ "$ROLE" = both ] || { [ ! -e "$UNITS/orch-agent.service" ] && [ ! -e "$UNITS/orch-controller.service" ]; }; then
    for b in orchctl orch-agent orch-controller; do
      if [ -L "$BIN/$b" ]; then rm -f "$BIN/$b"; changed "removed ${BIN#"$ROOT"}/$b"; fi
    done
    if [ -d "$VENV" ]; then rm -rf "$VENV"; changed "removed $PREFIX"; fi
    if [ -e "$SYSUSERS" ]; then rm -f "$SYSUSERS"; changed "removed ${SYSUSERS#"$ROOT"}"; fi
  fi
  if [ "$PURGE" = 1 ]; then
    if [ -d "$ETC" ]; then rm -rf "$ETC"; changed "purged /etc/orch"; fi
    if [ -d "$STATE" ]; then rm -rf "$STATE"; changed "purged /var/lib/orch"; fi
    for u in orch orch-task; do
      if user_exists "$u"; then
        if [ -n "$ROOT" ]; then userdel --prefix "$ROOT" "$u"; else userdel "$u"; fi
        changed "removed user $u"
      fi
    done
  else
    [ -d "$ETC" ] && say "kept /etc/orch (configuration)"
    [ -d "$STATE" ] && say "kept /var/lib/orch (state, with the cluster's keys and certificates)"
    user_exists && say "kept user orch (owner of the state); --purge removes all three"
  fi
  [ "$CHANGED" = 1 ] || say "nothing to remove"
}

stop_tasks() {
  # The agent's tasks outlive it by design (KillMode=process: a restarted agent adopts them).
  # Uninstalled, it will not come back: stop its process tasks (what is left in its control
  # group) and its containers (labelled with its node id).
  local node ids
  if [ -n "$(systemctl show -p ControlGroup --value orch-agent.service)" ]; then
    systemctl kill --kill-who=all --signal=SIGTERM orch-agent.service 2>/dev/null \
      && changed "stopped the agent's process tasks"
  fi
  node=$(cat "$STATE/agent/node-id" 2>/dev/null || true)
  if [ -n "$node" ] && command -v docker >/dev/null; then
    ids=$(docker ps -aq --filter "label=orch.node=$node" 2>/dev/null || true)
    if [ -n "$ids" ]; then
      # shellcheck disable=SC2086
      docker rm -f $ids >/dev/null && changed "removed the agent's containers"
    fi
  fi
}

user_exists() { grep -q "^${1:-orch}:" "$ROOT/etc/passwd" 2>/dev/null; }

# --- install -------------------------------------------------------------------------------

find_python() {
  local py
  for py in "$PYTHON" /usr/bin/python3 python3; do
    [ -n "$py" ] && command -v "$py" >/dev/null || continue
    if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then echo "$py"; return; fi
  done
  echo "install.sh: orch needs Python >= 3.11 (--python PATH)" >&2; exit 1
}

# What would be installed: the wheels, or this checkout's sources; a change reinstalls orch.
source_id() {
  if [ -n "$WHEELS" ]; then
    (cd "$WHEELS" && sha256sum ./*.whl)
  else
    (cd "$SRC" && find orch agent controller orchctl -type f \( -name '*.py' -o -name '*.pyi' \) \
       -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum; sha256sum pyproject.toml)
  fi | sha256sum | cut -c1-16
}

install_venv() {
  local py want stamp=$VENV/.orch-installed
  if [ ! -x "$VENV/bin/python" ]; then
    py=$(find_python)
    "$py" -c 'import ensurepip, venv' 2>/dev/null \
      || { echo "install.sh: $py cannot make virtual environments (apt-get install python3-venv)" >&2; exit 1; }
    "$py" -m venv "$VENV"
    changed "created the virtual environment $PREFIX ($("$VENV/bin/python" -V))"
  fi
  want=$(source_id)
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
  local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  if [ -n "$WHEELS" ]; then
    "${pip[@]}" --no-index --find-links "$WHEELS" orch
    # the same version number with other contents (a development build): take it anyway
    "${pip[@]}" --no-index --no-deps --force-reinstall "$(ls "$WHEELS"/orch-*.whl | head -n 1)"
  else
    local tmp
    tmp=$(mktemp -d)
    # from a copy, so that no build/ or egg-info is left in (or taken from) the checkout
    (cd "$SRC" && tar -c --exclude=__pycache__ pyproject.toml README.md orch agent controller orchctl) \
      | tar -x -C "$tmp"
    "${pip[@]}" "$tmp"
    rm -rf "$tmp"
  fi
  echo "$want" >"$stamp"
  RESTART=1
  changed "installed orch $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("orch"))') into $PREFIX"
}

link_commands() {
  local b
  mkdir -p "$BIN"
  for b in orchctl orch-agent orch-controller; do
    if [ "$(readlink "$BIN/$b" 2>/dev/null)" != "$PREFIX/bin/$b" ]; then
      ln -sfn "$PREFIX/bin/$b" "$BIN/$b"
      changed "linked ${BIN#"$ROOT"}/$b -> $PREFIX/bin/$b"
    fi
  done
}

create_users() {
  # orch: the controller runs as it; orch-task: process tasks run as it.
  local tmp u
  tmp=$(mktemp)
  printf '%s\n' 'u orch - "orch controller" /var/lib/orch' \
    'u orch-task - "orch process tasks" /nonexistent' >"$tmp"
  install_file "$tmp" "$SYSUSERS" 0644 || true
  rm -f "$tmp"
  mkdir -p "$ROOT/etc"
  for u in orch orch-task; do
    user_exists "$u" && continue
    if command -v systemd-sysusers >/dev/null; then
      local out
      out=$(systemd-sysusers ${ROOT:+--root="$ROOT"} orch.conf 2>&1) || { echo "$out" >&2; exit 1; }
    elif [ "$u" = orch ]; then
      useradd ${ROOT:+--prefix "$ROOT"} --system --user-group --home-dir /var/lib/orch \
        --shell /usr/sbin/nologin --comment "orch controller" orch
    else
      useradd ${ROOT:+--prefix "$ROOT"} --system --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin --comment "orch process tasks" orch-task
    fi
    changed "created user $u"
  done
}

operator_config() {
  # On the host that bootstrapped the cluster: the operator's credentials where orchctl
  # finds them (root's ~/.config/orch), once the controller's first term has made them.
  local dir=$ROOT/root/.config/orch src=$ROOT$OPERATOR f i
  systemd_runs && [ "$START" = 1 ] || return 0
  for i in $(seq 120); do [ -e "$src/management.token" ] && break; sleep 0.5; done
  if [ ! -e "$src/management.token" ]; then
    say "the controller has not made the operator's credentials yet (see journalctl -u orch-controller)"
    return 0
  fi
  install -d -m 0700 "$dir"
  for f in orchctl.toml ca.pem cli.pem cli-key.pem management.token; do
    if ! cmp -s "$src/$f" "$dir/$f"; then install -m 0600 "$src/$f" "$dir/$f"; changed "installed ~/.config/orch/$f"; fi
  done
  say "the web UI: https://127.0.0.1:4646/ui/ (log in with ~/.config/orch/management.token)"
  say "agent join token, for every other host (deploy/install.sh --role agent --controller $(host_address):4647 --join-token-file FILE):"
  say "  $(cat "$src/join-agent.token")"
}

host_address() {
  # The address other hosts reach this one at: the source of the default route (a route
  # lookup only, nothing is sent), else the first address, else loopback.
  local a
  [ -n "$ADVERTISE" ] && { echo "$ADVERTISE"; return; }
  a=$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -n 1)
  [ -n "$a" ] || a=$(hostname -I 2>/dev/null | awk '{print $1}')
  echo "${a:-127.0.0.1}"
}

OPERATOR=/var/lib/orch/controller/pki/operator
# What the bootstrapping controller makes for the operator (orchctl.toml, the CLI
# certificate, the management token, the join tokens).

write_config() {
  local role=$1 file=$ETC/$1.toml addr tmp group=root
  if [ -e "$file" ]; then say "kept /etc/orch/$role.toml (never overwritten)"; return; fi
  addr=$(host_address)
  tmp=$(mktemp)
  if [ "$role" = controller ]; then
    cat >"$tmp" <<EOF
# orch-controller (written by install.sh; edit freely: it is never overwritten).
# Reload the log level and gossip keys with: systemctl reload orch-controller
name = "controller-$(hostname -s 2>/dev/null || echo 1)"
bind = "0.0.0.0:7946"                # gossip (UDP and TCP)
advertise = "$addr:7946"
rpc_addr = "0.0.0.0:4647"            # orchctl and the agents
rpc_advertise = "$addr:4647"
data_dir = "/var/lib/orch/controller"
metrics_addr = "127.0.0.1:9647"
http_addr = "127.0.0.1:4646"         # the HTTP API and the web UI (HTTPS); $addr:4646 to open it
log_level = "info"
join = []                            # other controllers or agents to join at start

# The first start makes the cluster's trust in data_dir/pki: a CA, this controller's
# certificate, the operator's (with orchctl.toml), the first gossip key, the join tokens
# and the management token. Every connection is then mTLS, every call needs a token, and
# gossip is encrypted (rotate its key with orchctl keyring).
bootstrap = true
EOF
  else
    local port=7946 join="" controller=$CONTROLLER token_file=/etc/orch/join.token drivers
    if [ "$ROLE" = both ]; then
      port=7947; join="\"$addr:7946\""; controller="$addr:4647"; token_file=$OPERATOR/join-agent.token
    else
      join="\"${CONTROLLER%:*}:7946\""
    fi
    drivers=$(printf '"%s", ' ${DRIVERS//,/ }); drivers=${drivers%, }
    cat >"$tmp" <<EOF
# orch-agent (written by install.sh; edit freely: it is never overwritten).
# Reload the log level, gossip keys and tags with: systemctl reload orch-agent
bind = "0.0.0.0:$port"                # gossip (UDP and TCP)
advertise = "$addr:$port"
rpc_addr = "0.0.0.0:4648"
rpc_advertise = "$addr:4648"
data_dir = "/var/lib/orch/agent"
metrics_addr = "127.0.0.1:9646"
log_level = "info"
# a controller's (or any member's) gossip address: the agent finds the controllers from there
join = [$join]

# The first start joins the cluster: a certificate for this node, the CA and the gossip key
# come from the controller, for the token in the file (not needed after that).
controllers = ["$controller"]
join_token_file = "$token_file"

# Task drivers: docker; process runs tasks on the host itself, as the user orch-task
# (add "process" to enable it; allow_root_tasks = true lets a job ask for root).
drivers = [$drivers]

[tags]                                # published in gossip; reloadable
EOF
  fi
  user_exists && group=$(awk -F: '$1 == "orch" {print $3}' "$ROOT/etc/group")
  install -d -m 0750 -o 0 -g "$group" "$ETC"
  install -m 0640 -o 0 -g "$group" "$tmp" "$file"
  rm -f "$tmp"
  if [ "$role" = agent ] && [ "$ROLE" = agent ]; then
    install -m 0600 -o 0 -g 0 "$TOKEN_FILE" "$ETC/join.token"
    changed "copied the join token to /etc/orch/join.token"
  fi
  changed "wrote /etc/orch/$role.toml (advertising $addr)"
}

install_units() {
  local r tmp
  for r in "${ROLES[@]}"; do
    tmp=$(mktemp)
    sed "s#/opt/orch/#$PREFIX/#g" "$SRC/deploy/systemd/orch-$r.service" >"$tmp"
    if install_file "$tmp" "$UNITS/orch-$r.service" 0644; then RESTART=1; fi
    rm -f "$tmp"
  done
}

start_units() {
  local units u
  mapfile -t units < <(units_of)
  if [ -n "$ROOT" ]; then
    for u in "${units[@]}"; do
      if [ "$(systemctl_ is-enabled "$u" 2>/dev/null)" != enabled ]; then
        systemctl_ enable "$u" >/dev/null 2>&1
        changed "enabled $u (under $ROOT; nothing started)"
      fi
    done
    return
  fi
  if ! systemd_runs; then
    say "systemd is not running here: skipping systemctl; once it runs: systemctl enable --now ${units[*]}"
    return
  fi
  [ "$RESTART" = 0 ] || systemctl daemon-reload
  for u in "${units[@]}"; do
    if [ "$(systemctl is-enabled "$u" 2>/dev/null)" != enabled ]; then
      systemctl enable --quiet "$u"
      changed "enabled $u"
    fi
    [ "$START" = 1 ] || continue
    if systemctl is-active --quiet "$u"; then
      if [ "$RESTART" = 1 ]; then systemctl restart "$u"; changed "restarted $u"; fi
    else
      systemctl start "$u"
      changed "started $u"
    fi
  done
}

main() {
  if [ "$UNINSTALL" = 1 ]; then uninstall; return; fi
  [ -z "$WHEELS" ] || ls "$WHEELS"/orch-*.whl >/dev/null 2>&1 \
    || { echo "install.sh: no orch wheel in $WHEELS (deploy/images/build.sh wheels)" >&2; exit 1; }
  install_venv
  link_commands
  local r
  create_users
  for r in "${ROLES[@]}"; do write_config "$r"; done
  install_units
  start_units
  for r in "${ROLES[@]}"; do [ "$r" = controller ] && operator_config; done
  [ "$CHANGED" = 1 ] || say "orch is installed and up to date: nothing changed"
}

main
