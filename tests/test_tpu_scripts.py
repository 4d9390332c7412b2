"""tpu_scripts/*.sh --dry-run print the gcloud commands they would run and reject bad arguments."""

import pathlib
import shlex
import subprocess
import time

import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "tpu_scripts"
BASE = ["--name", "isheep-7b", "--zone", "us-east5-a"]


def _run(script, *args):
    return subprocess.run(["bash", str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=30)


def _command(proc):
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    return shlex.split(lines[0])


def test_create_direct_and_queued():
    cmd = _command(_run("create.sh", *BASE, "--type", "v5p-8", "--dry-run"))
    assert cmd == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "create",
        "isheep-7b",
        "--zone=us-east5-a",
        "--accelerator-type=v5p-8",
        "--version=v2-alpha-tpuv5",
    ]
    cmd = _command(
        _run("create.sh", *BASE, "--type", "v5e-64", "--queued", "--spot", "--project", "p1", "--dry-run")
    )
    assert cmd[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
    assert {
        "--node-id=isheep-7b",
        "--accelerator-type=v5litepod-64",
        "--runtime-version=v2-alpha-tpuv5-lite",
        "--spot",
        "--project=p1",
    } <= set(cmd)


def test_install_launch_logs_stop_delete():
    cmd = _command(_run("install.sh", *BASE, "--source", "git+https://example.org/isheep_jax", "--dry-run"))
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "isheep-7b"] and "--worker=all" in cmd
    assert "&& pip install git+https://example.org/isheep_jax" in cmd[-1] and "jax[tpu]" in cmd[-1]
    cmd = _command(
        _run(
            "launch.sh",
            *BASE,
            "--type",
            "v5p-8",
            "--gin_file",
            "runs/isheep_paper.gin",
            "--run_dir",
            "gs://bucket/runs/q7",
            "--gin.LoopConfig.iterations=3",
            "--dry-run",
        )
    )
    remote = cmd[-1]
    assert "--worker=all" in cmd and remote.startswith("--command=printf '%s\\n' ")
    assert " >> ~/isheep.log && nohup isheep run --gin_file runs/isheep_paper.gin" in remote
    assert (
        "--run_dir gs://bucket/runs/q7 --gin.LoopConfig.iterations=3" in remote and "~/isheep.log" in remote
    )
    # A multi-host slice: every worker joins one jax.distributed run.
    cmd = _command(
        _run(
            "launch.sh",
            *BASE,
            "--type",
            "v5e-64",
            "--gin_file",
            "runs/isheep_paper.gin",
            "--run_dir",
            "gs://bucket/runs/q7",
            "--dry-run",
        )
    )
    assert " && ISHEEP_COORDINATOR=auto nohup isheep run" in cmd[-1] and "--worker=all" in cmd
    cmd = _command(_run("logs.sh", *BASE, "--worker", "3", "--dry-run"))
    assert "--worker=3" in cmd and cmd[-1] == "--command=tail -n 200 -f ~/isheep.log"
    assert "pkill -f 'isheep run'" in _command(_run("stop.sh", *BASE, "--dry-run"))[-1]
    assert _command(_run("delete.sh", *BASE, "--queued", "--dry-run"))[:5] == [
        "gcloud",
        "compute",
        "tpus",
        "queued-resources",
        "delete",
    ]


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("create.sh", ["--zone", "us-east5-a", "--type", "v5p-8"], "--name is required"),
        ("create.sh", ["--name", "Bad_Name", "--zone", "us-east5-a", "--type", "v5p-8"], "lowercase letters"),
        ("create.sh", [*BASE, "--type", "v3-8"], "expected v4-N, v5e-N, v5p-N or v6e-N"),
        ("create.sh", ["--name", "a", "--zone", "east", "--type", "v5p-8"], "not a zone name"),
        ("create.sh", [*BASE, "--type", "v5p-8", "--bogus"], "unknown argument '--bogus'"),
        ("install.sh", BASE, "--source is required"),
        ("launch.sh", [*BASE, "--type", "v5p-8", "--run_dir", "gs://b/r"], "--gin_file is required"),
        (
            "launch.sh",
            [*BASE, "--type", "v5p-128", "--gin_file", "g", "--run_dir", "runs/x"],
            "v5p-128 has 16 hosts: --run_dir must be a gs:// path",
        ),
        ("logs.sh", [*BASE, "--worker", "x"], "must be a worker number"),
        ("stop.sh", ["--zone", "us-east5-a", "--name"], "--name needs a value"),
    ],
)
def test_bad_arguments_are_rejected(script, args, message):
    proc = _run(script, "--dry-run", *args)
    assert proc.returncode == 2 and message in proc.stderr and not proc.stdout


