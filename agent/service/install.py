"""`humwatch install-service`: put the agent on a board as a systemd service, and take it off again.

Every step is an Action with a one-line description built before anything is touched, so `--dry-run` prints
exactly what a real run would do. `--prefix DIR` writes the files under a staging root (an image being built, a
test) and leaves the live system's users and systemd alone.
"""
from __future__ import annotations

import argparse
import functools
import grp
import os
import pathlib
import pwd
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from typing import Callable

from humwatch.agent.durable import write_atomic
from humwatch.agent.errors import ConfigError
from humwatch.agent.service.ownership import give_to

USER = "humwatch"
AUDIO_GROUP = "audio"
UNIT_NAME = "humwatch@.service"
EXAMPLE_CONFIG = "humwatch.example.toml"
# The example config and the shipped unit are written for this instance and this program path.
EXAMPLE_INSTANCE = "pump1"
SHIPPED_EXECUTABLE = "/opt/humwatch/bin/humwatch"
UNIT_DIR = "/etc/systemd/system"
CONFIG_DIR = "/etc/humwatch"
STATE_DIR = "/var/lib/humwatch"
# RestartSteps= and RestartMaxDelaySec= (growing restart delays) exist from this systemd version on.
BACKOFF_SYSTEMD = 254
BACKOFF_KEYS = ("RestartSteps", "RestartMaxDelaySec")
# ProtectHome=yes hides these from the service, so the program must not live under them.
HIDDEN_FROM_SERVICE = ("/home", "/root", "/run/user")
HIDDEN_HINT = (f"(ProtectHome=yes hides {', '.join(HIDDEN_FROM_SERVICE)}); "
               "make the venv from the system Python in /opt: sudo python3 -m venv /opt/humwatch")
_INSTANCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Action:
    """One step: what it does, in one line, and the call that does it."""

    text: str
    apply: Callable[[], object]


@dataclass(frozen=True)
class Target:
    """Where the files go: the live system (prefix /) or a staging root."""

    prefix: pathlib.Path

    @property
    def live(self) -> bool:
        return self.prefix.resolve() == pathlib.Path("/")

    def path(self, absolute: str) -> pathlib.Path:
        return self.prefix / absolute.lstrip("/")

    @property
    def unit(self) -> pathlib.Path:
        return self.path(UNIT_DIR) / UNIT_NAME

    def config(self, instance: str) -> pathlib.Path:
        return self.path(CONFIG_DIR) / f"{instance}.toml"

    def state(self, instance: str) -> pathlib.Path:
        return self.path(STATE_DIR) / instance

    def enabled_links(self, instance: str | None = None) -> list[pathlib.Path]:
        """The symlinks `systemctl enable` made for instances of the template unit (under a prefix they dangle)."""
        links = self.path(UNIT_DIR).glob("*.wants/humwatch@*.service")
        return sorted(link for link in links if instance is None or link.name == f"humwatch@{instance}.service")

    def other_instances(self, instance: str) -> list[str]:
        """Other instances that are enabled or still have a config (they need the shared unit and the user)."""
        enabled = {link.name.removeprefix("humwatch@").removesuffix(".service") for link in self.enabled_links()}
        configured = {path.stem for path in self.path(CONFIG_DIR).glob("*.toml")}
        return sorted((enabled | configured) - {instance})


def systemd_version() -> int | None:
    """The installed systemd's version from `systemctl --version`, or None without systemctl."""
    try:
        first = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.match(r"systemd (\d+)", first)
    return int(match.group(1)) if match else None


def systemd_running() -> bool:
    """True when systemd is the init system here (what sd_booted() checks)."""
    return os.path.isdir("/run/systemd/system")


def find_executable() -> pathlib.Path:
    """The installed `humwatch` program: the one beside this Python (a venv's bin/), else the one on PATH."""
    beside = pathlib.Path(sys.executable).parent / "humwatch"
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("humwatch")
    if found is None:
        raise ConfigError(f"no humwatch program beside {sys.executable} or on PATH: install humwatch with pip first "
                          "(or name it with --executable)")
    return pathlib.Path(found)


