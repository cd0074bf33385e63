"""docs/quickstart.md as a new user follows it: its hook module answers in the simulator-backed
demo, and every config in it passes `chatstate start --check-only` (which connects to nothing)
with the variables it names set, and fails with one line naming the key when one is missing."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from nacl.signing import SigningKey

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "quickstart.md").read_text()
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", PAGE, re.M | re.S)


CONFIGS = blocks("toml")
VARIABLE = re.compile(r"CHATSTATE_[A-Z_]+")


def dummy(name: str) -> str:
    """A value of the right shape: only `check` looks at them, offline."""
    if name.endswith("PUBLIC_KEY"):
        return SigningKey.generate().verify_key.encode().hex()
    return f"dummy-{name.lower()}"


def bot_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "mybot"
    folder.mkdir(exist_ok=True)
    [hook] = [b for b in blocks("python") if "def answer(" in b]
    (folder / "mybot.py").write_text(hook)
    return folder


def chatstate(*args: str, cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatstate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSTATE_")}
    return {**env, "CHATSTATE_HOME": str(tmp_path / "home")}


def test_the_page_is_linked_from_the_readme_and_has_every_platform() -> None:
    assert "(docs/quickstart.md)" in README
    assert len(CONFIGS) == 6  # Slack HTTP and Socket Mode, Discord HTTP and Gateway, Teams, Matrix
    for words in ("/slack/events", "/discord/interactions", "/api/messages", "Socket Mode", "access token"):
        assert words in PAGE


@pytest.mark.parametrize("config", CONFIGS, ids=[c.splitlines()[0][2:40] for c in CONFIGS])
def test_each_config_validates_offline_and_a_missing_credential_is_named(tmp_path: Path, config: str) -> None:
    folder = bot_folder(tmp_path)
    (folder / "bot.toml").write_text(config)
    names = sorted(set(VARIABLE.findall(config)))
    assert names, "each config names the variables its secrets come from"
    env = {**clean_env(tmp_path), **{n: dummy(n) for n in names}}
    check = ("start", "--config", "bot.toml", "--check-only")
    ok = chatstate(*check, cwd=folder, env=env)
    assert (ok.returncode, ok.stderr) == (0, ""), ok.stderr
    for name in names:
        missing = chatstate(*check, cwd=folder, env={k: v for k, v in env.items() if k != name})
        assert missing.returncode == 2, (name, missing.stderr)
        [line] = missing.stderr.splitlines()
        key = name.removeprefix("CHATSTATE_").split("_", 1)[1].lower()
        assert line.startswith("gateway: config error: adapters.") and f".{key}: required" in line, line
        assert name in line and "Traceback" not in missing.stderr


def test_the_missing_credential_quoted_on_the_page_is_what_start_prints(tmp_path: Path) -> None:
    [quoted] = re.findall(r"`(gateway: config error: adapters\.slack\.bot_token: [^`]*)`", PAGE)
    folder = bot_folder(tmp_path)
    (folder / "bot.toml").write_text(CONFIGS[0])
    env = {**clean_env(tmp_path), "CHATSTATE_SLACK_SIGNING_SECRET": "s"}
    result = chatstate("start", "--config", "bot.toml", "--check-only", cwd=folder, env=env)
    assert (result.returncode, result.stderr) == (2, quoted + "\n")


def test_the_hook_answers_in_the_simulator_backed_demo(tmp_path: Path) -> None:
    folder = bot_folder(tmp_path)
    [line] = [ln for ln in PAGE.splitlines() if ln.startswith("CHATSTATE_SLACK_REPLY=")]
    words = shlex.split(line)
    assignments = dict(w.split("=", 1) for w in words if "=" in w and w.startswith("CHATSTATE_"))
    command = [w for w in words if w not in {f"{k}={v}" for k, v in assignments.items()}]
    assert command[:2] == ["chatstate", "demo"]
    result = chatstate(*command[1:], cwd=folder, env={**clean_env(tmp_path), **assignments}, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    for platform in ("slack", "discord", "teams"):
        assert "you said 'ship it' on discord" in result.stderr or platform != "discord"
        assert re.search(rf"Hello \S+, you said .* on {platform}\.", result.stderr), platform
