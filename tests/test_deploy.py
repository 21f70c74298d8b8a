"""Static checks of deploy/: Dockerfiles, Compose, Kubernetes manifests, Helm values.

Nothing here builds an image or talks to a cluster: the files are parsed and the
commands they start are compared with the CLIs the rest of the test suite runs
(`dask scheduler`, `dask worker`, `tilepipe`). Needs only pyyaml and pytest;
`hadolint` and `sh` checks are skipped where those tools are missing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.gpu"]
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})

# The only programs a deployment starts: the same CLIs the integration tests run.
ALLOWED_PREFIXES = (("dask", "scheduler"), ("dask", "worker"), ("tilepipe",))
SCHEDULER_PORT = "8786"
DASHBOARD_PORT = "8787"


# --------------------------------------------------------------------------- helpers


def _load_all(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return list(yaml.safe_load_all(fh))


def _argv(command: str | list[Any] | None) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


def _starts_with_allowed(argv: list[str]) -> bool:
    return any(tuple(argv[: len(prefix)]) == prefix for prefix in ALLOWED_PREFIXES)


def _option_value(argv: list[str], option: str) -> str | None:
    """Value of ``--option VALUE`` or ``--option=VALUE`` in ``argv``."""
    for i, token in enumerate(argv):
        if token == option and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(option + "="):
            return token.split("=", 1)[1]
    return None


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return instructions


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    docs = _load_all(DEPLOY / "compose.yaml")
    assert len(docs) == 1
    return docs[0]


@pytest.fixture(scope="module")
def k8s_objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _load_all(path):
            if doc is not None:
                objects.append(doc)
    return objects


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod template's spec of a Deployment or Job, or of a CronJob's job template."""
    spec = obj.get("spec", {})
    if obj.get("kind") == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return dict(spec.get("template", {}).get("spec", {}) or {})


def _containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = _pod_spec(obj)
    yield from spec.get("initContainers", []) or []
    yield from spec.get("containers", []) or []


def _container_argv(container: dict[str, Any]) -> list[str]:
    # The images' ENTRYPOINT passes `dask ...` / `tilepipe ...` through, so a
    # manifest may give the program in `command` or (keeping tini) in `args`.
    return _argv(container.get("command")) + _argv(container.get("args"))


def _by_kind_name(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj.get("kind") == kind and obj.get("metadata", {}).get("name") == name:
            return obj
    raise AssertionError(f"no {kind} named {name!r} in deploy/kubernetes")


# --------------------------------------------------------------------------- every YAML file


def test_deploy_has_yaml_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in YAML_FILES}
    assert {"compose.yaml", "helm/values-dask.yaml", "kubernetes/kustomization.yaml"} <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yaml_parses(path: Path) -> None:
    docs = _load_all(path)
    assert docs, f"{path}: no YAML documents"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: every document should be a mapping, got {type(doc).__name__}"


# --------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_basics(path: Path) -> None:
    instructions = _dockerfile_instructions(path)
    keywords = [kw for kw, _ in instructions]
    assert "FROM" in keywords, f"{path.name}: no FROM"
    assert all(kw == "ARG" for kw in keywords[: keywords.index("FROM")]), "only ARG may precede FROM"
    base = dict(instructions)["FROM"]
    assert re.match(r"(python:3\.11|nvidia/cuda:12\.)", base), f"{path.name}: unexpected base image {base}"

    runs = [args for kw, args in instructions if kw == "RUN"]
    # The README's install: `pip install .` from the repo root (WORKDIR of the COPY).
    assert any(re.search(r"\bpip install (?:\S+ )*\.(?:\s|$)", run) for run in runs), f"{path.name}: no `pip install .`"
    assert ("COPY", ". .") in instructions, f"{path.name}: the repository is not copied in"

    users = [args for kw, args in instructions if kw == "USER"]
    assert users, f"{path.name}: runs as root"
    assert users[-1].split(":")[0] not in {"root", "0"}, f"{path.name}: final USER is root"

    entrypoint = dict(instructions).get("ENTRYPOINT", "")
    assert "tilepipe" in entrypoint, f"{path.name}: ENTRYPOINT should start tilepipe"
    assert any(kw == "COPY" and "deploy/docker-entrypoint.sh" in args for kw, args in instructions), (
        f"{path.name}: entrypoint script not copied"
    )


