"""The Minari remote (Farama's hub): is it reachable, which ids it publishes, and fetching a dataset from it.

Offline (``HF_HUB_OFFLINE=1`` or no route) every question here is answered in well under a second; a dataset
that cannot be fetched raises ``FileNotFoundError`` that says how to get it by hand.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .minari_paths import dataset_path, minari_dir

__all__ = ["is_online", "published_reason", "PUBLISHED_NAMESPACES", "download"]

# Top-level namespaces of the datasets Farama publishes on the Minari remote (checked case-insensitively, always:
# offline the remote cannot be listed). A local id under one of them would pass home-made data for published data.
PUBLISHED_NAMESPACES = ("atari", "mujoco", "d4rl", "minigrid")
_REMOTE_LIST_TIMEOUT_S = 5.0


def is_online(url: str = "https://huggingface.co", timeout: float = 2.0) -> bool:
    """Fast hub reachability probe: False at once under HF_HUB_OFFLINE=1, else one HTTPS request.

    A bare TCP connect is not enough: sandboxes with transparent proxies accept any connection.
    Any HTTP answer (even an error status) means online; a failed TLS handshake, DNS lookup or a
    timeout means offline. Minari's own downloader would instead retry for ~20 s.
    """
    import urllib.error
    import urllib.request

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def _remote_ids(timeout: float = _REMOTE_LIST_TIMEOUT_S) -> set[str]:
    """Ids the Minari remote lists (empty when offline, under HF_HUB_OFFLINE, or after ``timeout`` seconds)."""
    if not is_online(timeout=min(timeout, 2.0)):
        return set()
    found: list[set[str]] = []

    def fetch() -> None:
        try:
            import minari

            found.append({str(k) for k in minari.list_remote_datasets(latest_version=False)})
        except Exception:  # noqa: BLE001 - any hub error means "nothing listed"
            pass

    t = threading.Thread(target=fetch, daemon=True)  # minari has no timeout of its own
    t.start()
    t.join(timeout)
    return found[0] if found else set()


def published_reason(dataset_id: str, *, check_remote: bool = True) -> str | None:
    """Why ``dataset_id`` names (or could name) a published Minari dataset, or None: its namespace is one Farama
    publishes under, or (online only) the Minari remote lists it. more3s never collects under such an id."""
    top = dataset_id.strip("/").split("/", 1)[0].lower()
    if "/" in dataset_id.strip("/") and top in PUBLISHED_NAMESPACES:
        return f"its namespace {top + '/'!r} is one Farama publishes Minari datasets under"
    if check_remote and dataset_id in _remote_ids():
        return "the Minari remote lists it"
    return None


def _remote_help(dataset_id: str, why: str) -> str:
    return (f"Minari dataset {dataset_id!r} is not available locally (looked under "
            f"{dataset_path(dataset_id)}), and {why}. To get it: on a machine with internet run "
            f"`minari download {dataset_id}` and copy the directory to $MINARI_DATASETS_PATH "
            f"(default ~/.minari/datasets), or collect a local dataset with "
            f"`python -m more3s.collect --env ENV --policy POLICY --episodes N --dataset-id ID`, "
            f"or pass a D4RL hdf5 file path.")


def download(dataset_id: str) -> Path:
    """Download ``dataset_id`` from the Minari remote into ``dataset_path(dataset_id)``; returns its ``data``
    directory. Offline, or when the download fails, ``FileNotFoundError`` explaining how to get the data instead."""
    if not is_online():
        raise FileNotFoundError(_remote_help(dataset_id, "this machine is offline "
                                             "(HF_HUB_OFFLINE=1 or no route to the hub)"))
    import minari

    try:
        minari.download_dataset(dataset_id)
    except Exception as e:  # noqa: BLE001 - network / hub errors of every kind
        raise FileNotFoundError(_remote_help(dataset_id, f"the download failed: {e}")) from e
    d = minari_dir(dataset_path(dataset_id))
    if d is None:
        raise FileNotFoundError(_remote_help(dataset_id, "the download produced no dataset"))
    return d
