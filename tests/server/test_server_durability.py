"""The queue and history survive restarts: history after a restart, a job running when the process died is
marked failed with a reason, pending jobs run after restart — in-process and with a real killed process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from conftest import free_port, txt2img_workflow
from darkroom.server.store import CRASH_REASON, Job, JobStore


def test_history_survives_a_restart(make_server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = make_server(data)
    pid = first.post("/prompt", json={"prompt": txt2img_workflow(seed=5), "client_id": "c1"}).json()["prompt_id"]
    first.wait_idle()
    before = first.get(f"/history/{pid}").json()
    first.stop()
    second = make_server(data)
    after = second.get(f"/history/{pid}").json()
    assert after == before and after[pid]["status"]["status_str"] == "success"
    ref = after[pid]["outputs"]["9"]["images"][0]
    assert second.get("/view", params={"filename": ref["filename"]}).status_code == 200
    nxt = second.post("/prompt", json={"prompt": txt2img_workflow(seed=6)}).json()
    assert nxt["number"] == after[pid]["prompt"][0] + 1  # numbering goes on


def test_crashed_running_job_is_failed_and_pending_jobs_run(make_server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = JobStore(data / "darkroom.sqlite3")  # what a process that died mid-job leaves behind
    store.insert(Job(prompt_id="was-running", number=1, prompt=txt2img_workflow(seed=1), outputs_to_execute=["9"]))
    store.insert(Job(prompt_id="was-pending", number=2, prompt=txt2img_workflow(seed=2), outputs_to_execute=["9"],
                     extra_data={"client_id": "c", "api_key_comfy_org": "secret"}))
    assert store.mark_running("was-running")
    store.close()
    server = make_server(data)
    assert server.state.recovered == ["was-running"]
    server.wait_idle()
    hist = server.get("/history").json()
    assert list(hist) == ["was-running", "was-pending"]
    failed = hist["was-running"]["status"]
    assert failed["status_str"] == "error" and failed["completed"] is False
    assert failed["messages"][-1][0] == "execution_error"
    assert failed["messages"][-1][1]["exception_message"] == CRASH_REASON
    ok = hist["was-pending"]
    assert ok["status"]["status_str"] == "success" and ok["outputs"]["9"]["images"]
    assert ok["prompt"][3] == {"client_id": "c"}  # credentials are never stored


def _serve_cmd(models_root: Path, data: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "darkroom.cli", "serve", "--port", str(port), "--models-dir", str(models_root),
            "--data-dir", str(data), "--device", "cpu", "--dtype", "fp32", "--preview-method", "none"]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            if requests.get(url + "/prompt", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise TimeoutError("server did not come up")


def test_killed_process_then_restart_accounts_for_all_jobs(models, tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_serve_cmd(models.root, data, port), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        _wait_ready(url, proc)
        ids = [requests.post(url + "/prompt", json={"prompt": txt2img_workflow(seed=i, steps=120)}, timeout=30)
               .json()["prompt_id"] for i in range(5)]
        deadline = time.time() + 60
        while not requests.get(url + "/queue", timeout=5).json()["queue_running"]:
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        running = requests.get(url + "/queue", timeout=5).json()["queue_running"][0][1]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc = subprocess.Popen(_serve_cmd(models.root, data, port), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        _wait_ready(url, proc)
        deadline = time.time() + 120
        while requests.get(url + "/prompt", timeout=5).json()["exec_info"]["queue_remaining"]:
            assert time.time() < deadline, "the pending jobs did not run after the restart"
            time.sleep(0.1)
        hist = requests.get(url + "/history", timeout=5).json()
    finally:
        proc.terminate()
        proc.wait(30)
    assert sorted(hist) == sorted(ids)  # all five accounted for
    statuses = {pid: entry["status"]["status_str"] for pid, entry in hist.items()}
    failed = [pid for pid in ids if statuses[pid] == "error"]
    assert len(failed) == 1  # the job that was running when the process died (normally `running`)
    assert failed[0] == running or ids.index(failed[0]) == ids.index(running) + 1
    assert hist[failed[0]]["status"]["messages"][-1][1]["exception_message"] == CRASH_REASON
    assert all(hist[pid]["outputs"]["9"]["images"] for pid in ids if pid != failed[0])