def test_gpu_dockerfile_installs_cuda_tensorflow() -> None:
    text = (DEPLOY / "Dockerfile.gpu").read_text(encoding="utf-8")
    assert "tensorflow[and-cuda]" in text
    # The device plugin / runtime decides the visible GPUs, never the image.
    assert not re.search(r"^\s*(ENV\s+)?NVIDIA_VISIBLE_DEVICES", text, re.MULTILINE)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerignore_keeps_the_package(path: Path) -> None:
    ignore = path.with_name(path.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name} missing (BuildKit reads <Dockerfile>.dockerignore)"
    patterns = {
        line.strip()
        for line in ignore.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    needed = {"pyproject.toml", "README.md", "tilepipe", "tilepipe/", "deploy", "deploy/", "*", "**"}
    assert not patterns & needed, f"{ignore.name} drops files `pip install .` needs: {patterns & needed}"


def test_pyproject_provides_the_entrypoint_command() -> None:
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("no pyproject.toml yet")
    scripts = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {}).get("scripts", {})
    assert "tilepipe" in scripts, "the images' entrypoint runs `tilepipe`, which pyproject must install"


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed")
def test_hadolint() -> None:
    result = subprocess.run(
        ["hadolint", *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- entrypoint script


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX sh")
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ([], "tilepipe --help"),
        (["run", "/data/wf.yaml", "--gpu"], "tilepipe run /data/wf.yaml --gpu"),
        (["tilepipe", "run", "wf.yaml"], "tilepipe run wf.yaml"),
        (["dask", "scheduler", "--port", "8786"], "dask scheduler --port 8786"),
        (["dask-scheduler", "--port=8786"], "dask scheduler --port=8786"),
        (["dask-worker", "s:8786", "--nthreads", "1"], "dask worker s:8786 --nthreads 1"),
        (["--version"], "tilepipe --version"),
    ],
)
def test_entrypoint_dispatch(tmp_path: Path, given: list[str], expected: str) -> None:
    script = DEPLOY / "docker-entrypoint.sh"
    assert script.stat().st_mode & stat.S_IXUSR, "docker-entrypoint.sh should be executable"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("tilepipe", "dask"):
        fake = bindir / name
        fake.write_text(f'#!/bin/sh\necho {name} "$@"\n', encoding="utf-8")
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        ["sh", str(script), *given], capture_output=True, text=True, env=env, timeout=10, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


# --------------------------------------------------------------------------- compose


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"scheduler", "worker-cpu", "worker-gpu", "submit"} <= set(services)
    for name, service in services.items():
        argv = _argv(service.get("command"))
        assert _starts_with_allowed(argv), f"compose service {name} starts {argv[:2]}"


def test_compose_scheduler(compose: dict[str, Any]) -> None:
    scheduler = compose["services"]["scheduler"]
    argv = _argv(scheduler["command"])
    assert argv[:2] == ["dask", "scheduler"]
    assert _option_value(argv, "--port") == SCHEDULER_PORT
    assert _option_value(argv, "--dashboard-address") == f":{DASHBOARD_PORT}"
    # Published on the host's loopback only: the scheduler runs whatever its clients send.
    assert [str(p) for p in scheduler.get("ports", [])] == [
        f"127.0.0.1:{SCHEDULER_PORT}:{SCHEDULER_PORT}",
        f"127.0.0.1:{DASHBOARD_PORT}:{DASHBOARD_PORT}",
    ]
    assert "healthcheck" in scheduler


def test_compose_publishes_nothing_beyond_loopback(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):  # long syntax: {target, published, host_ip, ...}
                assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} on every interface"
            else:  # short syntax: [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port!r} on every interface"


def test_compose_workers_reach_scheduler(compose: dict[str, Any]) -> None:
    for name in ("worker-cpu", "worker-gpu"):
        argv = _argv(compose["services"][name]["command"])
        assert argv[:2] == ["dask", "worker"], name
        assert argv[2] == f"tcp://scheduler:{SCHEDULER_PORT}", name
        assert compose["services"][name]["depends_on"]["scheduler"]["condition"] == "service_healthy"


def test_compose_gpu_worker(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["worker-gpu"]
    argv = _argv(gpu["command"])
    assert "--resources GPU=1" in " ".join(argv)
    assert _option_value(argv, "--nthreads") == "1"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia"
        and "gpu" in d.get("capabilities", [])
        and (d.get("count") == 1 or d.get("device_ids"))
        for d in devices
    )
    assert "--resources" not in _argv(compose["services"]["worker-cpu"]["command"])


