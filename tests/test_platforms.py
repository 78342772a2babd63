"""What can be simulated here of macOS and Windows: kubectl's path rules, list separators, signal set-up.

The archives for those systems are built and smoke-tested on their own runners (.github/workflows/release.yml);
these tests hold the rules the code follows there to client-go's, on this machine.
"""

from __future__ import annotations

import os
import stat
from types import SimpleNamespace

import pytest

from kubectl_grpcprobe.kube.config import default_kubeconfig_paths, home_dir

DIR = SimpleNamespace(st_mode=stat.S_IFDIR | 0o755)
READ_ONLY_DIR = SimpleNamespace(st_mode=stat.S_IFDIR | 0o555)
FILE = SimpleNamespace(st_mode=stat.S_IFREG | 0o644)


def fake_stat(existing: dict[str, SimpleNamespace]):
    def stat_(path: str):
        if path in existing:
            return existing[path]
        raise FileNotFoundError(path)

    return stat_


WINDOWS_ENV = {"USERPROFILE": r"C:\Users\sre", "HOMEDRIVE": "H:", "HOMEPATH": r"\home\sre"}


def test_windows_default_is_under_userprofile() -> None:
    paths = default_kubeconfig_paths(WINDOWS_ENV, windows=True, stat=fake_stat({r"C:\Users\sre": DIR}))
    assert paths == [r"C:\Users\sre\.kube\config"]


def test_windows_prefers_the_home_that_holds_a_kubeconfig() -> None:
    existing = {r"C:\Users\sre": DIR, r"H:\home\sre": DIR, r"H:\home\sre\.kube\config": FILE}
    assert home_dir(WINDOWS_ENV, windows=True, stat=fake_stat(existing)) == r"H:\home\sre"  # HOMEDRIVE+HOMEPATH before USERPROFILE
    with_home = {**WINDOWS_ENV, "HOME": r"D:\me"}
    assert home_dir(with_home, windows=True, stat=fake_stat({**existing, r"D:\me\.kube\config": FILE})) == r"D:\me"


def test_windows_without_any_kubeconfig_takes_the_first_writable_then_existing_then_set() -> None:
    env = {**WINDOWS_ENV, "HOME": r"D:\me"}
    assert home_dir(env, windows=True, stat=fake_stat({r"C:\Users\sre": DIR, r"D:\me": READ_ONLY_DIR})) == r"C:\Users\sre"
    assert home_dir(env, windows=True, stat=fake_stat({r"D:\me": READ_ONLY_DIR})) == r"D:\me"
    assert home_dir(env, windows=True, stat=fake_stat({})) == r"D:\me"
    assert home_dir({}, windows=True, stat=fake_stat({})) == ""


def test_kubeconfig_list_separator_is_the_platforms() -> None:
    assert default_kubeconfig_paths({"KUBECONFIG": r"C:\a\config;D:\b\config;"}, windows=True) == [r"C:\a\config", r"D:\b\config"]
    assert default_kubeconfig_paths({"KUBECONFIG": "/a/config:/b/config"}, windows=False) == ["/a/config", "/b/config"]
    # A Windows drive letter is not a separator there: C:\a;D:\b is two files, not four.
    assert len(default_kubeconfig_paths({"KUBECONFIG": r"C:\a;D:\b"}, windows=True)) == 2


def test_posix_home_is_HOME(tmp_path) -> None:  # noqa: N802
    assert default_kubeconfig_paths({"HOME": str(tmp_path)}, windows=False) == [os.path.join(str(tmp_path), ".kube", "config")]


def test_signal_set_up_without_sigterm_sigpipe_or_thread_masks(monkeypatch) -> None:
    """Windows' signal module has SIGINT but no SIGPIPE and no pthread_sigmask: a run's threads still start and stop."""
    import signal

    from kubectl_grpcprobe import stop

    monkeypatch.delattr(signal, "pthread_sigmask", raising=False)
    monkeypatch.delattr(signal, "SIGPIPE", raising=False)
    with stop.scope():
        ran = []
        t = stop.thread(lambda: ran.append(True), name="grpcprobe-test")
        t.start()
        t.join(5)
    assert ran == [True]


@pytest.mark.parametrize("module", ["kubectl_grpcprobe.cli", "kubectl_grpcprobe.kube.config", "kubectl_grpcprobe.commands.runner"])
def test_probe_path_makes_no_posix_only_call(module: str) -> None:
    """No fork, no /dev/null, no os.getuid/fchmod without a guard, on the modules a probe runs through."""
    import importlib
    import inspect

    source = inspect.getsource(importlib.import_module(module))
    for call in ("os.fork(", '"/dev/null"', "os.getuid(", "os.setsid("):
        assert call not in source, (module, call)
    if "os.fchmod(" in source:
        assert 'hasattr(os, "fchmod")' in source