# ------------------------------------------------------------------ what reaches the workers
HOSTILE = [
    "y'; touch pwned; echo '",
    'a "b" $(touch pwned) `touch pwned`',
    "two words; touch pwned",
    "line one\nline two && touch pwned",
    "$HOME\\ & | > pwned",
]


@pytest.fixture
def workers(tmp_path):
    """A fake `gcloud` on PATH that runs each ssh --command with bash, as a worker's login shell
    would, in a fake home; the programs it calls (pip, python3, gsutil, isheep) record their
    arguments instead of running."""
    bin_dir, home, rec = tmp_path / "bin", tmp_path / "home", tmp_path / "rec"
    for d in (bin_dir, home, rec):
        d.mkdir()
    (bin_dir / "gcloud").write_text(
        "#!/usr/bin/env bash\n"
        'for a in "$@"; do case "$a" in --command=*) cmd="${a#--command=}";; esac; done\n'
        'cd "$HOME" && bash -c "$cmd"\n'
    )
    for name in ("pip", "python3", "gsutil", "isheep"):
        (bin_dir / name).write_text(
            f'#!/usr/bin/env bash\nprintf \'%s\\0\' "$@" > "$REC/{name}.$(date +%s%N)"\n'
        )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "REC": str(rec)}

    def run(script, *args):
        proc = subprocess.run(["bash", str(SCRIPTS / script), *args], capture_output=True, text=True,
                              timeout=30, env=env, cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc

    def calls(name, wait=5.0):
        deadline = time.monotonic() + wait  # launch.sh starts isheep in the background
        while not list(rec.glob(f"{name}.*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)
        return [f.read_bytes().decode().split("\0")[:-1] for f in sorted(rec.glob(f"{name}.*"))]

    yield run, calls, home
    assert not list(tmp_path.rglob("pwned")), "a hostile argument ran as code"


@pytest.mark.parametrize("hostile", HOSTILE)
def test_install_passes_any_source_to_pip_as_one_argument(workers, hostile):
    run, calls, _ = workers
    run("install.sh", *BASE, "--source", hostile)
    assert calls("pip")[-1] == ["install", hostile]
    run("install.sh", *BASE, "--source", "gs://bucket/dist/" + hostile.replace("\n", " ") + ".whl")
    (gsutil,) = calls("gsutil")
    assert gsutil[:2] == ["cp", "gs://bucket/dist/" + hostile.replace("\n", " ") + ".whl"]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_launch_passes_repeated_gin_files_and_bindings_intact_and_appends_the_log(workers, hostile):
    run, calls, home = workers
    args = [*BASE, "--type", "v5p-8", "--gin_file", "runs/isheep_paper.gin", "--gin_file", hostile,
            "--run_dir", "gs://b/" + hostile, f"--gin.LoopConfig.base_model='{hostile}'"]  # fmt: skip
    run("launch.sh", *args)
    want = [
        "run",
        "--gin_file",
        "runs/isheep_paper.gin",
        "--gin_file",
        hostile,
        "--run_dir",
        "gs://b/" + hostile,
    ]
    assert calls("isheep") == [[*want, f"--gin.LoopConfig.base_model='{hostile}'"]]
    (home / "isheep.log").write_text((home / "isheep.log").read_text() + "output of the first run\n")
    run("launch.sh", *args)  # a relaunch (resume) keeps the first run's log
    log = (home / "isheep.log").read_text()
    assert "output of the first run\n" in log
    headers = [line for line in log.splitlines() if line.startswith("=== isheep launch ")]
    assert len(headers) == 2 and all(" on v5p-8: --gin_file runs/isheep_paper.gin" in h for h in headers)
