"""Shared fixtures: user-level state (teacher store, keys, built models) never touches the real
user directory. PROTEGE_HOME is one temp dir for the whole session (built students are cached
there once); each test gets its own teacher store."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def protege_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("protege_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROTEGE_HOME", str(home))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield home


@pytest.fixture(autouse=True)
def teacher_db(tmp_path, monkeypatch):
    """A fresh teacher store per test (`$PROTEGE_TEACHER_DB`)."""
    path = tmp_path / "teacher.db"
    monkeypatch.setenv("PROTEGE_TEACHER_DB", str(path))
    return path


@pytest.fixture
def fake_openai():
    """A fake OpenAI-compatible server on 127.0.0.1 (see protege.testing.fake_openai)."""
    from protege.testing.fake_openai import FakeOpenAI

    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """The Hugging Face Hub replica (protege.testing.hub), built once per session: reach it
    from a subprocess with `hub_util.hub_env` (huggingface_hub reads HF_ENDPOINT at import)."""
    from protege.testing.hub import RENAMES, HubReplica, build

    root = build(tmp_path_factory.mktemp("hub"))
    with HubReplica(root, RENAMES) as server:
        yield server