def test_compose_submit(compose: dict[str, Any]) -> None:
    submit = compose["services"]["submit"]
    assert "submit" in submit.get("profiles", [])
    argv = _argv(submit["command"])
    assert argv[:3] == ["tilepipe", "run", "/data/workflow.yaml"]
    assert _option_value(argv, "--scheduler") == f"tcp://scheduler:{SCHEDULER_PORT}"
    assert "--gpu" in argv


def test_compose_shared_data_volume(compose: dict[str, Any]) -> None:
    sources = {}
    for name in ("worker-cpu", "worker-gpu", "submit"):
        mounts = [str(v) for v in compose["services"][name].get("volumes", [])]
        data = [m for m in mounts if m.split(":")[1:2] == ["/data"]]
        assert data, f"{name} does not mount /data"
        sources[name] = data[0].split(":")[0]
    assert len(set(sources.values())) == 1, f"workers and client mount different /data: {sources}"
    source = next(iter(sources.values()))
    if not source.startswith(("/", ".", "$")):
        assert source in (compose.get("volumes") or {}), f"named volume {source!r} not declared"


def test_compose_builds_from_repo_root(compose: dict[str, Any]) -> None:
    built = {}
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is None:
            continue
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT, f"{name}: build context should be the repo root"
        assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} missing"
        built[service["image"]] = build["dockerfile"]
    assert built == {"tilepipe:cpu": "deploy/Dockerfile", "tilepipe:gpu": "deploy/Dockerfile.gpu"}
    for name, service in compose["services"].items():
        assert service["image"] in built, f"{name} uses an image compose does not build"


# --------------------------------------------------------------------------- kubernetes


def test_kustomization_lists_the_standing_cluster() -> None:
    (kustomization,) = _load_all(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    # The submit Job is a one-shot run, and the watch CronJob a schedule of them: each is
    # applied on its own once the data (and the scene workflow) is in place.
    assert listed == present - {"job-submit.yaml", "cronjob-watch.yaml"}


def test_k8s_containers_start_known_clis(k8s_objects: list[dict[str, Any]]) -> None:
    containers = [(o["metadata"]["name"], c) for o in k8s_objects for c in _containers(o)]
    assert containers
    for owner, container in containers:
        argv = _container_argv(container)
        assert _starts_with_allowed(argv), f"{owner}/{container['name']} starts {argv[:2]}"
        assert str(container["image"]).startswith("tilepipe:"), f"{owner}: image {container['image']}"


def test_k8s_scheduler(k8s_objects: list[dict[str, Any]]) -> None:
    deployment = _by_kind_name(k8s_objects, "Deployment", "tilepipe-scheduler")
    assert deployment["spec"]["replicas"] == 1
    (container,) = list(_containers(deployment))
    argv = _container_argv(container)
    assert argv[:2] == ["dask", "scheduler"]
    assert _option_value(argv, "--port") == SCHEDULER_PORT
    assert container.get("readinessProbe"), "scheduler needs a readiness probe"

    service = _by_kind_name(k8s_objects, "Service", "tilepipe-scheduler")
    assert {p["port"] for p in service["spec"]["ports"]} == {int(SCHEDULER_PORT), int(DASHBOARD_PORT)}
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def _worker_deployments(objects: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], list[str]]]:
    workers = {}
    for obj in objects:
        if obj.get("kind") != "Deployment":
            continue
        for container in _containers(obj):
            argv = _container_argv(container)
            if argv[:2] == ["dask", "worker"]:
                workers[obj["metadata"]["name"]] = (container, argv)
    return workers


def test_k8s_workers(k8s_objects: list[dict[str, Any]]) -> None:
    workers = _worker_deployments(k8s_objects)
    gpu = {n: w for n, w in workers.items() if "nvidia.com/gpu" in w[0].get("resources", {}).get("limits", {})}
    cpu = {n: w for n, w in workers.items() if n not in gpu}
    assert gpu, "no worker Deployment requests nvidia.com/gpu"
    assert cpu, "no CPU worker Deployment"
    for name, (_container, argv) in workers.items():
        assert argv[2] == f"tcp://tilepipe-scheduler:{SCHEDULER_PORT}", name
    for name, (container, argv) in gpu.items():
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1, name
        assert "--resources GPU=1" in " ".join(argv), name
        assert _option_value(argv, "--nthreads") == "1", name
    for name, (_, argv) in cpu.items():
        assert "GPU=1" not in argv, f"{name} advertises a GPU it does not have"


