"""The node editor's user routes: users, settings, userdata (saved workflows) with ComfyUI's shapes and safety."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from darkroom.server.frontend_userdata import DEFAULT_SETTINGS, UserData, UserDataError


def test_userdata_files_round_trip(tmp_path: Path) -> None:
    ud = UserData(tmp_path / "user")
    ud.write("workflows/a.json", b'{"a": 1}')
    ud.write("workflows/sub/b.json", b"{}")
    assert ud.read("workflows/a.json").read_bytes() == b'{"a": 1}'
    assert ud.list("workflows") == ["a.json"]
    assert ud.list("workflows", recurse=True) == ["a.json", "sub/b.json"]
    assert ud.list("workflows", recurse=True, split=True) == [["a.json", "a.json"], ["sub/b.json", "sub", "b.json"]]
    info = ud.list("workflows", recurse=True, full_info=True)
    assert [i["path"] for i in info] == ["a.json", "sub/b.json"] and info[0]["size"] == 8
    assert isinstance(info[0]["modified"], float)
    with pytest.raises(UserDataError) as ex:
        ud.write("workflows/a.json", b"x", overwrite=False)
    assert ex.value.status == 409
    ud.move("workflows/a.json", "workflows/c.json")
    assert ud.list("workflows") == ["c.json"]
    ud.delete("workflows/c.json")
    with pytest.raises(UserDataError) as ex:
        ud.read("workflows/c.json")
    assert ex.value.status == 404
    entries = ud.list_v2("workflows")
    assert entries == [{"name": "sub", "path": "workflows/sub", "type": "directory"}]


@pytest.mark.parametrize("bad", ["../escape.json", "/etc/passwd", "workflows/../../x", "a\0b", "C:/x"])
def test_userdata_refuses_paths_outside_the_user_folder(tmp_path: Path, bad: str) -> None:
    ud = UserData(tmp_path / "user")
    with pytest.raises(UserDataError) as ex:
        ud.write(bad, b"x")
    assert ex.value.status == 400
    assert not (tmp_path / "escape.json").exists()


def test_userdata_refuses_symlinks_out(tmp_path: Path) -> None:
    ud = UserData(tmp_path / "user")
    ud.user_dir.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (ud.user_dir / "link").symlink_to(outside)
    with pytest.raises(UserDataError) as ex:
        ud.write("link/x.json", b"x")
    assert ex.value.status == 403
    assert not (outside / "x.json").exists()


def test_settings_merge_over_defaults(tmp_path: Path) -> None:
    ud = UserData(tmp_path / "user")
    assert ud.settings() == DEFAULT_SETTINGS
    ud.update_settings({"Comfy.Locale": "fr", "Comfy.TutorialCompleted": False})
    assert ud.settings()["Comfy.Locale"] == "fr"
    assert ud.settings()["Comfy.TutorialCompleted"] is False  # stored values win
    assert json.loads(ud.settings_path.read_text())["Comfy.Locale"] == "fr"


@pytest.mark.parametrize("prefix", ["", "/api", "/graph/api"])
def test_user_routes_over_http(make_client, prefix: str) -> None:
    c = make_client()
    assert c.get(f"{prefix}/users").json() == {"storage": "server", "migrated": True}
    assert c.post(f"{prefix}/users", json={"username": "x"}).status_code == 400
    settings = c.get(f"{prefix}/settings").json()
    assert settings["Comfy.TutorialCompleted"] is True
    assert settings["Comfy.Notification.ShowVersionUpdates"] is False
    assert c.post(f"{prefix}/settings", json={"Comfy.Locale": "de"}).status_code == 200
    assert c.post(f"{prefix}/settings/Comfy.ColorPalette", content=json.dumps("light")).status_code == 200
    assert c.get(f"{prefix}/settings/Comfy.Locale").json() == "de"
    assert c.get(f"{prefix}/settings/Comfy.ColorPalette").json() == "light"
    assert c.get(f"{prefix}/settings/Unset.Key").json() is None
    assert c.post(f"{prefix}/settings", content=b"[1, 2]").status_code == 400

    graph = {"last_node_id": 1, "nodes": [], "links": [], "version": 0.4}
    r = c.post(f"{prefix}/userdata/workflows%2Fmy%20flow.json?overwrite=false&full_info=true", json=graph)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "workflows/my flow.json"
    assert c.post(f"{prefix}/userdata/workflows%2Fmy%20flow.json?overwrite=false", json=graph).status_code == 409
    assert c.post(f"{prefix}/userdata/workflows%2Fmy%20flow.json?overwrite=true", json=graph).json() == \
        "workflows/my flow.json"
    assert c.get(f"{prefix}/userdata/workflows%2Fmy%20flow.json").json() == graph
    listed = c.get(f"{prefix}/userdata?dir=workflows&recurse=true&split=false&full_info=true").json()
    assert [f["path"] for f in listed] == ["my flow.json"]
    assert c.get(f"{prefix}/userdata?dir=nothing-here").status_code == 404
    assert c.get(f"{prefix}/userdata").status_code == 400
    assert c.get(f"{prefix}/v2/userdata?path=workflows").json()[0]["name"] == "my flow.json"
    moved = c.post(f"{prefix}/userdata/workflows%2Fmy%20flow.json/move/workflows%2Frenamed.json")
    assert moved.status_code == 200 and moved.json() == "workflows/renamed.json"
    assert c.get(f"{prefix}/userdata/workflows%2Fmy%20flow.json").status_code == 404
    assert c.delete(f"{prefix}/userdata/workflows%2Frenamed.json").status_code == 204
    assert c.delete(f"{prefix}/userdata/workflows%2Frenamed.json").status_code == 404
    assert c.post(f"{prefix}/userdata/..%2F..%2Fescape.json", content=b"x").status_code == 400


def test_userdata_is_stored_under_the_data_dir(make_client, tmp_path: Path) -> None:
    c = make_client(data_dir=tmp_path / "d")
    c.post("/api/userdata/workflows%2Fa.json", content=b"{}")
    assert (tmp_path / "d" / "user" / "default" / "workflows" / "a.json").read_bytes() == b"{}"
    # a restarted server finds it again
    c2 = make_client(data_dir=tmp_path / "d")
    assert c2.get("/api/userdata?dir=workflows").json() == ["a.json"]