def service_executable(path: pathlib.Path) -> pathlib.Path:
    """The real path of the program the unit runs, refused when the service could not reach it or the Python
    interpreter its #! line names (a venv made from a Python under /home is as unreachable as one in /home)."""
    real = pathlib.Path(os.path.realpath(path))
    if _hidden(real):
        raise ConfigError(f"humwatch program {real}: hidden from the service {HIDDEN_HINT}")
    if not (real.is_file() and os.access(real, os.X_OK)):
        raise ConfigError(f"humwatch program {path}: not an executable file")
    if re.search(r"[\s%]", str(real)):
        raise ConfigError(f"humwatch program {real}: a space or '%' in the path would need quoting in the unit; "
                          "install it in /opt/humwatch")
    with open(real, "rb") as program:
        first = program.readline(4096)
    if first.startswith(b"#!") and first[2:].split():
        interpreter = pathlib.Path(os.path.realpath(os.fsdecode(first[2:].split()[0])))
        if _hidden(interpreter):
            raise ConfigError(f"humwatch program {real}: its Python {interpreter} is hidden from the service "
                              f"{HIDDEN_HINT}")
    return real


def _hidden(path: pathlib.Path) -> bool:
    return any(pathlib.Path(hidden) in path.parents for hidden in HIDDEN_FROM_SERVICE)


def render_unit(template: str, executable: pathlib.Path, version: int | None) -> str:
    """The unit with ExecStart= running `executable`, and the restart back-off enabled where systemd has it."""
    shipped = f"ExecStart={SHIPPED_EXECUTABLE} "
    if template.count(shipped) != 1:
        raise ConfigError(f"{UNIT_NAME}: expected one line starting {shipped!r}")
    text = template.replace(shipped, f"ExecStart={executable} ")
    if version is not None and version >= BACKOFF_SYSTEMD:
        for key in BACKOFF_KEYS:
            text = text.replace(f"\n#{key}=", f"\n{key}=")
    return text


def example_config(instance: str) -> str:
    """The commented example config, written for `instance` (its machine name and state paths)."""
    return packaged(EXAMPLE_CONFIG).replace(EXAMPLE_INSTANCE, instance)


def packaged(name: str) -> str:
    return resources.files("humwatch.agent.service").joinpath(name).read_text(encoding="utf-8")


def command(*argv: str) -> Action:
    def apply() -> None:
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise ConfigError(f"{shlex.join(argv)}: failed (exit {done.returncode})"
                              + (f": {detail[-1]}" if detail else ""))
    return Action(f"run {shlex.join(argv)}", apply)


def make_dir(path: pathlib.Path, mode: int, owner: str | None = None) -> Action:
    """A directory owned by `owner` and its group (None: left to root)."""
    who = f" {owner}:{owner}" if owner else ""

    def apply() -> None:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        if owner:
            shutil.chown(path, owner, owner)
    return Action(f"create directory {path} (mode {mode:04o}{who})", apply)


def install_plan(instance: str, target: Target, executable: pathlib.Path, version: int | None,
                 config_text: str, config_origin: str) -> list[Action]:
    """Every step of an install, in order; nothing is touched until the actions are applied."""
    actions = []
    live = target.live
    if live:
        if not _group_exists(AUDIO_GROUP):
            actions.append(command("groupadd", "--system", AUDIO_GROUP))
        if _user_exists(USER):
            actions.append(command("usermod", "--append", "--groups", AUDIO_GROUP, USER))
        else:
            actions.append(command("useradd", "--system", "--user-group", "--groups", AUDIO_GROUP,
                                   "--home-dir", STATE_DIR, "--no-create-home", "--shell", "/usr/sbin/nologin",
                                   "--comment", "humwatch acoustic anomaly agent", USER))
    unit_text = render_unit(packaged(UNIT_NAME), executable, version)
    backoff = ("growing restart delays" if version is not None and version >= BACKOFF_SYSTEMD
               else f"fixed restart delay: growing delays need systemd >= {BACKOFF_SYSTEMD}, this is {version}")
    actions.append(Action(f"write {target.unit} (ExecStart={executable} run ...; {backoff})",
                          lambda: write_atomic(target.unit, unit_text.encode(), 0o644)))
    config = target.config(instance)
    if config.exists():
        actions.append(Action(f"keep the existing {config}", lambda: None))
    else:
        group = USER if live else None

        def write_config() -> None:
            write_atomic(config, config_text.encode(), 0o640)
            if group:
                shutil.chown(config, None, group)
        actions.append(Action(f"write {config} from {config_origin} (mode 0640 root:{group or 'root'})",
                              write_config))
    owner = USER if live else None
    actions.append(make_dir(target.path(STATE_DIR), 0o755))
    actions.append(make_dir(target.state(instance), 0o750, owner))
    if live:  # files an earlier `sudo humwatch run` left there would lock the service out of its own outbox
        state = target.state(instance)
        actions.append(Action(f"give everything in {state} to {USER} (repairs what a run as root left)",
                              lambda: give_to(state, USER)))
        actions.append(systemctl("daemon-reload"))
    return actions