def test_k8s_shared_claim(k8s_objects: list[dict[str, Any]]) -> None:
    claims = {o["metadata"]["name"]: o for o in k8s_objects if o["kind"] == "PersistentVolumeClaim"}
    assert claims
    for claim in claims.values():
        assert "ReadWriteMany" in claim["spec"]["accessModes"]
    users = 0
    for obj in k8s_objects:
        for volume in _pod_spec(obj).get("volumes", []) or []:
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
                users += 1
    assert users >= 4, "both worker pools, the submit Job and the watch CronJob should mount the shared claim"


def test_k8s_submit_job(k8s_objects: list[dict[str, Any]]) -> None:
    jobs = [o for o in k8s_objects if o["kind"] == "Job"]
    assert len(jobs) == 1
    (container,) = list(_containers(jobs[0]))
    argv = _container_argv(container)
    assert argv[:2] == ["tilepipe", "run"]
    assert _option_value(argv, "--scheduler") == f"tcp://tilepipe-scheduler:{SCHEDULER_PORT}"
    assert jobs[0]["spec"]["template"]["spec"]["restartPolicy"] in {"Never", "OnFailure"}


def test_k8s_watch_cronjob(k8s_objects: list[dict[str, Any]]) -> None:
    cronjob = _by_kind_name(k8s_objects, "CronJob", "tilepipe-watch")
    spec = cronjob["spec"]
    assert len(spec["schedule"].split()) == 5
    # One watcher pod at a time: the ledger on the shared claim never has two writers.
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["jobTemplate"]["spec"]["backoffLimit"] == 0  # the ledger retries scenes, not the Job
    pod = _pod_spec(cronjob)
    assert pod["restartPolicy"] in {"Never", "OnFailure"}
    assert pod.get("terminationGracePeriodSeconds", 30) >= 60, "SIGTERM lets running scenes finish"
    (container,) = list(_containers(cronjob))
    argv = _container_argv(container)
    assert argv[:3] == ["tilepipe", "watch", "/data/inbox"]
    assert "--once" in argv
    assert _option_value(argv, "--workflow") == "/data/watch.yaml"
    assert _option_value(argv, "--scheduler") == f"tcp://tilepipe-scheduler:{SCHEDULER_PORT}"
    assert any(m["mountPath"] == "/data" for m in container["volumeMounts"])


SYSTEMD = DEPLOY / "systemd"


def _unit(path: Path) -> dict[str, dict[str, str]]:
    """A systemd unit file as {section: {key: value}} (the last value of a repeated key)."""
    sections: dict[str, dict[str, str]] = {}
    current = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{path.name}: not a unit file line: {raw!r}"
        key, _, value = line.partition("=")
        current[key.strip()] = value.strip()
    return sections


def _watch_argv(exec_start: str) -> list[str]:
    """The `tilepipe watch ...` part of an ExecStart (run directly or through `docker compose run`)."""
    argv = shlex.split(exec_start)
    assert "tilepipe" in argv, exec_start
    return argv[argv.index("tilepipe"):]


def test_systemd_timer_runs_one_pass_against_the_compose_cluster() -> None:
    service, timer = _unit(SYSTEMD / "tilepipe-watch.service"), _unit(SYSTEMD / "tilepipe-watch.timer")
    assert service["Service"]["Type"] == "oneshot"  # a timer never starts a oneshot that still runs
    argv = _watch_argv(service["Service"]["ExecStart"])
    assert argv[:3] == ["tilepipe", "watch", "/data/inbox"] and "--once" in argv
    assert _option_value(argv, "--workflow") == "/data/watch.yaml"
    assert _option_value(argv, "--scheduler") == f"tcp://scheduler:{SCHEDULER_PORT}"
    launcher = shlex.split(service["Service"]["ExecStart"])
    assert launcher[0].endswith("docker") and launcher[1:4] == ["compose", "-f", "deploy/compose.yaml"]
    assert "submit" in launcher[: launcher.index("tilepipe")]  # the compose client service: /data as workers see it
    assert int(service["Service"]["TimeoutStopSec"]) >= 60
    assert timer["Timer"]["Unit"] == "tilepipe-watch.service"
    assert {"OnUnitInactiveSec", "OnCalendar", "OnUnitActiveSec"} & set(timer["Timer"])
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_systemd_long_running_service() -> None:
    service = _unit(SYSTEMD / "tilepipe-watch-service.service")
    argv = _watch_argv(service["Service"]["ExecStart"])
    assert argv[:2] == ["tilepipe", "watch"] and "--once" not in argv
    assert _option_value(argv, "--interval") is not None
    assert service["Service"].get("KillSignal", "SIGTERM") in {"SIGTERM", "SIGINT"}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_units_verify(tmp_path: Path) -> None:
    for path in SYSTEMD.iterdir():
        shutil.copy(path, tmp_path / path.name)
    result = subprocess.run(["systemd-analyze", "verify", *map(str, sorted(tmp_path.iterdir()))],
                            capture_output=True, text=True, timeout=60, check=False)
    # Missing binaries and users of this machine are not the files' faults; syntax errors are.
    bad = [line for line in result.stderr.splitlines() if "Unknown" in line or "Failed to parse" in line]
    assert not bad, result.stderr


