"""Where `bim login` keeps the registry URL and API key, and which URL and key a command uses.

The file is `$XDG_CONFIG_HOME/bim/config.json` (`~/.config/bim/config.json` without it), JSON
`{"url", "token"}`, readable by its owner only: the directory is made 0700 and the file is
written 0600 to a temporary name and renamed over the old one, so no reader ever sees it half
written or with wider permissions.

A command's URL and key each come from its flag, else the environment ($BIM_URL,
$BIM_TOKEN), else this file; the file's key is used only with the file's URL, so pointing a
command at another registry never sends it the key of the one you logged in to.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class ConfigUnreadable(Exception):
    """The config file exists but is not the JSON object `bim login` writes."""


@dataclass(frozen=True)
class Credentials:
    url: str | None
    token: str | None


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec: a relative $XDG_CONFIG_HOME is invalid and ignored.
    root = Path(base) if os.path.isabs(base) else Path.home() / ".config"
    return root / "bim" / "config.json"


def config_load(path: Path) -> dict[str, str]:
    """The stored {"url", "token"}, or {} when nobody logged in."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigUnreadable(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k, ""), str) for k in ("url", "token")):
        raise ConfigUnreadable(f"{path} is not a bim config (run `bim logout`, then `bim login`)")
    return {k: data[k] for k in ("url", "token") if data.get(k)}


def config_save(path: Path, *, url: str, token: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)  # mkdir's mode is masked by the umask, and an old directory keeps its own
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".json")  # mkstemp makes it 0600
    try:
        with os.fdopen(fd, "w") as file:
            json.dump({"url": url, "token": token}, file, indent=2)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def config_remove(path: Path) -> bool:
    """Forget the stored key; False when there was none."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def credentials_resolve(
    *, url: str | None, token: str | None, environ: Mapping[str, str], stored: Mapping[str, str]
) -> Credentials:
    """Each of URL and key: the flag, else the environment, else the stored login (whose key
    goes only to the stored URL)."""
    url = url or environ.get("BIM_URL") or stored.get("url")
    token = token or environ.get("BIM_TOKEN")
    if not token and url and stored.get("url") and _same_registry(url, stored["url"]):
        token = stored.get("token")
    return Credentials(url=url, token=token)


def _same_registry(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")