def systemctl(*argv: str) -> Action:
    """A systemctl step, or a visible skip where systemd is not the running init system."""
    if systemd_running():
        return command("systemctl", *argv)
    return Action(f"skip systemctl {shlex.join(argv)}: systemd is not running here", lambda: None)


def uninstall_plan(instance: str, target: Target, purge: bool) -> list[Action]:
    """Stop and disable the instance; remove the shared unit once no other instance is enabled; --purge: its
    config and state too, and the user and directories once no other instance has a config."""
    actions = []
    if target.live and target.unit.exists():
        actions.append(systemctl("disable", "--now", f"humwatch@{instance}.service"))
    elif not target.live:
        actions += [Action(f"remove {link}", link.unlink) for link in target.enabled_links(instance)]
    enabled = sorted({link.name for link in target.enabled_links()} - {f"humwatch@{instance}.service"})
    if enabled:
        actions.append(Action(f"keep {target.unit}: still enabled for {', '.join(enabled)}", lambda: None))
    elif target.unit.exists():
        actions.append(Action(f"remove {target.unit}", target.unit.unlink))
        if target.live:
            actions.append(systemctl("daemon-reload"))
    config, state = target.config(instance), target.state(instance)
    if not purge:
        kept = [str(p) for p in (config, state) if p.exists()]
        if kept:
            actions.append(Action(f"keep {' and '.join(kept)} (--purge removes them)", lambda: None))
        return actions
    if config.exists():
        actions.append(Action(f"remove {config}", config.unlink))
    if state.exists():
        actions.append(Action(f"remove {state} and everything in it (bundles, alarm outbox)",
                              lambda: shutil.rmtree(state)))
    if not target.other_instances(instance):
        for directory in (target.path(CONFIG_DIR), target.path(STATE_DIR)):
            actions.append(Action(f"remove {directory} if empty", functools.partial(_remove_if_empty, directory)))
        if target.live and _user_exists(USER):
            actions.append(command("userdel", USER))
    return actions


def _remove_if_empty(directory: pathlib.Path) -> None:
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--instance", default=EXAMPLE_INSTANCE,
                        help=f"instance name: the unit humwatch@NAME reads /etc/humwatch/NAME.toml "
                             f"(default: {EXAMPLE_INSTANCE})")
    parser.add_argument("--config-src", type=pathlib.Path, metavar="FILE",
                        help="config file to install (checked first); default: the commented example")
    parser.add_argument("--prefix", type=pathlib.Path, default=pathlib.Path("/"),
                        help="root to install under; anything but / writes files only (no user, no systemctl)")
    parser.add_argument("--executable", type=pathlib.Path,
                        help="humwatch program the unit runs (default: the one installed beside this Python)")
    parser.add_argument("--dry-run", action="store_true", help="print every step and change nothing")
    parser.add_argument("--uninstall", action="store_true",
                        help="stop and disable the instance and remove the unit; config and state are kept")
    parser.add_argument("--purge", action="store_true",
                        help="with --uninstall: also remove the instance's config and state (bundles, outbox)")


def run(args: argparse.Namespace) -> int:
    if not _INSTANCE.match(args.instance):
        raise ConfigError(f"--instance {args.instance!r}: must be 1-64 letters, digits, '_' or '-'")
    if args.purge and not args.uninstall:
        raise ConfigError("--purge: only meaningful with --uninstall")
    target = Target(args.prefix)
    if target.live and not args.dry_run and os.geteuid() != 0:
        raise ConfigError("installing into the live system (--prefix /) needs root: run it with sudo, "
                          "or add --dry-run to see the steps, or --prefix DIR to stage the files")
    if args.uninstall:
        actions = uninstall_plan(args.instance, target, args.purge)
    else:
        executable = service_executable(args.executable or find_executable())
        if args.config_src:
            from humwatch.agent.config import load_config  # checks the file completely before it is installed
            load_config(args.config_src)
            text, origin = args.config_src.read_text(encoding="utf-8"), str(args.config_src)
        else:
            text, origin = example_config(args.instance), f"the example ({EXAMPLE_CONFIG})"
        actions = install_plan(args.instance, target, executable, systemd_version(), text, origin)
    for action in actions:
        print(f"{'would ' if args.dry_run else ''}{action.text}")
        if not args.dry_run:
            action.apply()
    if not target.live:
        print(f"not the live system: no user {USER}, ownership or systemctl steps were run under {target.prefix}")
    elif not args.uninstall:
        print(f"next: edit {target.config(args.instance)}, calibrate (docs/install.md), then run\n"
              f"  systemctl enable --now humwatch@{args.instance}")
    return 0