# --------------------------------------------------------------------------- helm


def test_helm_values() -> None:
    (values,) = _load_all(DEPLOY / "helm" / "values-dask.yaml")
    assert values["scheduler"]["image"]["repository"] == "tilepipe"
    assert values["scheduler"]["servicePort"] == int(SCHEDULER_PORT)
    # The submit Job reaches the chart's scheduler Service by this name.
    assert f"{values['fullnameOverride']}-scheduler" == "tilepipe-scheduler"
    assert isinstance(values["worker"]["extraArgs"], list)
    assert values["jupyter"]["enabled"] is False

    (gpu,) = [g for g in values["additional_worker_groups"] if g["name"] == "gpu"]
    assert f"{gpu['image']['repository']}:{gpu['image']['tag']}" == "tilepipe:gpu"
    assert " ".join(gpu["extraArgs"]) == "--resources GPU=1"
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["threads_per_worker"] == 1
    # Groups are merged over `worker`, so GPU settings must not sit on `worker`.
    assert "nvidia.com/gpu" not in values["worker"]["resources"].get("limits", {})
    assert "GPU=1" not in values["worker"]["extraArgs"]


# --------------------------------------------------------------------------- CLI contracts


def test_dask_cli_options_exist() -> None:
    worker_cli = pytest.importorskip("distributed.cli.dask_worker").main
    scheduler_cli = pytest.importorskip("distributed.cli.dask_scheduler").main
    known = {
        "worker": {o for p in worker_cli.params for o in p.opts},
        "scheduler": {o for p in scheduler_cli.params for o in p.opts},
    }
    commands = [_argv(s.get("command")) for s in _load_all(DEPLOY / "compose.yaml")[0]["services"].values()]
    for path in K8S.glob("*.yaml"):
        for obj in _load_all(path):
            commands += [_container_argv(c) for c in _containers(obj)]
    checked = 0
    for argv in commands:
        if argv[:1] != ["dask"]:
            continue
        for token in argv[2:]:
            if token.startswith("--"):
                assert token.split("=")[0] in known[argv[1]], f"`dask {argv[1]}` has no option {token}"
                checked += 1
    assert checked


def test_tilepipe_watch_options_exist() -> None:
    """The CronJob and the systemd units call `tilepipe watch` with these options: they must exist."""
    from tilepipe.cli.watch import command

    options = {o for p in command.params for o in p.opts}
    used = set()
    commands = [_watch_argv(_unit(p)["Service"]["ExecStart"]) for p in SYSTEMD.glob("*.service")]
    for obj in _load_all(K8S / "cronjob-watch.yaml"):
        commands += [_container_argv(c) for c in _containers(obj)]
    for argv in commands:
        used |= {token.split("=")[0] for token in argv if token.startswith("--")}
    assert used and used <= options, used - options


def test_tilepipe_run_options_exist() -> None:
    """The deploy files call `tilepipe run ... --scheduler ... --gpu`: those options must exist."""
    from tilepipe.cli.run import command

    options = {o for p in command.params for o in p.opts}
    assert {"--scheduler", "--gpu"} <= options


# --------------------------------------------------------------------------- docs


def test_readme_covers_operations() -> None:
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for needle in (
        "docker build -f deploy/Dockerfile -t tilepipe:cpu .",
        "docker build -f deploy/Dockerfile.gpu -t tilepipe:gpu .",
        "DASK_SCHEDULER_ADDRESS",
        "--resources GPU=1",
        "s3://",
        "kubectl apply -k deploy/kubernetes",
    ):
        assert needle in text, f"deploy/README.md does not mention {needle!r}"
